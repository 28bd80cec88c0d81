"""The only I/O of ``tickvault status``: Redis and PostgreSQL into a :class:`Snapshot`. A server
that is away or refuses is recorded as a :class:`Failure`, never raised."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict
from redis.exceptions import RedisClusterException

from producer.heartbeat import FEEDS_PREFIX, current_fields, producer_of_key

from ..config import Settings, hide_password
from ..envelope import DEAD_PREFIX, RAW_PREFIX, dead_key, exchange_of_key, raw_key
from ..errors import FatalError, TransientError
from ..redis_url import RedisClient, redis_options
from ..venues import Channel
from .problems import reason_class
from .snapshot import (
    ConsumerInfo,
    DeadInfo,
    Failure,
    FeedInfo,
    GapInfo,
    GroupInfo,
    Snapshot,
    StreamInfo,
    SymbolInfo,
)

DEAD_SAMPLE = 50  # newest dead letters read per exchange for their reason classes
STATEMENT_TIMEOUT_MS = 15_000  # the hour of trades is counted, bounded by this


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_ms(entry_id: Any) -> int:
    return int(_s(entry_id).split("-", 1)[0])


# What a Redis that is away or refuses raises (a cluster none of whose nodes answers: the
# cluster exception, which is not a RedisError).
REDIS_FAILURES = (redis.RedisError, RedisClusterException, FatalError, TransientError, OSError)


def _redis_failure(exc: BaseException, where: str) -> Failure:
    unreachable = isinstance(
        exc, redis.ConnectionError | redis.TimeoutError | RedisClusterException | OSError
    )
    if unreachable:
        return Failure(source="redis", text=f"cannot reach {where}: {exc}", unreachable=True)
    return Failure(source="redis", text=f"{where} refused: {exc}", unreachable=False)


def _keys(client: RedisClient, prefix: str, kind: str) -> list[str]:
    return sorted(_s(k) for k in client.scan_iter(match=f"{prefix}*", count=1000, _type=kind))


def gather_streams(client: RedisClient, exchanges: Iterable[str], now_ms: int) -> list[StreamInfo]:
    keys = set(_keys(client, RAW_PREFIX, "stream")) | {raw_key(e) for e in exchanges}
    out = []
    for key in sorted(keys):
        try:
            info: Any = client.xinfo_stream(key)
        except redis.ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
            out.append(StreamInfo(exchange=exchange_of_key(key), key=key, exists=False))
            continue
        first, last = info.get("first-entry"), info.get("last-entry")
        memory: Any = client.memory_usage(key)
        out.append(
            StreamInfo(
                exchange=exchange_of_key(key),
                key=key,
                exists=True,
                length=int(info["length"]),
                memory_bytes=memory,
                oldest_age_s=(now_ms - _id_ms(first[0])) / 1000 if first else None,
                newest_age_s=(now_ms - _id_ms(last[0])) / 1000 if last else None,
                groups=gather_groups(client, key, now_ms),
            )
        )
    return out


def gather_groups(client: RedisClient, key: str, now_ms: int) -> list[GroupInfo]:
    out = []
    groups: Any = client.xinfo_groups(key)
    for g in groups:
        name, pending = _s(g["name"]), int(g.get("pending") or 0)
        last = _s(g.get("last-delivered-id") or "0-0")
        after: Any = client.xrange(key, min=f"({last}", count=1)  # the first not delivered
        lag_s = (now_ms - _id_ms(after[0][0])) / 1000 if after else 0.0
        oldest = None
        if pending:
            summary: Any = client.xpending(key, name)
            if summary and summary.get("min"):
                oldest = (now_ms - _id_ms(summary["min"])) / 1000
        consumers: Any = client.xinfo_consumers(key, name)
        lag = g.get("lag")
        out.append(
            GroupInfo(
                name=name,
                pending=pending,
                lag_entries=None if lag is None else int(lag),
                lag_s=max(0.0, lag_s),
                oldest_pending_s=oldest,
                consumers=[
                    ConsumerInfo(
                        name=_s(c["name"]), pending=int(c["pending"]), idle_s=int(c["idle"]) / 1000
                    )
                    for c in consumers
                ],
            )
        )
    return out


def gather_feeds(client: RedisClient, now_ns: int) -> tuple[list[FeedInfo], list[Failure]]:
    feeds, failures = [], []
    for key in _keys(client, FEEDS_PREFIX, "hash"):
        producer = producer_of_key(key)
        raw: Any = client.hgetall(key)
        fields: dict[str, Mapping[str, Any]] = {}
        for label, value in raw.items():
            try:
                record = json.loads(value)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                text = f"{key} field {_s(label)!r} is not a heartbeat: {exc}"
                failures.append(Failure(source="heartbeat", text=text, unreachable=False))
                continue
            fields[_s(label)] = record
        for label, r in sorted(current_fields(fields).items()):
            try:
                feeds.append(_feed(producer, label, r, now_ns))
            except (KeyError, TypeError, ValueError) as exc:
                text = f"{key} field {label!r} is not a heartbeat: {exc!r}"
                failures.append(Failure(source="heartbeat", text=text, unreachable=False))
    return feeds, failures


def _feed(producer: str, label: str, r: Mapping[str, Any], now_ns: int) -> FeedInfo:
    def age(ns: Any) -> float | None:
        return None if ns is None else max(0.0, (now_ns - int(ns)) / 1e9)

    since = r.get("connected_since")
    heartbeat = age(r["heartbeat_ns"])
    assert heartbeat is not None
    return FeedInfo(
        producer=producer,
        label=label,
        exchange=str(r["exchange"]),
        context=str(r.get("context") or ""),
        symbols=[str(s) for s in r.get("symbols") or []],
        state=str(r["state"]),
        connected_since_ns=None if since is None else int(since),
        connected_s=age(since),
        last_frame_age_s=age(r.get("last_frame_ns")),
        reconnects_1h=int(r.get("reconnects_1h") or 0),
        conn=None if r.get("conn") is None else str(r["conn"]),
        heartbeat_age_s=heartbeat,
        every_s=float(r.get("every_s") or 5.0),
    )


def gather_dead(client: RedisClient, exchanges: Iterable[str]) -> list[DeadInfo]:
    keys = set(_keys(client, DEAD_PREFIX, "stream")) | {dead_key(e) for e in exchanges}
    out = []
    for key in sorted(keys):
        exchange = exchange_of_key(key)
        count = int(client.xlen(key))
        reasons: dict[str, int] = {}
        sample: Any = client.xrevrange(key, count=DEAD_SAMPLE) if count else []
        for _, fields in sample:
            name = reason_class(_s(fields.get(b"reason", b"")), exchange)
            reasons[name] = reasons.get(name, 0) + 1
        out.append(DeadInfo(exchange=exchange, count=count, sampled=len(sample), reasons=reasons))
    return out


_SYMBOLS_SQL = """
SELECT exchange, symbol,
       count(*) FILTER (WHERE ts >= now() - interval '1 minute'),
       count(*),
       extract(epoch FROM now() - max(ts))::float8
FROM trades WHERE ts >= now() - interval '1 hour'
GROUP BY exchange, symbol ORDER BY exchange, symbol
"""
_GAPS_SQL = """
SELECT exchange, count(*) FILTER (WHERE status = 'open'),
       count(*) FILTER (WHERE status = 'backfilling'),
       extract(epoch FROM now() - min(detected_at))::float8
FROM gaps WHERE status IN ('open', 'backfilling') GROUP BY exchange ORDER BY exchange
"""


def gather_database(
    url: str, configured: Iterable[tuple[str, str]]
) -> tuple[list[SymbolInfo], list[GapInfo] | None, list[Failure]]:
    """Trades per symbol in the last hour and the open gaps; ``configured`` (exchange, symbol)
    pairs are listed even without a trade."""
    failures = []
    with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
        conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        row = conn.execute(
            "SELECT to_regclass('trades') IS NOT NULL, to_regclass('gaps') IS NOT NULL,"
            " CASE WHEN to_regclass('tickvault_migrations') IS NULL THEN false"
            " ELSE has_table_privilege(to_regclass('tickvault_migrations'), 'SELECT') END"
        ).fetchone()  # (a status user without SELECT on the versions is not told of them)
        has_trades, has_gaps = bool(row and row[0]), bool(row and row[1])
        if row and row[2]:
            failures += _newer_schema(conn)
        found: dict[tuple[str, str], SymbolInfo] = {}
        if has_trades:
            for exchange, symbol, rows_1m, rows_1h, age in conn.execute(_SYMBOLS_SQL):
                found[exchange, symbol] = SymbolInfo(
                    exchange=exchange,
                    symbol=symbol,
                    rows_1m=rows_1m,
                    rows_1h=rows_1h,
                    newest_age_s=max(0.0, age),
                )
        else:
            text = "no trades table: no consumer has run (or run tickvault migrate)"
            failures.append(Failure(source="postgresql", text=text, unreachable=False))
        for exchange, symbol in configured:
            found.setdefault((exchange, symbol), SymbolInfo(exchange=exchange, symbol=symbol))
        gaps = None
        if has_gaps:
            gaps = [
                GapInfo(exchange=e, open=o, backfilling=b, oldest_s=max(0.0, age))
                for e, o, b, age in conn.execute(_GAPS_SQL)
            ]
    return [found[k] for k in sorted(found)], gaps, failures


def _eviction(client: RedisClient) -> list[Failure]:
    """A problem when the server may evict the streams (``common.redis_checks``); nothing
    when INFO is not the status user's to ask (the README's ACL for it has no ``+info``)."""
    from ..redis_checks import eviction_problems

    try:
        reply: Any = client.info("memory")
    except redis.ResponseError:  # NOPERM
        return []
    return [Failure(source="redis", text=p, unreachable=False) for p in eviction_problems(reply)]


def _newer_schema(conn: psycopg.Connection[Any]) -> list[Failure]:
    """A problem when a newer tickvault migrated the database: this version's consumers stop."""
    from consumer.schema import SCHEMA_VERSION, schema_version

    version = schema_version(conn)
    if version <= SCHEMA_VERSION:
        return []
    text = (
        f"schema at version {version}, newer than this tickvault's ({SCHEMA_VERSION}): "
        "consumers of this version stop at start; upgrade them"
    )
    return [Failure(source="postgresql", text=text, unreachable=False)]


def configured_symbols(settings: Settings) -> list[tuple[str, str]]:
    return sorted(
        {
            (feed.exchange, str(symbol))
            for feed in settings.feeds
            if Channel.TRADES in feed.channels
            for symbol in feed.symbols
        }
    )


def database_where(url: str) -> str:
    """``host:port/dbname`` of a PostgreSQL URL (never the password)."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return hide_password(url)
    host = info.get("host") or "localhost"
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or info.get('user') or ''}"


def gather(settings: Settings, connect: Callable[[], RedisClient]) -> Snapshot:
    """One snapshot of everything; a server that fails is recorded in ``failures``.
    ``connect()`` returns the Redis client (built on first use: a cluster client asks its nodes
    for the slot map as it is built)."""
    exchanges = list(settings.exchanges)
    where = redis_options(settings.redis.url).where()
    failures: list[Failure] = []
    streams: list[StreamInfo] = []
    feeds: list[FeedInfo] = []
    dead: list[DeadInfo] = []
    redis_ok = True
    try:
        client = connect()
        seconds, micros = client.time()  # a cluster: any node's clock
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        streams = gather_streams(client, exchanges, now_ms)
        feeds, bad = gather_feeds(client, time.time_ns())
        failures += bad
        dead = gather_dead(client, exchanges)
        failures += _eviction(client)
    except REDIS_FAILURES as exc:
        redis_ok = False
        failures.append(_redis_failure(exc, f"redis at {where}"))
    database = database_where(settings.database.url)
    symbols: list[SymbolInfo] = []
    gaps: list[GapInfo] | None = None
    database_ok = True
    try:
        symbols, gaps, bad = gather_database(settings.database.url, configured_symbols(settings))
        failures += bad
    except psycopg.Error as exc:
        database_ok = False
        unreachable = isinstance(exc, psycopg.OperationalError)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        text = f"cannot reach {database}: {text}" if unreachable else f"{database} refused: {text}"
        failures.append(Failure(source="postgresql", text=text, unreachable=unreachable))
    return Snapshot(
        taken_ns=time.time_ns(),
        redis=where,
        database=database,
        configured=exchanges,
        streams=streams,
        feeds=feeds,
        symbols=symbols,
        dead_letters=dead,
        gaps=gaps,
        failures=failures,
        redis_ok=redis_ok,
        database_ok=database_ok,
    )
