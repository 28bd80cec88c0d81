"""``tickvault status``: is the pipeline healthy, and if not, what needs attention.

One snapshot gathers, per exchange stream, its length, memory and oldest/newest entry ages; per
consumer group its lag (entries, and seconds: the age of the first entry not yet delivered, and
of the oldest entry delivered but not acked), pending entries and each consumer's idle time; per
feed the producer's heartbeat (``producer.heartbeat``: state, connected since, last frame,
reconnects in the last hour); from PostgreSQL the trades per exchange and symbol in the last
minute and hour with the newest one's age, and the open gaps; and the dead letters with a sample
of their reasons. :func:`find_problems` turns a snapshot (and the previous one, with
``--watch``) into the list of what needs attention; :func:`render` draws it with rich. Both are
pure: only :func:`gather` does I/O.

Ages of stream entries are measured on Redis' clock (``TIME``), ages of trades on PostgreSQL's
(``now()``), heartbeats on this machine's clock (the producer's stamps are wall-clock ns).

Exit status: 0 healthy, 1 something needs attention. A server that cannot be reached (or that
refuses a command) is a problem like any other, reported with the rest, so also status 1; a
configuration error is status 2 (``common.cli``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec
import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict
from redis.exceptions import RedisClusterException
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from producer.heartbeat import FEEDS_PREFIX, current_fields, producer_of_key

from .config import Settings, hide_password, load_settings
from .envelope import DEAD_PREFIX, RAW_PREFIX, dead_key, exchange_of_key, raw_key
from .errors import FatalError, TransientError
from .redis_url import RedisClient, redis_options, stream_client
from .venues import Channel

DEAD_SAMPLE = 50  # newest dead letters read per exchange for their reason classes
STATEMENT_TIMEOUT_MS = 15_000  # the hour of trades is counted, bounded by this
GROWING_MIN_S = 5.0  # a lag growing between two --watch samples counts from this age on
GROWING_BY_S = 1.0  # ... and this much more than the previous sample's
STALE_BEATS = 3  # a heartbeat older than this many intervals: the producer is gone or stuck


# -- the snapshot --------------------------------------------------------------------------------


class _Struct(msgspec.Struct, frozen=True, kw_only=True):
    pass


class ConsumerInfo(_Struct, frozen=True, kw_only=True):
    name: str
    pending: int
    idle_s: float


class GroupInfo(_Struct, frozen=True, kw_only=True):
    name: str
    pending: int
    lag_entries: int | None  # XINFO GROUPS' ``lag``: None where Redis cannot count it
    lag_s: float  # age of the first entry not yet delivered to the group (0: none)
    oldest_pending_s: float | None  # age of the oldest entry delivered and not acked
    consumers: list[ConsumerInfo]

    @property
    def behind_s(self) -> float:
        """How far behind the group is: its oldest entry not done with, in seconds."""
        return max(self.lag_s, self.oldest_pending_s or 0.0)


class StreamInfo(_Struct, frozen=True, kw_only=True):
    exchange: str
    key: str
    exists: bool
    length: int = 0
    memory_bytes: int | None = None
    oldest_age_s: float | None = None
    newest_age_s: float | None = None
    groups: list[GroupInfo] = msgspec.field(default_factory=list)


class FeedInfo(_Struct, frozen=True, kw_only=True):
    producer: str
    label: str
    exchange: str
    context: str
    symbols: list[str]
    state: str  # connected | connecting | backoff | stopped
    connected_since_ns: int | None
    connected_s: float | None
    last_frame_age_s: float | None
    reconnects_1h: int
    conn: str | None
    heartbeat_age_s: float
    every_s: float


class SymbolInfo(_Struct, frozen=True, kw_only=True):
    exchange: str
    symbol: str
    rows_1m: int = 0
    rows_1h: int = 0
    newest_age_s: float | None = None  # None: no trade in the last hour


class DeadInfo(_Struct, frozen=True, kw_only=True):
    exchange: str
    count: int
    sampled: int
    reasons: dict[str, int]  # reason class -> count among the sampled newest


class GapInfo(_Struct, frozen=True, kw_only=True):
    exchange: str
    open: int
    backfilling: int
    oldest_s: float  # since the oldest of them was detected


class Failure(_Struct, frozen=True, kw_only=True):
    source: str  # "redis", "postgresql", "heartbeat"
    text: str
    unreachable: bool


class Snapshot(_Struct, frozen=True, kw_only=True):
    taken_ns: int
    redis: str
    database: str
    configured: list[str]  # exchanges in the configuration
    streams: list[StreamInfo]
    feeds: list[FeedInfo]
    symbols: list[SymbolInfo]
    dead_letters: list[DeadInfo]
    gaps: list[GapInfo] | None  # None: no gaps table (or PostgreSQL unreachable)
    failures: list[Failure]
    redis_ok: bool
    database_ok: bool


class Problem(_Struct, frozen=True, kw_only=True):
    kind: str
    subject: str
    text: str


class Thresholds(_Struct, frozen=True, kw_only=True):
    silent_s: float = 60.0
    lag_s: float = 30.0
    idle_s: float = 60.0


# -- pure parts: reason classes, problems, rendering ---------------------------------------------

_DIGITS = re.compile(r"\d+")
_POSTGRES = re.compile(r"postgres rejected \((\w+)\)")
_ROW = re.compile(r"(trade|quote) (?:id\b|\S+: (\w+))")


def reason_class(reason: str, exchange: str = "") -> str:
    """A dead letter's reason, without its particulars: what kind of failure it is."""
    text = reason.removeprefix(f"{exchange}: ") if exchange else reason
    if text.startswith("delivered ") and " times: " in text:
        return "delivered too often"
    if m := _POSTGRES.match(text):
        return f"postgres rejected ({m.group(1)})"
    if m := _ROW.match(text):
        return f"bad {m.group(1)} {m.group(2) or 'id'}"
    if text.startswith("processing failed: "):
        return "processing failed: " + text.split(": ", 2)[1][:40]
    head = text.split(":", 1)[0].strip()
    return _DIGITS.sub("N", head)[:40] or "(no reason)"


def find_problems(
    snap: Snapshot, previous: Snapshot | None = None, limits: Thresholds | None = None
) -> list[Problem]:
    """What needs attention in ``snap``; ``previous`` (an earlier sample) shows growing lags."""
    limits = limits or Thresholds()
    out = [
        Problem(kind="unreachable" if f.unreachable else "error", subject=f.source, text=f.text)
        for f in snap.failures
    ]
    if snap.redis_ok:
        out += _feed_problems(snap, limits)
        out += _stream_problems(snap, previous, limits)
        out += [
            Problem(
                kind="dead-letters",
                subject=d.exchange,
                text=f"{d.count} dead letters in {dead_key(d.exchange)}"
                + (f": {_top_reasons(d.reasons)}" if d.reasons else ""),
            )
            for d in snap.dead_letters
            if d.count
        ]
    for g in snap.gaps or []:
        out.append(
            Problem(
                kind="gaps",
                subject=g.exchange,
                text=f"{g.open} open and {g.backfilling} backfilling gaps, the oldest found "
                f"{fmt_age(g.oldest_s)} ago (tickvault gaps)",
            )
        )
    return out


def _top_reasons(reasons: Mapping[str, int], n: int = 2) -> str:
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{name} ({count})" for name, count in top)


def _feed_problems(snap: Snapshot, limits: Thresholds) -> list[Problem]:
    out = []
    if not snap.feeds:
        return [
            Problem(
                kind="no-heartbeat",
                subject="producer",
                text=f"no producer heartbeat ({FEEDS_PREFIX}*): no producer is running",
            )
        ]
    reported = {f.exchange for f in snap.feeds}
    for exchange in snap.configured:
        if exchange not in reported:
            out.append(
                Problem(
                    kind="no-heartbeat",
                    subject=exchange,
                    text=f"no producer heartbeat reports a feed of {exchange}",
                )
            )
    for f in snap.feeds:
        subject = f"{f.producer} {f.label}"
        if f.heartbeat_age_s > STALE_BEATS * f.every_s:
            text = f"heartbeat {fmt_age(f.heartbeat_age_s)} old: the producer died or is stuck"
            out.append(Problem(kind="stale", subject=subject, text=text))
        elif f.state == "stopped":
            text = "the producer stopped (its last heartbeat)"
            out.append(Problem(kind="stopped", subject=subject, text=text))
        elif f.state != "connected":
            text = f"{f.state}, {f.reconnects_1h} reconnects in the last hour"
            out.append(Problem(kind="down", subject=subject, text=text))
        else:
            silent = f.last_frame_age_s if f.last_frame_age_s is not None else f.connected_s
            if silent is not None and silent > limits.silent_s:
                what = "no frame" if f.last_frame_age_s is None else "last frame"
                text = f"connected, {what} for {fmt_age(silent)} (> {fmt_age(limits.silent_s)})"
                out.append(Problem(kind="silent", subject=subject, text=text))
    return out


def _stream_problems(
    snap: Snapshot, previous: Snapshot | None, limits: Thresholds
) -> list[Problem]:
    out = []
    before: dict[tuple[str, str], float] = {}
    if previous is not None:
        before = {(s.key, g.name): g.behind_s for s in previous.streams for g in s.groups}
    for s in snap.streams:
        if s.length and not s.groups:
            text = f"{s.length} entries and no consumer group: no consumer ever read {s.key}"
            out.append(Problem(kind="no-group", subject=s.exchange, text=text))
        for g in s.groups:
            subject = f"{s.exchange} {g.name}"
            behind = g.behind_s
            was = before.get((s.key, g.name))
            if behind > limits.lag_s:
                text = f"{fmt_age(behind)} behind (> {fmt_age(limits.lag_s)})" + _lag_detail(g)
                out.append(Problem(kind="lag", subject=subject, text=text))
            elif was is not None and behind >= GROWING_MIN_S and behind >= was + GROWING_BY_S:
                text = f"falling behind: {fmt_age(was)} -> {fmt_age(behind)}" + _lag_detail(g)
                out.append(Problem(kind="lag-growing", subject=subject, text=text))
            for c in g.consumers:
                if c.pending and c.idle_s > limits.idle_s:
                    text = (
                        f"consumer {c.name} idle {fmt_age(c.idle_s)} holding {c.pending} "
                        "pending entries (dead? the others claim them)"
                    )
                    out.append(Problem(kind="idle-consumer", subject=subject, text=text))
    return out


def _lag_detail(g: GroupInfo) -> str:
    lag = "?" if g.lag_entries is None else str(g.lag_entries)
    return f" ({lag} entries not delivered, {g.pending} pending)"


def fmt_age(seconds: float | None) -> str:
    """``0.3s``, ``42s``, ``4m05s``, ``2h03m``, ``3d04h``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    if s < 120:
        return f"{s:.0f}s"
    whole = int(s)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 172_800:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def to_document(snap: Snapshot, problems: Sequence[Problem]) -> dict[str, Any]:
    """The ``--json`` document: the snapshot, ``healthy`` and the problems."""
    doc: dict[str, Any] = {
        "healthy": not problems,
        "problems": msgspec.to_builtins(list(problems)),
        "taken_at": dt.datetime.fromtimestamp(snap.taken_ns / 1e9, dt.UTC).isoformat(),
    }
    doc.update(msgspec.to_builtins(snap))
    for stream, data in zip(snap.streams, doc["streams"], strict=True):
        for group, gdata in zip(stream.groups, data["groups"], strict=True):
            gdata["behind_s"] = group.behind_s
    return doc


def render(snap: Snapshot, problems: Sequence[Problem]) -> RenderableType:
    """The rich renderable: a headline, the problems, then one table per part (80 columns)."""
    taken = dt.datetime.fromtimestamp(snap.taken_ns / 1e9).strftime("%H:%M:%S")
    parts: list[RenderableType] = [
        Text.assemble(("tickvault status ", "bold"), taken),
        Text(f"redis {snap.redis}, postgresql {snap.database}", style="dim"),
    ]
    if problems:
        parts.append(Text(f"{len(problems)} problem(s) need attention:", style="bold red"))
        listed = Table.grid(padding=(0, 1))
        listed.add_column(style="bold red", no_wrap=True)
        listed.add_column(overflow="fold")
        for p in problems:
            listed.add_row(" !", Text.assemble((f"{p.subject}: ", "bold"), p.text))
        parts.append(listed)
    else:
        parts.append(Text("healthy: nothing needs attention", style="bold green"))

    def table(title: str, *columns: str) -> Table:
        """Columns named ``>name`` are numbers, right-justified."""
        t = Table(
            title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
            show_edge=False, pad_edge=False,
        )  # fmt: skip
        for name in columns:
            number = name.startswith(">")
            t.add_column(name.lstrip(">"), justify="right" if number else "left", overflow="fold")
        return t

    if snap.redis_ok:
        streams = table("streams", "exchange", ">entries", ">memory", ">oldest", ">newest")
        for s in snap.streams:
            length = str(s.length) if s.exists else "none"
            ages = fmt_age(s.oldest_age_s), fmt_age(s.newest_age_s)
            streams.add_row(s.exchange, length, fmt_bytes(s.memory_bytes), *ages)
        parts += [Text(), streams]
        groups = table("groups", "exchange", "group", ">lag", ">behind", ">pending", "idle")
        for s in snap.streams:
            for g in s.groups:
                lag = "?" if g.lag_entries is None else str(g.lag_entries)
                idle = ", ".join(f"{c.name} {fmt_age(c.idle_s)}" for c in g.consumers) or "none"
                groups.add_row(s.exchange, g.name, lag, fmt_age(g.behind_s), str(g.pending), idle)
        if groups.row_count:
            parts += [Text(), groups]
        feeds = table("feeds", "producer", "feed", "state", ">since", ">last frame", ">reconn/h")
        for f in snap.feeds:
            style = "green" if f.state == "connected" else "red"
            feeds.add_row(
                f.producer,
                f.label,
                Text(f.state, style=style),
                fmt_age(f.connected_s),
                fmt_age(f.last_frame_age_s),
                str(f.reconnects_1h),
            )
        if feeds.row_count:
            parts += [Text(), feeds]
        dead = [d for d in snap.dead_letters if d.count]
        if dead:
            letters = table("dead letters", "exchange", ">count", "reasons (of the newest)")
            for d in dead:
                letters.add_row(d.exchange, str(d.count), _top_reasons(d.reasons, 3))
            parts += [Text(), letters]
    if snap.database_ok:
        symbols = table("trades", "exchange", "symbol", ">last 1 min", ">last 1 h", ">newest")
        for sym in snap.symbols:
            newest = fmt_age(sym.newest_age_s) if sym.newest_age_s is not None else "> 1h"
            symbols.add_row(sym.exchange, sym.symbol, str(sym.rows_1m), str(sym.rows_1h), newest)
        parts += [Text(), symbols]
        if snap.gaps:
            gaps = table("gaps", "exchange", ">open", ">backfilling", ">oldest")
            for gap in snap.gaps:
                counts = str(gap.open), str(gap.backfilling)
                gaps.add_row(gap.exchange, *counts, fmt_age(gap.oldest_s))
            parts += [Text(), gaps]
    return Group(*parts)


# -- gathering (I/O) ------------------------------------------------------------------------------


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
    from .redis_checks import eviction_problems

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


# -- the command ---------------------------------------------------------------------------------


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
