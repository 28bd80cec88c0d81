"""``tickvault``: one command, several subcommands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Callable

from .config import load_settings
from .errors import ConfigError
from .logs import setup_logging

logger = logging.getLogger("tickvault")


def _producer(argv: list[str]) -> int:
    from producer.__main__ import main

    return main(argv)


def _consumer(argv: list[str]) -> int:
    from consumer.__main__ import main

    return main(argv)


def _migrate(argv: list[str]) -> int:
    import psycopg

    from consumer.schema import migrate

    parser = argparse.ArgumentParser(prog="tickvault migrate", description="apply the schema")
    parser.add_argument("--config")
    args = parser.parse_args(argv)
    setup_logging()
    settings = load_settings(args.config)
    with psycopg.connect(settings.database.url) as conn:
        version = migrate(
            conn,
            days_ahead=settings.database.partition_days_ahead,
            retention_days=settings.database.retention_days,
        )
    print(f"schema at version {version}")
    return 0


def _replay(argv: list[str]) -> int:
    from common.redis_url import stream_client
    from consumer.__main__ import streams_for
    from consumer.replay import replay, to_stream_id
    from consumer.store import Store

    parser = argparse.ArgumentParser(
        prog="tickvault replay", description="process a range of the stream again (idempotent)"
    )
    parser.add_argument("--config")
    parser.add_argument("--from", dest="start", required=True, help="stream id or ISO time")
    parser.add_argument("--to", dest="end", help="stream id or ISO time (default: the end)")
    parser.add_argument("--exchange", action="append")
    args = parser.parse_args(argv)
    setup_logging()
    settings = load_settings(args.config)
    try:
        start = to_stream_id(args.start)
        end = to_stream_id(args.end, end=True) if args.end else None
    except ValueError as exc:
        raise ConfigError("--from/--to", str(exc)) from None
    client = stream_client(settings.redis.url)
    store = Store(
        settings.database.url, partition_days_ahead=settings.database.partition_days_ahead
    )
    try:
        counts = replay(
            settings, streams_for(settings, args.exchange), start=start, end=end,
            client=client, store=store,
        )  # fmt: skip
    finally:
        store.close()
    print(
        f"replayed {counts.get('entries', 0)} entries: {counts.get('rows_new', 0)} new rows, "
        f"{counts.get('dead', 0)} dead-lettered"
    )
    return 0


def _simulate(argv: list[str]) -> int:
    from .simulator.dialects import all_dialects, get_dialect
    from .simulator.server import Simulator, SimulatorConfig

    parser = argparse.ArgumentParser(
        prog="tickvault simulate",
        description="run a local exchange on 127.0.0.1 speaking venues' WebSocket protocols "
        "and serving their REST trade history on the same port (SIGUSR1 drops all clients)",
    )
    parser.add_argument(
        "--serve", action="append", metavar="EXCHANGE=PORT", required=True,
        help=f"venue and port, repeatable; venues: {', '.join(all_dialects())}",
    )  # fmt: skip
    parser.add_argument("--rate", type=float, default=100.0, help="trades/s per symbol")
    parser.add_argument("--trades", type=int, default=0, help="stop after N trades per symbol")
    parser.add_argument("--quote-rate", type=float, default=10.0, help="quotes/s per symbol")
    parser.add_argument("--max-connection-s", type=float, default=0.0)
    parser.add_argument(
        "--compress", action="store_true", help="negotiate permessage-deflate compression"
    )
    parser.add_argument(
        "--abnormal", action="store_true",
        help="now and then a fat-finger trade and a two-trade flash crash (flagged, not dropped)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    setup_logging()
    config = SimulatorConfig(
        rate=args.rate,
        trades=args.trades,
        quote_rate=args.quote_rate,
        max_connection_s=args.max_connection_s,
        compress=args.compress,
        abnormal=args.abnormal,
    )
    pairs = []
    for item in args.serve:
        exchange, _, port = item.partition("=")
        try:
            pairs.append((get_dialect(exchange), int(port)))
        except (KeyError, ValueError) as exc:
            parser.error(f"--serve {item}: {exc}")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sims = [Simulator(dialect, config) for dialect, _ in pairs]
        tasks: set[asyncio.Task[None]] = set()

        def drop_all() -> None:  # SIGUSR1: the venue cuts every connection (make chaos)
            for sim in sims:
                task = asyncio.ensure_future(sim.drop_all())
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        loop.add_signal_handler(signal.SIGUSR1, drop_all)
        for sim, (_, port) in zip(sims, pairs, strict=True):
            await sim.start("127.0.0.1", port)
        print("simulator ready", flush=True)
        async with asyncio.TaskGroup() as tg:
            for sim in sims:
                tg.create_task(sim.run(stop), name=f"sim {sim.dialect.exchange}")
        for sim in sims:
            await sim.close()
            logger.info("%s: sent %d trades", sim.dialect.exchange, sim.sent_trades)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


def _venues(argv: list[str]) -> int:
    from .rest import all_histories
    from .venues import all_venues

    argparse.ArgumentParser(prog="tickvault venues").parse_args(argv)
    histories = all_histories()
    for venue in all_venues().values():
        kinds = ", ".join(sorted(k.value for k in venue.kinds))
        channels = ", ".join(sorted(c.value for c in venue.channels))
        print(f"{venue.exchange:<16} {venue.title}")
        print(f"{'':<16} channels: {channels}; symbols: {kinds}")
        print(f"{'':<16} endpoint: {venue.default_url}")
        if venue.limits:
            print(f"{'':<16} limits:   {venue.limits}")
        if venue.options:
            opts = "; ".join(f"{k} = {'|'.join(v)}" for k, v in venue.options.items())
            print(f"{'':<16} options:  {opts}")
        if venue.caveats:
            print(f"{'':<16} caveats:  {venue.caveats}")
        history = histories.get(venue.exchange)
        backfill = f"{history.default_url} ({history.reach})" if history else "none"
        print(f"{'':<16} backfill: {backfill}")
    return 0


def _lazy(target: str) -> Callable[[list[str]], int]:
    """A command whose module ("module:function") is imported only when it runs: the others
    stay fast to start and need none of its dependencies."""

    def command(argv: list[str]) -> int:
        module, _, name = target.partition(":")
        run: Callable[[list[str]], int] = getattr(importlib.import_module(module), name)
        return run(argv)

    return command


COMMANDS = {
    "run": (
        _lazy("common.run.command:main"),
        "embedded servers + producer + consumer against the real venues; live table",
    ),
    "status": (
        _lazy("common.status.command:main"),
        "health of streams, groups, feeds, symbols, dead letters and gaps",
    ),
    "producer": (_producer, "run the producer (exchange WebSockets -> Redis Stream)"),
    "consumer": (_consumer, "run a consumer-group worker (Redis Stream -> PostgreSQL)"),
    "demo": (
        _lazy("common.demo:main"),
        "start servers, simulator, producer and consumer; show live counts",
    ),
    "simulate": (_simulate, "run the local exchange simulator"),
    "migrate": (_migrate, "apply the database schema and partitions"),
    "replay": (_replay, "process a range of the stream again (no duplicates)"),
    "venues": (_venues, "list venues, channels, endpoints and limits"),
    "gaps": (
        _lazy("consumer.completeness:gaps"),
        "the gap ledger (--scan: scan stored ids); exit 1 if any unsettled",
    ),
    "coverage": (
        _lazy("consumer.completeness:coverage"),
        "when each feed was blind, per exchange and symbol; exit 1 if any",
    ),
    "backfill": (
        _lazy("consumer.completeness:backfill"),
        "find gaps and fetch the missing trades over the venues' REST",
    ),
    "dlq": (
        _lazy("consumer.dlq:main"),
        "dead letters: list, show, requeue into their raw stream, purge",
    ),
    "retention": (
        _lazy("consumer.retention:main"),
        "drop daily partitions older than database.retention_days",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: tickvault COMMAND [options]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<10} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = COMMANDS[argv[0]][0], argv[1:]
    try:
        return command(rest)
    except ConfigError as exc:
        print(f"tickvault {argv[0]}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from .errors import ExitStatus, fatal_error, is_transient

        fatal = fatal_error(exc)
        if fatal is not None:
            print(f"tickvault {argv[0]}: {fatal}", file=sys.stderr)
            return fatal.status
        if not is_transient(exc):
            raise
        # a one-shot command (migrate, replay, gaps) that cannot reach a server
        import psycopg

        cause = exc.__cause__ if isinstance(exc.__cause__, psycopg.Error) else exc
        status = ExitStatus.POSTGRES if isinstance(cause, psycopg.Error) else ExitStatus.REDIS
        print(f"tickvault {argv[0]}: cannot reach a server: {exc}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
