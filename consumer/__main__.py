"""``python -m consumer`` / ``tickvault consumer``: run one consumer-group worker.

Exit statuses (``common.errors.ExitStatus``): 0 a clean stop, also when a server was down at
the time (what was not committed stays pending for the next consumer: nothing is lost); 1 a bug
(traceback logged); 2 a configuration error; 3 PostgreSQL refused in a way no retry can fix; 4
Redis did. For 3 and 4 the log says the cause and the fix, and nothing more was acked.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time

from redis.exceptions import RedisClusterException

from common.config import Settings, load_settings
from common.envelope import raw_key
from common.errors import (
    ConfigError,
    ExitStatus,
    FatalError,
    TransientError,
    backoff,
    fatal_error,
)
from common.logs import setup_logging
from common.metrics import serve_metrics
from common.redis_checks import check_redis
from common.redis_url import RedisClient, stream_client

from .store import Store
from .worker import Worker

logger = logging.getLogger("consumer")


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (default: $TICKVAULT_CONFIG)")
    parser.add_argument("--name", help="consumer name in the group (default: host-pid)")
    parser.add_argument(
        "--exchange", action="append", help="only these exchanges' streams (repeatable)"
    )
    parser.add_argument("--metrics-port", type=int, default=0, help="serve /metrics on this port")
    parser.add_argument("-v", "--verbose", action="store_true")


def streams_for(settings: Settings, exchanges: list[str] | None) -> list[str]:
    chosen = exchanges or list(settings.exchanges)
    unknown = sorted(set(chosen) - set(settings.exchanges))
    if unknown:
        raise ConfigError("--exchange", f"no feed configured for {', '.join(unknown)}")
    if not chosen:
        raise ConfigError("feeds", "no feed configured", "add a [[feeds]] table")
    return [raw_key(e) for e in chosen]


def connect_redis(settings: Settings, stop: threading.Event | None = None) -> RedisClient:
    """The worker's client: ``redis.url`` read as the producer reads it (``common.redis_url``);
    redis-py's ``RedisCluster`` for a ``redis+cluster://`` URL.

    A reply takes at most block_ms; a server that hangs longer counts as away (and a stop waits
    for no more than this). A ``RedisCluster`` asks for the slot map as it is built: while no
    node of the URL answers, that is tried again (capped backoff) until ``stop``.

    Raises:
        TransientError: ``stop`` was set while no node of the cluster answered.
        FatalError: a node refused (NOAUTH, a certificate that does not verify, ...).
        ConfigError: the URL is wrong, or names servers that are not in cluster mode.
    """
    delays = backoff(initial=0.2, cap=settings.consumer.backoff_max_s)
    first_failure = last_log = 0.0
    while True:
        try:
            return stream_client(
                settings.redis.url,
                socket_timeout=settings.consumer.block_ms / 1000 + 5,
                socket_connect_timeout=5,
                health_check_interval=30,
            )
        except RedisClusterException as exc:  # (raised as it is built: see the docstring)
            cause = exc.__cause__ or exc
            fatal = fatal_error(cause)  # NOAUTH, a certificate, ...
            if fatal is not None:
                raise fatal from exc
            if "not enabled" in str(cause):  # redis-py: "Cluster mode is not enabled on ..."
                raise ConfigError(
                    "redis.url",
                    f"not a usable Redis Cluster: {cause}",
                    "name the cluster's nodes, or use redis://host:port/0 for one server",
                ) from exc
            # else no node answered, or the slots are not all served yet (a cluster forming)
            now = time.monotonic()
            if not first_failure:
                first_failure = now
            if now - last_log >= 10.0:
                last_log = now
                logger.warning(
                    "redis cluster unreachable for %.0f s, retrying: %s", now - first_failure, exc
                )
            if (stop or threading.Event()).wait(next(delays)):
                raise TransientError("stopped while the redis cluster was unreachable") from exc


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    name = args.name or settings.consumer.name or default_name()
    streams = streams_for(settings, args.exchange)
    stop = threading.Event()
    backfill_stop = threading.Event()

    def request_stop(*_: object) -> None:  # only a request: the loop drains and exits
        stop.set()
        backfill_stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    try:
        client = connect_redis(settings, stop)
    except TransientError as exc:  # asked to stop before Redis answered: nothing was held
        logger.error("consumer %s stopped before it could start: %s", name, exc)
        return ExitStatus.OK
    try:
        check_redis(client, f"consumer {name}")
    except FatalError as exc:  # a server that may evict the streams: nothing read yet
        client.close()
        logger.critical("consumer %s stopped: %s. Fix: %s.", name, exc, exc.fix)
        return exc.status
    store = Store(
        settings.database.url,
        synchronous_commit=settings.database.synchronous_commit,
        partition_days_ahead=settings.database.partition_days_ahead,
        retention_days=settings.database.retention_days,
    )
    worker = Worker.from_settings(
        settings, name=name, streams=streams, redis_client=client, store=store
    )
    if args.metrics_port:
        serve_metrics(worker.metrics, args.metrics_port)
    backfill_thread = None
    if settings.backfill.auto:
        from .backfill import Backfiller, start_thread

        backfiller = Backfiller(settings, store.clone(), worker.metrics)
        backfill_thread = start_thread(backfiller, backfill_stop)
    # Long-lived startup objects need no more scans; batches make many short-lived objects.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    sys.setswitchinterval(0.0005)  # the writer thread gets the GIL back quickly after I/O
    try:
        worker.run(stop)
    except Exception as exc:
        fatal = fatal_error(exc)
        if fatal is None:
            logger.exception("consumer %s stopped by an internal error", name)
            return ExitStatus.INTERNAL
        logger.critical(
            "consumer %s stopped: %s refused (%s): %s. Fix: %s. Nothing more was acked; "
            "the entries it held stay pending.",
            name, fatal.server, fatal.code, fatal.problem, fatal.fix,
        )  # fmt: skip
        return fatal.status
    finally:
        backfill_stop.set()
        if backfill_thread is not None:
            # its writes are idempotent and a claimed gap is taken over later: no long wait
            backfill_thread.join(timeout=2.0)
        if worker.writers_finished:  # else a writer may still be using the connection
            store.close()
        client.close()
    return ExitStatus.OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tickvault consumer", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"tickvault consumer: {exc}", file=sys.stderr)
        return ExitStatus.CONFIG


if __name__ == "__main__":
    sys.exit(main())
