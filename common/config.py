"""Typed, frozen settings: a TOML file (``--config`` or ``TICKVAULT_CONFIG``) plus environment.

``TICKVAULT_REDIS_URL`` and ``TICKVAULT_DATABASE_URL`` override the file's URLs. Unknown keys,
unknown exchanges, channels the venue lacks and malformed symbols fail at start with a
:class:`~common.errors.ConfigError` naming the key and the fix. Passwords in URLs are hidden in
``repr``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from .errors import ConfigError
from .symbols import Symbol, parse_symbol
from .venues import Channel, ConnectionPlan, Venue, all_venues, get_venue

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def hide_password(url: str) -> str:
    """``url`` with its password, also one given as ``?password=`` (or ``ssl_password=``), as
    ``***``."""
    url = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    return re.sub(r"([?&](?:ssl_)?password=)[^&#]*", r"\1***", url)


class _Base(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class RedisSettings(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str = DEFAULT_REDIS_URL
    maxlen: int = 5_000_000  # frames kept per exchange stream (about; see producer.retention)
    retention: str = ""  # and no older than this ("24h", "90m", "7d"); "" keeps by count only

    def __repr__(self) -> str:
        return (
            f"RedisSettings(url={hide_password(self.url)!r}, maxlen={self.maxlen}, "
            f"retention={self.retention!r})"
        )

    @property
    def retention_s(self) -> float | None:
        return parse_duration(self.retention) if self.retention else None


_DURATION = re.compile(r"([1-9][0-9]*)(s|m|h|d)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"24h"``, ``"7d"`` in seconds. Raises ValueError otherwise."""
    m = _DURATION.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a duration like '90s', '15m', '24h' or '7d'")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


class DatabaseSettings(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str = DEFAULT_DATABASE_URL
    retention_days: int = 0  # drop daily partitions older than this (0: keep everything)
    partition_days_ahead: int = 3
    synchronous_commit: bool = True  # off trades the last ~0.6 s of commits on a crash for speed

    def __repr__(self) -> str:
        return (
            f"DatabaseSettings(url={hide_password(self.url)!r}, "
            f"partition_days_ahead={self.partition_days_ahead}, "
            f"retention_days={self.retention_days}, "
            f"synchronous_commit={self.synchronous_commit})"
        )


LINGER_MAX_MS = 1_000.0


class ProducerSettings(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    buffer_frames: int = 200_000  # in-memory frames kept while Redis is unreachable
    buffer_bytes: int = 256 * 2**20  # ... and their bytes at most (a feed of big frames)
    pipeline_max: int = 2_000  # frames per pipelined XADD round trip at most
    linger_ms: float = 2.5  # a frame waits up to this long for others to share its XADD ...
    linger_frames: int = 100  # ... unless this many wait (0 linger_ms: no waiting at all)
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    rollover_overlap_s: float = 10.0  # make-before-break: both connections live this long
    rollover_after_s: float = 0.0  # roll connections over after this long (0: venue's limit)
    fast_frames: bool = True  # cut plain data frames out of the socket (see producer.frames)
    max_frame_bytes: int = 8 * 2**20  # a larger frame ends its connection (from its header)
    silence_s: float = 0.0  # replace a connection silent this long (0: derived, producer.liveness)
    name: str = ""  # default: the host name; names this producer's spill directory
    spill_dir: str = ".tickvault/spill"  # frames Redis cannot take wait here, in <dir>/<name>
    spill_max_bytes: int = 1 << 30
    spill_fsync: str = "1s"  # "always", "never", or an interval such as "200ms" or "1s"
    spill_full: str = "block"  # "block" (stop reading the feeds) or "drop-oldest"
    stop_timeout_s: float = 20.0  # one budget for a stop: below compose's 30 s grace period
    event_loop: str = "auto"  # "uvloop", "asyncio", or "auto": uvloop where it is installed


class ConsumerSettings(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    group: str = "tickvault"
    name: str = ""  # default: <hostname>-<pid>
    batch_entries: int = 5_000  # flush at this many frames (an entry holds one or a run) ...
    batch_ms: int = 50  # ... or this many ms after the batch's first entry
    flush_when_drained: bool = True  # flush as soon as a read finds the stream empty
    block_ms: int = 1_000  # XREADGROUP BLOCK when idle
    claim_idle_ms: int = 30_000  # claim entries pending on another consumer for this long
    claim_every_s: float = 5.0
    max_future_skew_s: float = 10.0  # trade time may be at most this far past its receive time
    backoff_max_s: float = 30.0
    writers: int = 2  # writer threads, each with its own PostgreSQL connection
    max_deliveries: int = 5  # an entry delivered more often is dead-lettered unprocessed
    # a small batch's commit is sent, and its outcome read after the next read (see README)
    defer_commits: bool = True
    stop_timeout_s: float = 20.0  # one budget for a stop: below compose's 30 s grace period


class FeedSettings(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    exchange: str
    symbols: list[str]
    channels: list[str] = msgspec.field(default_factory=lambda: ["trades"])
    url: str | None = None
    rest_url: str | None = None  # the venue's REST API for backfill (default: the real one)
    options: dict[str, str] = msgspec.field(default_factory=dict)


class BackfillSettings(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    auto: bool = True  # consumers detect gaps and backfill them as they appear
    every_s: float = 5.0  # how often a consumer looks for new gaps and open ones
    settle_s: float = 10.0  # stored trades younger than this are not judged yet (late commits)
    lookback: str = "24h"  # the first gap search reaches back this far
    max_attempts: int = 6  # a gap the venue keeps failing is unfillable after this many tries
    timeout_s: float = 10.0  # one REST request


class FlagsSettings(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Abnormal-row checks (``consumer.flags``): rows are flagged, never dropped."""

    enabled: bool = True
    window: int = 64  # recent trades per exchange and symbol for the reference price and size
    min_history: int = 16  # no price or size verdict before this many trades
    price_band: float = 0.10  # a price further than this from the reference (widened: docs)
    rebase_after: int = 3  # outliers in a row on one side: a real move, the reference follows
    size_factor: float = 50.0  # an amount above this many times the recent median amount
    late_s: float = 5.0  # trade time this long before its receive time
    early_s: float = 1.0  # trade time this long after its receive time
    spread_band: float = 0.05  # a quote spread above this fraction of the mid


class _File(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    producer: ProducerSettings = msgspec.field(default_factory=ProducerSettings)
    consumer: ConsumerSettings = msgspec.field(default_factory=ConsumerSettings)
    backfill: BackfillSettings = msgspec.field(default_factory=BackfillSettings)
    flags: FlagsSettings = msgspec.field(default_factory=FlagsSettings)
    feeds: list[FeedSettings] = msgspec.field(default_factory=list)


class Feed(msgspec.Struct, frozen=True, kw_only=True):
    """A checked feed: the venue, its channels and parsed symbols."""

    exchange: str
    channels: tuple[Channel, ...]
    symbols: tuple[Symbol, ...]
    url: str | None
    options: Mapping[str, str]
    rest_url: str | None = None

    @property
    def venue(self) -> Venue:
        return get_venue(self.exchange)

    def plans(self) -> list[ConnectionPlan]:
        return self.venue.plan(
            channels=self.channels, symbols=self.symbols, url=self.url, options=dict(self.options)
        )


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    redis: RedisSettings
    database: DatabaseSettings
    producer: ProducerSettings
    consumer: ConsumerSettings
    feeds: tuple[Feed, ...]
    backfill: BackfillSettings = msgspec.field(default_factory=BackfillSettings)
    flags: FlagsSettings = msgspec.field(default_factory=FlagsSettings)

    def rest_url(self, exchange: str) -> str | None:
        """The configured REST base URL of ``exchange`` (its first feed's), else None."""
        for feed in self.feeds:
            if feed.exchange == exchange and feed.rest_url:
                return feed.rest_url
        return None

    def trade_contexts(self, exchange: str, id_prefix: str | None = None) -> dict[str, str]:
        """Canonical symbol -> the connection context its trades come from: of the feeds whose
        trades are of the id space ``id_prefix`` where one is given (a Binance symbol may have
        a @trade feed in ms and an @aggTrade one in µs), else (or when no feed has that space
        now) of the first feed that has the symbol."""
        if id_prefix is not None:
            own = self._trade_contexts(exchange, id_prefix)
            return {**self._trade_contexts(exchange, None), **own}
        return self._trade_contexts(exchange, None)

    def _trade_contexts(self, exchange: str, id_prefix: str | None) -> dict[str, str]:
        out: dict[str, str] = {}
        for feed in self.feeds:
            if feed.exchange != exchange or Channel.TRADES not in feed.channels:
                continue
            if id_prefix is not None and feed.venue.trade_id_prefix(feed.options) != id_prefix:
                continue
            for plan in feed.plans():
                if Channel.TRADES in plan.channels:
                    for name in plan.symbols:
                        out.setdefault(name, plan.context)
        return out

    @property
    def exchanges(self) -> tuple[str, ...]:
        return tuple(sorted({f.exchange for f in self.feeds}))

    def subscribed(self) -> dict[str, frozenset[str]]:
        """Exchange -> canonical symbols configured for it (for validation)."""
        out: dict[str, set[str]] = {}
        for feed in self.feeds:
            out.setdefault(feed.exchange, set()).update(str(s) for s in feed.symbols)
        return {k: frozenset(v) for k, v in out.items()}

    def symbol_maps(self) -> dict[tuple[str, str], dict[str, str]]:
        """(exchange, connection context) -> {venue symbol: canonical}, from the plans."""
        maps: dict[tuple[str, str], dict[str, str]] = {}
        for feed in self.feeds:
            venue = feed.venue
            for plan in feed.plans():
                target = maps.setdefault((feed.exchange, plan.context), {})
                for name in plan.symbols:
                    target[venue.venue_symbol(parse_symbol(name))] = name
        return maps


def _check_feed(i: int, raw: FeedSettings) -> Feed:
    key = f"feeds[{i}]"
    venues = all_venues()
    if raw.exchange not in venues:
        raise ConfigError(
            f"{key}.exchange",
            f"unknown exchange {raw.exchange!r}",
            f"use one of {', '.join(venues)}",
        )
    venue = venues[raw.exchange]
    channels: list[Channel] = []
    for name in raw.channels:
        try:
            channel = Channel(name)
        except ValueError:
            raise ConfigError(
                f"{key}.channels", f"unknown channel {name!r}", "use 'trades' and/or 'quotes'"
            ) from None
        if channel not in venue.channels:
            raise ConfigError(f"{key}.channels", f"{raw.exchange} has no {name} channel")
        if channel not in channels:
            channels.append(channel)
    if not channels:
        raise ConfigError(f"{key}.channels", "no channel", "list 'trades' and/or 'quotes'")
    if not raw.symbols:
        raise ConfigError(f"{key}.symbols", "no symbol", 'list canonical symbols like "BTC-USDT"')
    symbols: list[Symbol] = []
    for j, text in enumerate(raw.symbols):
        try:
            symbol = parse_symbol(text)
            venue.check_symbol(symbol)
        except ValueError as exc:
            raise ConfigError(f"{key}.symbols[{j}]", str(exc)) from None
        if symbol not in symbols:
            symbols.append(symbol)
    for name, value in raw.options.items():
        allowed = venue.options.get(name)
        if allowed is None:
            known = ", ".join(venue.options) or "none"
            raise ConfigError(
                f"{key}.options.{name}", f"{raw.exchange} has no option {name!r}", f"known: {known}"
            )
        if value not in allowed:
            raise ConfigError(
                f"{key}.options.{name}", f"bad value {value!r}", f"use one of {', '.join(allowed)}"
            )
    if raw.url is not None and not re.match(r"^wss?://[^/\s]+", raw.url):
        raise ConfigError(f"{key}.url", f"{raw.url!r} is not a ws:// or wss:// URL")
    if raw.rest_url is not None and not re.match(r"^https?://[^/\s]+", raw.rest_url):
        raise ConfigError(f"{key}.rest_url", f"{raw.rest_url!r} is not an http(s):// URL")
    feed = Feed(
        exchange=raw.exchange,
        channels=tuple(channels),
        symbols=tuple(symbols),
        url=raw.url,
        options=dict(raw.options),
        rest_url=raw.rest_url,
    )
    try:
        feed.plans()  # a combination the venue cannot serve fails now, not at connect time
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None
    return feed


def parse_fsync(text: str) -> float | None:
    """``producer.spill_fsync``: ``"always"`` -> 0.0, ``"never"`` -> None, an interval such as
    ``"200ms"`` or ``"1s"`` -> seconds. Raises ValueError otherwise."""
    if text == "always":
        return 0.0
    if text == "never":
        return None
    for suffix, scale in (("ms", 0.001), ("s", 1.0)):
        number = text.removesuffix(suffix)
        if number != text and number.isdigit() and int(number) > 0:
            return int(number) * scale
    raise ValueError(f"{text!r} is not 'always', 'never' or an interval like '200ms' or '1s'")


def _check_spill(p: ProducerSettings) -> None:
    try:
        parse_fsync(p.spill_fsync)
    except ValueError as exc:
        raise ConfigError("producer.spill_fsync", str(exc)) from None
    if p.spill_full not in ("block", "drop-oldest"):
        raise ConfigError(
            "producer.spill_full", f"unknown policy {p.spill_full!r}", "use block or drop-oldest"
        )
    if p.spill_max_bytes <= 0:
        raise ConfigError("producer.spill_max_bytes", f"must be positive, got {p.spill_max_bytes}")
    if "/" in p.name or p.name in (".", ".."):
        raise ConfigError("producer.name", f"{p.name!r} cannot name a directory")


def _check_event_loop(p: ProducerSettings) -> None:
    if p.event_loop not in ("auto", "uvloop", "asyncio"):
        raise ConfigError(
            "producer.event_loop",
            f"unknown event loop {p.event_loop!r}",
            "use auto, uvloop or asyncio",
        )
    if p.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ConfigError(
            "producer.event_loop", "uvloop is not installed", "pip install uvloop, or use auto"
        )


def _located(message: str) -> tuple[str, str]:
    """Split msgspec's "... - at `$.feeds[0].x`" into (key, problem)."""
    m = re.search(r"^(.*?)(?: - at `\$\.?(.*)`)?$", message)
    problem, where = (m.group(1), m.group(2)) if m else (message, None)
    field = re.search(r"unknown field `([^`]+)`", problem)
    key = where or ""
    if field:
        key = f"{key}.{field.group(1)}" if key else field.group(1)
    return key or "(top level)", problem


def settings_from_mapping(
    data: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> Settings:
    """Build settings from parsed TOML and the environment."""
    env = os.environ if env is None else env
    try:
        raw = msgspec.convert(dict(data), _File)
    except msgspec.ValidationError as exc:
        key, problem = _located(str(exc))
        raise ConfigError(key, problem, "see the config reference in README.md") from None
    redis = raw.redis
    database = raw.database
    if env.get("TICKVAULT_REDIS_URL"):
        redis = msgspec.structs.replace(redis, url=env["TICKVAULT_REDIS_URL"])
    if env.get("TICKVAULT_DATABASE_URL"):
        database = msgspec.structs.replace(database, url=env["TICKVAULT_DATABASE_URL"])
    # redis-py's reading, which the producer's raw connection shares (common.redis_url): a URL
    # it cannot read, or that would mean something else to one process, fails here; TLS files
    # are loaded once now, not found missing at the first connect.
    from .redis_url import redis_options  # (imports redis-py: not at module level)

    redis_options(redis.url).ssl_context()
    if not database.url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "database.url", f"{hide_password(database.url)!r} is not a postgresql:// URL"
        )
    positive = {
        "redis.maxlen": redis.maxlen,
        "producer.buffer_frames": raw.producer.buffer_frames,
        "producer.buffer_bytes": raw.producer.buffer_bytes,
        "producer.pipeline_max": raw.producer.pipeline_max,
        "producer.linger_frames": raw.producer.linger_frames,
        "consumer.batch_entries": raw.consumer.batch_entries,
        "consumer.batch_ms": raw.consumer.batch_ms,
        "consumer.claim_idle_ms": raw.consumer.claim_idle_ms,
        "consumer.writers": raw.consumer.writers,
        "consumer.max_deliveries": raw.consumer.max_deliveries,
        "consumer.stop_timeout_s": raw.consumer.stop_timeout_s,
        "producer.stop_timeout_s": raw.producer.stop_timeout_s,
        "producer.max_frame_bytes": raw.producer.max_frame_bytes,
        "backfill.every_s": raw.backfill.every_s,
        "backfill.max_attempts": raw.backfill.max_attempts,
        "backfill.timeout_s": raw.backfill.timeout_s,
        "flags.window": raw.flags.window,
        "flags.rebase_after": raw.flags.rebase_after,
        "flags.price_band": raw.flags.price_band,
        "flags.size_factor": raw.flags.size_factor,
        "flags.late_s": raw.flags.late_s,
        "flags.early_s": raw.flags.early_s,
        "flags.spread_band": raw.flags.spread_band,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(key, f"must be positive, got {value}")
    if raw.producer.buffer_bytes < raw.producer.max_frame_bytes:
        raise ConfigError(
            "producer.buffer_bytes",
            f"{raw.producer.buffer_bytes} is less than producer.max_frame_bytes "
            f"({raw.producer.max_frame_bytes}): a frame the feeds accept could never be kept",
            "raise it, or lower producer.max_frame_bytes",
        )
    for key, value in {
        "producer.linger_ms": raw.producer.linger_ms,
    }.items():
        if not 0 <= value <= LINGER_MAX_MS:  # (NaN too)
            raise ConfigError(
                key, f"must be between 0 and {LINGER_MAX_MS} ms, got {value}",
                "a few ms at most: every frame may wait this long",
            )  # fmt: skip
    if not raw.producer.silence_s >= 0:  # (NaN too)
        raise ConfigError(
            "producer.silence_s", f"must be 0 or positive, got {raw.producer.silence_s}",
            "0 derives the threshold from each feed",
        )  # fmt: skip
    _check_spill(raw.producer)
    _check_event_loop(raw.producer)
    try:
        redis.retention_s  # noqa: B018  (parsed here so that a typo fails at start)
    except ValueError as exc:
        raise ConfigError("redis.retention", str(exc), 'e.g. "24h"') from None
    try:
        if parse_duration(raw.backfill.lookback) <= 0:
            raise ValueError("must be positive")
    except ValueError as exc:
        raise ConfigError("backfill.lookback", str(exc), 'e.g. "24h"') from None
    if raw.database.retention_days < 0:
        raise ConfigError(
            "database.retention_days", f"must be 0 (keep all) or positive, got "
            f"{raw.database.retention_days}",
        )  # fmt: skip
    if not raw.backfill.settle_s >= 0:
        settle = raw.backfill.settle_s
        raise ConfigError("backfill.settle_s", f"must be 0 or positive, got {settle}")
    return Settings(
        redis=redis,
        database=database,
        producer=raw.producer,
        consumer=raw.consumer,
        feeds=tuple(_check_feed(i, f) for i, f in enumerate(raw.feeds)),
        backfill=raw.backfill,
        flags=raw.flags,
    )


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Load settings from ``path`` (or ``TICKVAULT_CONFIG``; no file: defaults) and env."""
    env = os.environ if env is None else env
    path = path or env.get("TICKVAULT_CONFIG") or None
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError("--config", f"no such file {str(path)!r}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{path}: invalid TOML: {exc}") from None
    return settings_from_mapping(data, env)
