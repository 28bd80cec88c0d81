"""``tickvault run`` itself: lock the directory, start the servers and the children, watch,
and stop in order (see the package's invariants)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ..config import hide_password, load_settings
from ..demo import Stop
from ..logs import setup_logging
from .children import Child, describe_exit
from .directory import lock_dir, stop_leftovers
from .keeper import Keeper, ServersDown
from .plan import Plan, children_config, config_source, dump_toml, plan, write_private
from .view import Watcher, status_line, status_view

logger = logging.getLogger("tickvault.run")

DRAIN_S = 30.0  # how long the consumer may take to empty the group at a stop
TICK_S = 0.2
TABLE_EVERY_S = 2.0  # as tickvault status --watch: a sample counts the last hour's trades
LINE_EVERY_S = 10.0
_ENV_DROPPED = ("TICKVAULT_CONFIG", "TICKVAULT_REDIS_URL", "TICKVAULT_DATABASE_URL")


def _check_given(redis_url: str | None, database_url: str | None) -> None:
    """Servers given by URL must answer now: their errors propagate (cli: status 4 / 3)."""
    if redis_url:
        from ..redis_url import redis_client

        client = redis_client(redis_url, socket_connect_timeout=5, socket_timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    if database_url:
        import psycopg

        psycopg.connect(database_url, connect_timeout=5).close()


class RunState:
    """``<dir>/run.json``: the URLs, the processes (pid, command line, how to stop one left
    behind), the children's restarts; rewritten at each change."""

    def __init__(self, path: Path, base: dict[str, Any]) -> None:
        self.path, self.base = path, base

    def write(
        self, children: Sequence[Child], keeper: Keeper | None, *, stopped: bool = False
    ) -> None:
        processes: list[dict[str, Any]] = []
        kids: dict[str, Any] = {}
        for c in children:
            pid = c.proc.pid if c.proc is not None else None
            kids[c.name] = {"pid": pid, "restarts": c.restarts, "last_exit": c.last_exit}
            if pid is not None:
                # A consumer left behind is given 5 s: killed, it loses nothing (what it did not
                # commit stays pending), and without its servers it would wait its whole budget.
                budget = 5.0 if c.name == "consumer" else c.stop_budget_s
                processes.append(
                    {"name": c.name, "pid": pid, "cmdline": c.cmdline,
                     "signal": int(signal.SIGTERM), "budget_s": budget}
                )  # fmt: skip
        servers: dict[str, Any] = {}
        if keeper is not None:
            servers["keeper"] = keeper.proc.pid
            processes.append(
                {"name": "keeper", "pid": keeper.proc.pid, "cmdline": keeper.cmdline,
                 "signal": 0, "budget_s": 90}
            )  # fmt: skip
            stop_with = {"postgres": signal.SIGINT, "redis": signal.SIGTERM}
            for name, info in keeper.servers.items():
                servers[name] = info["pid"]
                processes.append(
                    {"name": name, "pid": info["pid"], "cmdline": info.get("cmdline"),
                     "signal": int(stop_with[name]), "budget_s": 60, "phase": 1}
                )  # fmt: skip
        state = {
            **self.base, "pid": os.getpid(), "stopped": stopped, "children": kids,
            "servers": servers, "processes": [] if stopped else processes,
        }  # fmt: skip
        write_private(self.path, json.dumps(state, indent=2) + "\n")


def _drain(watcher: Watcher, consumer: Child, budget_s: float) -> bool:
    """Wait, at most ``budget_s``, until the group has read and acked every entry."""
    deadline = time.monotonic() + budget_s
    while not (drained := watcher.drained()):
        if drained is None:
            return False  # Redis is away: nothing can be acked now; the rest stays pending
        if consumer.proc is None or consumer.proc.poll() is not None:
            logger.warning("the consumer is not running: what it did not ack stays pending")
            return False
        if time.monotonic() >= deadline:
            logger.warning(
                "the consumer did not drain in %.0f s: what it has not acked stays pending in "
                "Redis for the next run (nothing is lost)", budget_s,
            )  # fmt: skip
            return False
        time.sleep(TICK_S)
    return True


def _stop_all(
    producer: Child, consumer: Child, keeper: Keeper | None, watcher: Watcher
) -> list[str]:
    """Stop in order; the list of what did not stop cleanly (empty: all did)."""
    bad: list[str] = []
    logger.info("stopping the producer (SIGTERM, up to %.0f s)", producer.stop_budget_s)
    status = producer.stop()
    logger.info("producer stopped: %s", "not running" if status is None else describe_exit(status))
    if status:
        bad.append(f"producer {describe_exit(status)}")
    logger.info("waiting for the consumer to drain the stream (up to %.0f s)", DRAIN_S)
    if _drain(watcher, consumer, DRAIN_S):
        logger.info("the group has read and acked every entry")
    status = consumer.stop()
    logger.info("consumer stopped: %s", "not running" if status is None else describe_exit(status))
    if status:
        bad.append(f"consumer {describe_exit(status)}")
    watcher.close()
    if keeper is not None:
        logger.info("stopping the embedded servers (PostgreSQL fast shutdown, Redis SIGTERM)")
        for name, code in keeper.stop().items():
            logger.info("%s stopped: %s", name, "unknown" if code is None else describe_exit(code))
            if code != 0:
                bad.append(f"{name} {'unknown' if code is None else describe_exit(code)}")
    return bad


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tickvault run",
        description="Embedded Redis and PostgreSQL (kept in --dir), the producer and a consumer "
        "as supervised processes, against the real venues of the config; a live table.",
    )
    parser.add_argument(
        "--config",
        help="TOML config (default: $TICKVAULT_CONFIG, else <dir>/tickvault.toml, written with "
        "a few liquid markets if absent)",
    )
    parser.add_argument("--dir", default=".tickvault", help="state directory (default .tickvault)")
    parser.add_argument(
        "--no-table", action="store_true", help="a status line every 10 s instead of the table"
    )
    args = parser.parse_args(argv)
    setup_logging()
    stop = Stop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop.set)
    state = Path(args.dir).resolve()
    env = os.environ
    the_plan = plan(config_source(args.config, state, env), env)  # ConfigError: exit 2
    lock = lock_dir(state)
    try:
        return _run(the_plan, state, stop, table=not args.no_table)
    except ServersDown as exc:
        print(f"tickvault run: {exc}", file=sys.stderr)
        return exc.status
    finally:
        lock.close()


def _run(the_plan: Plan, state: Path, stop: Stop, *, table: bool) -> int:
    stop_leftovers(state)
    _check_given(the_plan.redis_url, the_plan.database_url)  # unreachable: propagates
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    embedded = [n for n, url in (("redis", the_plan.redis_url),
                                 ("postgres", the_plan.database_url)) if not url]  # fmt: skip
    keeper = None
    if embedded:
        print(f"starting embedded {' and '.join(embedded)} under {state / 'data'} ...", flush=True)
        keeper = Keeper.start(embedded, state / "data", logs / "servers.log")
    children: list[Child] = []
    run_state = RunState(state / "run.json", {})
    try:
        redis_url = the_plan.redis_url or (keeper.url("redis") if keeper else "")
        database_url = the_plan.database_url or (keeper.url("postgres") if keeper else "")
        generated = state / "run.toml"
        config = children_config(
            the_plan.data, redis_url=redis_url, database_url=database_url, state=state
        )
        header = f"# written by tickvault run from {the_plan.source} at each start: edit that\n"
        write_private(generated, header + dump_toml(config))
        settings = load_settings(generated, {})
        urls = {"redis": redis_url, "postgres": database_url}
        run_state.base = {
            "dir": str(state), "config": str(the_plan.source), "children_config": str(generated),
            "redis": redis_url, "database": database_url,
        }  # fmt: skip
        for name, url in urls.items():
            kind = "embedded" if keeper and name in keeper.servers else "given"
            print(f"{name} {hide_password(url)} ({kind})", flush=True)
        print(f"config {the_plan.source}; logs in {logs}; state in {run_state.path}", flush=True)
        child_env = {k: v for k, v in os.environ.items() if k not in _ENV_DROPPED}
        child_env["PYTHONUNBUFFERED"] = "1"
        consumer = Child("consumer", ["consumer", f"--config={generated}"],
                         logs / "consumer.log", child_env,
                         stop_budget_s=settings.consumer.stop_timeout_s + 5)  # fmt: skip
        producer = Child("producer", ["producer", f"--config={generated}"],
                         logs / "producer.log", child_env,
                         stop_budget_s=settings.producer.stop_timeout_s + 5)  # fmt: skip
        children += [producer, consumer]
        watcher = Watcher(settings)
        if not stop.requested:
            now = time.monotonic()
            consumer.start(now)  # first: it creates the group and the schema
            producer.start(now)
        run_state.write(children, keeper)
        if not stop.requested:
            _watch(children, watcher, stop, run_state, keeper, table=table)
        logger.info("stop requested")
        bad = _stop_all(producer, consumer, keeper, watcher)
        keeper = None
    finally:  # after an error of our own too: leave nothing running, in the same order
        for child in children:
            if child.proc is not None and child.proc.poll() is None:
                child.stop()
        if keeper is not None:
            keeper.stop()
        run_state.write(children, None, stopped=True)
    if bad:
        _say(f"tickvault run: stopped, but not cleanly: {'; '.join(bad)}", sys.stderr)
        return 1
    _say("tickvault run: stopped cleanly")
    return 0


def _say(text: str, stream: IO[str] | None = None) -> None:
    """Print, unless the terminal or pipe is gone (a closed terminal: its SIGHUP stops us; a
    stop in progress must not fail on a write)."""
    with contextlib.suppress(OSError):
        print(text, file=stream or sys.stdout, flush=True)


def _watch(
    children: Sequence[Child],
    watcher: Watcher,
    stop: Stop,
    run_state: RunState,
    keeper: Keeper | None,
    *,
    table: bool,
) -> None:
    """Supervise the children and show the view until a stop is requested."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    live: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if table and console.is_terminal:
        # auto_refresh off: no thread of rich's own; the loop below refreshes it
        live = Live(console=console, auto_refresh=False)
    began = time.monotonic()
    keeper_gone = False
    view_failed_at = -math.inf
    with live as display, _logging_to(sys.stderr if display is not None else None):
        every = TABLE_EVERY_S if display is not None else LINE_EVERY_S
        next_view = began if display is not None else began + every
        while not stop.requested:
            now = time.monotonic()
            if any([c.tick(now) for c in children]):
                run_state.write(children, keeper)
            if keeper is not None and not keeper_gone and keeper.proc.poll() is not None:
                keeper_gone = True
                logger.error("the embedded servers' keeper exited (%s): see logs/servers.log",
                             describe_exit(keeper.proc.returncode))  # fmt: skip
            if now >= next_view:
                try:
                    snap, problems = watcher.sample()
                except Exception:  # the view is not worth stopping the collector for
                    if now >= view_failed_at + 60:  # logged once a minute at most
                        logger.exception("the status view failed; supervising on")
                        view_failed_at = now
                    next_view = now + every
                    continue
                now = time.monotonic()
                if display is not None:
                    display.update(status_view(snap, problems, children, now), refresh=True)
                else:
                    group = watcher.settings.consumer.group
                    line = status_line(snap, problems, children, group, now, now - began)
                    _say(line)
                next_view = now + every
            time.sleep(TICK_S)


@contextlib.contextmanager
def _logging_to(stream: IO[str] | None) -> Iterator[None]:
    """While the live view runs, log lines go through its stderr (printed above the view):
    the handlers hold the stream they were made with, which would draw over it."""
    handlers = [
        h for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream is sys.__stderr__
    ]  # fmt: skip
    if stream is not None:
        for h in handlers:
            h.setStream(stream)
    try:
        yield
    finally:
        if stream is not None:
            for h in handlers:
                h.setStream(sys.__stderr__)
