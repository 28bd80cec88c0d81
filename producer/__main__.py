"""``python -m producer`` / ``tickvault producer``: keep every configured feed connected and
append each raw frame to its exchange's Redis Stream.

Stop (SIGTERM/SIGINT): the feeds close, then what is buffered is flushed, all within one budget,
``producer.stop_timeout_s``; what Redis cannot take by then waits in the spill for the next
start. Exit statuses (``common.errors.ExitStatus``): 0 every frame received reached Redis or the
spill; 2 a configuration error (also: another producer holds this spill directory); 4 Redis
refused in a way no retry can fix (the log says the fix; what was in memory went to the spill
first, for the next start); 5 frames were lost (dropped with memory and spill full, or unsent at
the deadline without a spill: the log counts them; or in spill segments found missing or
unreadable); 1 a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common.config import Settings, load_settings, parse_fsync
from common.errors import ConfigError, ExitStatus, FatalError
from common.logs import setup_logging
from common.markers import ALIVE_S
from common.metrics import Metrics, serve_metrics
from common.redis_checks import check_redis

from .feed_metrics import watch as watch_feeds
from .heartbeat import publish as publish_heartbeat
from .markers import Markers
from .publisher import Publisher
from .session import FeedSession
from .spill import Spill, SpillError
from .wire import RedisWire

logger = logging.getLogger("producer")

STATUS_EVERY_S = 10.0
CONNECT_SPACING_S = 0.4  # between connections to one exchange: under every venue's connect rate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (default: $TICKVAULT_CONFIG)")
    parser.add_argument("--metrics-port", type=int, default=0, help="serve /metrics on this port")
    parser.add_argument("-v", "--verbose", action="store_true")


def build_sessions(
    settings: Settings, publisher: Publisher, metrics: Metrics, markers: Markers | None = None
) -> list[FeedSession]:
    sessions = []
    per_exchange: dict[str, int] = {}
    p = settings.producer
    for feed in settings.feeds:
        try:
            plans = feed.plans()
        except ValueError as exc:
            raise ConfigError(f"feeds ({feed.exchange})", str(exc)) from None
        for plan in plans:
            n = per_exchange.get(feed.exchange, 0)
            per_exchange[feed.exchange] = n + 1
            sessions.append(
                FeedSession(
                    feed.venue,
                    plan,
                    publisher,
                    metrics,
                    lifetime_s=p.rollover_after_s or None,
                    overlap_s=p.rollover_overlap_s,
                    backoff_initial_s=p.backoff_initial_s,
                    backoff_max_s=p.backoff_max_s,
                    start_delay_s=n * CONNECT_SPACING_S,
                    fast_frames=p.fast_frames,
                    silence_s=p.silence_s,
                    max_frame_bytes=p.max_frame_bytes,
                    markers=markers,
                )
            )
    return sessions


async def amain(settings: Settings, metrics_port: int = 0) -> int:
    if not settings.feeds:
        raise ConfigError("feeds", "no feed configured", "add a [[feeds]] table")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = Metrics("producer")
    if metrics_port:
        serve_metrics(metrics, metrics_port)
    p = settings.producer
    spill = open_spill(settings)
    publisher = Publisher(
        RedisWire(settings.redis.url, timeout=10.0),
        buffer_frames=p.buffer_frames,
        buffer_bytes=p.buffer_bytes,
        pipeline_max=p.pipeline_max,
        linger_ms=p.linger_ms,
        linger_frames=p.linger_frames,
        metrics=metrics,
        backoff_max_s=p.backoff_max_s,
        max_frames=settings.redis.maxlen,
        retention_s=settings.redis.retention_s,
        spill=spill,
    )
    metrics.set("spill_bytes", spill.bytes if spill is not None else 0)
    markers = Markers(publisher, producer_name(settings))
    sessions = build_sessions(settings, publisher, metrics, markers)
    watch_feeds(sessions, publisher, metrics)
    symbols = exchange_symbols(settings)
    for exchange, names in symbols.items():
        markers.run_event("started", exchange, names)
    logger.info("producer: %d connections for %s", len(sessions), ", ".join(settings.exchanges))
    publisher_stop = asyncio.Event()
    fatal: FatalError | None = None
    try:
        async with asyncio.TaskGroup() as tg:
            pub = tg.create_task(publisher.run(publisher_stop), name="publisher")
            feeds = [tg.create_task(s.run(stop), name=f"feed {s.label}") for s in sessions]
            status = tg.create_task(_status(metrics, publisher, stop), name="status")
            alive = tg.create_task(_alive(markers, symbols, stop), name="alive")
            heartbeat = tg.create_task(
                publish_heartbeat(settings.redis.url, producer_name(settings), sessions, stop),
                name="heartbeat",
            )
            await _until_stop_or_failure(stop, pub)
            deadline = time.monotonic() + p.stop_timeout_s
            logger.info("producer: stopping; %d frames buffered", publisher.buffered)
            # The feeds close first (nothing more comes in), then the buffer drains: one budget.
            _, late = await asyncio.wait(
                [*feeds, status, alive, heartbeat], timeout=p.stop_timeout_s / 2
            )
            for task in late:
                task.cancel()
            if late:  # their last markers (a connection closed, lost) go in before the stop
                await asyncio.wait(late, timeout=1.0)
            for exchange, names in symbols.items():
                markers.run_event("stopped", exchange, names)
            publisher.drain_budget_s = max(0.0, deadline - time.monotonic())
            publisher_stop.set()
            await pub
    except* FatalError as group:
        first = group.exceptions[0]
        assert isinstance(first, FatalError)
        fatal = first
        if publisher.buffered:  # delivered by the feeds while the publisher ended: kept too
            publisher.keep_rest(f"{fatal.server} refused ({fatal.code})")
    finally:
        if spill is not None:
            spill.close()
    if fatal is not None:  # its status, even with frames lost: the refusal needs the fix
        logger.critical(
            "producer stopped: %s refused (%s): %s. Fix: %s. %d frames wait in the spill for "
            "the next start; %d frames were not written.",
            fatal.server, fatal.code, fatal.problem, fatal.fix, publisher.spilled,
            publisher.buffered,
        )  # fmt: skip
        return fatal.status
    logger.info("producer stopped: %s", metrics.summary())
    if publisher.lost:
        logger.error("producer stopped having lost %d frames (see above)", publisher.lost)
        return ExitStatus.LOST
    if spill is not None and spill.missing_segments:
        logger.error(
            "producer stopped; %d spill segments were missing or unreadable at its start: "
            "their frames are lost (see above)", spill.missing_segments,
        )  # fmt: skip
        return ExitStatus.LOST
    return ExitStatus.OK


def exchange_symbols(settings: Settings) -> dict[str, list[str]]:
    """Each exchange's configured symbols (a run's markers name them)."""
    out: dict[str, list[str]] = {}
    for feed in settings.feeds:
        names = out.setdefault(feed.exchange, [])
        names += [str(s) for s in feed.symbols if str(s) not in names]
    return out


def producer_name(settings: Settings) -> str:
    return settings.producer.name or socket.gethostname()


def open_spill(settings: Settings) -> Spill | None:
    """This producer's spill (``<spill_dir>/<name>``), or None when ``spill_dir`` is empty."""
    p = settings.producer
    if not p.spill_dir:
        return None
    fsync = parse_fsync(p.spill_fsync)
    directory = Path(p.spill_dir) / producer_name(settings)
    try:
        return Spill(
            directory,
            max_bytes=p.spill_max_bytes,
            fsync_every_s=fsync,
            drop_oldest=p.spill_full == "drop-oldest",
        ).open()
    except SpillError as exc:
        raise ConfigError("producer.spill_dir", str(exc)) from None


async def _until_stop_or_failure(stop: asyncio.Event, publisher: asyncio.Task[None]) -> None:
    """Wait for a stop request; if the publisher ends first (a fatal refusal), raise its error."""
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({stopper, publisher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if publisher.done() and not stop.is_set():
        stop.set()  # the feeds stop too
        publisher.result()  # raises its error


async def _alive(markers: Markers, symbols: dict[str, list[str]], stop: asyncio.Event) -> None:
    """An ``alive`` marker in every stream every ``ALIVE_S``: the coverage ledger ends the
    sessions of a run that stopped saying so (killed, and maybe never started again)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), ALIVE_S)
        if not stop.is_set():
            for exchange, names in symbols.items():
                markers.run_event("alive", exchange, names)


async def _status(metrics: Metrics, publisher: Publisher, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), STATUS_EVERY_S)
        except TimeoutError:
            metrics.set("buffered", publisher.buffered)
            metrics.set("buffered_bytes", publisher.buffered_bytes)
            metrics.set("spilled", publisher.spilled)
            logger.info("producer: %s", metrics.summary())


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop ``producer.event_loop`` names (validated by the config): uvloop's
    (``auto`` where it is installed) or asyncio's own. uvloop costs the producer ~15 % less
    CPU per frame at paced rates (README, Performance)."""
    if name != "asyncio":
        try:
            import uvloop
        except ImportError:  # "auto" without it (the config refuses "uvloop" without it)
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tickvault producer", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        settings = load_settings(args.config)
        _check_redis(settings)
        with asyncio.Runner(loop_factory=loop_factory(settings.producer.event_loop)) as runner:
            return runner.run(amain(settings, args.metrics_port))
    except ConfigError as exc:
        print(f"tickvault producer: {exc}", file=sys.stderr)
        return ExitStatus.CONFIG
    except FatalError as exc:  # a Redis that may evict the streams: nothing read yet
        logger.critical("producer stopped: %s. Fix: %s.", exc, exc.fix)
        return exc.status


def _check_redis(settings: Settings) -> None:
    """``common.redis_checks`` on the producer's server(s), before any feed is read; a server
    away now is not waited for (the spill takes the frames)."""
    from redis.exceptions import RedisClusterException

    from common.redis_url import stream_client

    try:
        client = stream_client(settings.redis.url, socket_connect_timeout=2, socket_timeout=5)
    except RedisClusterException as exc:  # built by asking the nodes: none answers now
        logger.info("producer: redis not checked at start (%s)", exc)
        return
    try:
        check_redis(client, "producer")
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
