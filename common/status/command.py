"""``tickvault status``: one look, or ``--watch`` until Ctrl-C; a rich view or ``--json``.
Exit status 0 healthy, 1 something needs attention (an unreachable server too)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.live import Live

from ..config import Settings, load_settings
from ..redis_url import RedisClient, redis_options, stream_client
from .gather import gather
from .problems import find_problems
from .snapshot import Problem, Snapshot, Thresholds
from .view import render, to_document


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tickvault status",
        description="health of streams, groups, feeds, symbols, dead letters and gaps; "
        "exit status 0 healthy, 1 something needs attention (an unreachable server too)",
    )
    parser.add_argument("--config", help="TOML config file (default: $TICKVAULT_CONFIG)")
    parser.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    parser.add_argument(
        "--every", type=float, default=2.0, metavar="S", help="--watch: seconds between samples (2)"
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON document (with --watch: one a line)"
    )
    parser.add_argument(
        "--silent-s", type=float, default=60.0, metavar="S", help="a feed silent this long (60)"
    )
    parser.add_argument(
        "--lag-s", type=float, default=30.0, metavar="S", help="a group this far behind (30)"
    )
    parser.add_argument(
        "--idle-s",
        type=float,
        default=60.0,
        metavar="S",
        help="a consumer idle this long, holding pending entries (60)",
    )
    args = parser.parse_args(argv)
    if args.every <= 0 or min(args.silent_s, args.lag_s, args.idle_s) <= 0:
        parser.error("--every and the thresholds must be positive")
    limits = Thresholds(silent_s=args.silent_s, lag_s=args.lag_s, idle_s=args.idle_s)
    settings = load_settings(args.config)
    redis_options(settings.redis.url)  # a URL that is wrong: ConfigError, status 2
    clients: list[RedisClient] = []

    def connect() -> RedisClient:
        if not clients:
            url = settings.redis.url
            clients.append(stream_client(url, socket_timeout=5, socket_connect_timeout=3))
        return clients[0]

    try:
        if args.watch:
            return _watch(settings, connect, limits, args.every, as_json=args.json)
        snap = gather(settings, connect)
        problems = find_problems(snap, None, limits)
        _print(snap, problems, as_json=args.json)
        return 1 if problems else 0
    finally:
        for client in clients:
            client.close()


def _print(snap: Snapshot, problems: Sequence[Problem], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(to_document(snap, problems)), flush=True)
        return
    Console().print(render(snap, problems))


def _watch(
    settings: Settings,
    connect: Callable[[], RedisClient],
    limits: Thresholds,
    every_s: float,
    *,
    as_json: bool,
) -> int:
    """Sample every ``every_s`` until Ctrl-C; the exit status is the last sample's."""
    previous: Snapshot | None = None
    status = 0
    try:
        if as_json:
            while True:
                snap = gather(settings, connect)
                problems = find_problems(snap, previous, limits)
                _print(snap, problems, as_json=True)
                previous, status = snap, 1 if problems else 0
                time.sleep(every_s)
        with Live(console=Console(), auto_refresh=False) as live:
            while True:
                snap = gather(settings, connect)
                problems = find_problems(snap, previous, limits)
                live.update(render(snap, problems), refresh=True)
                previous, status = snap, 1 if problems else 0
                time.sleep(every_s)
    except KeyboardInterrupt:
        return status
