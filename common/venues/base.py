"""The venue interface: what one exchange module provides, pure and free of sockets.

A venue module (``common/venues/<name>.py``) defines a subclass of :class:`Venue` and an instance
named ``VENUE``; the registry finds it by itself. The producer asks the venue for a
:class:`ConnectionPlan` per connection (URL, subscribe messages, keepalive, lifetime) and never
parses frames. The consumer calls :meth:`Venue.parse` on each raw frame with a
:class:`FrameContext` and gets back normalised :class:`~common.records.Trade` and
:class:`~common.records.Quote` rows, or a control kind (acks, heartbeats, pongs, unknown events:
acked and counted), or :class:`~common.errors.PoisonFrame` for a frame that is malformed.

Invariants every venue keeps:
- parse by the message's own type fields, never by what we believe we subscribed to;
- prices and amounts are the venue's exact decimal text (``msgspec.Raw`` for JSON numbers, never a
  float); times are integer ns UTC at the precision the venue gives;
- ``side`` is the taker side with the venue doc cited, else ``None``;
- a trade without a venue id gets a deterministic id from the frame (so replays deduplicate).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import ClassVar, TypeVar

import msgspec

from ..errors import PoisonFrame
from ..records import Quote, Trade
from ..symbols import Kind, Symbol


class Channel(StrEnum):
    TRADES = "trades"
    QUOTES = "quotes"


@dataclass(frozen=True, slots=True, kw_only=True)
class Keepalive:
    """How a connection is kept alive, as the venue documents it.

    Attributes:
        protocol_ping_s: interval of WebSocket ping frames WE send (None: only answer the server's;
            the websockets library always answers server pings with the same payload).
        app_ping: an application-level ping message we send (OKX ``"ping"``), or None.
        app_ping_s: interval for ``app_ping``.
        silence_s: the venue's heartbeat bound: with a heartbeat (or a pong to our ping) a live
            connection is never silent this long, so the watchdog replaces one that is; None:
            no heartbeat, the threshold is derived from the feed's own pace
            (``producer.liveness``). ``producer.silence_s`` overrides both.
    """

    protocol_ping_s: float | None = 20.0
    app_ping: str | None = None
    app_ping_s: float = 20.0
    silence_s: float | None = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionPlan:
    """One WebSocket connection: where, what to send after connecting, how to keep it."""

    url: str
    subscribe: tuple[str | bytes, ...]
    symbols: tuple[str, ...]  # canonical symbols served by this connection
    channels: tuple[Channel, ...]
    context: str = ""  # copied into every envelope; tells parse() what the frame cannot
    subscribe_interval_s: float = 0.0  # pause between subscribe messages (venue rate limits)
    keepalive: Keepalive = field(default_factory=Keepalive)
    max_lifetime_s: float | None = None  # the venue closes connections after this: roll over first
    name: str = ""  # short label for logs ("binance/0")


class FrameContext(msgspec.Struct, frozen=True, gc=False):
    """What the consumer knows about a frame besides its bytes (a Struct: cheap to build)."""

    exchange: str
    context: str
    recv_ns: int
    # the frame's name in the stream (``<entry id>`` or ``<entry id>/<index>``), for messages;
    # never part of a row's id: a requeue or replay carries the same frame under a new entry id
    entry_id: str
    # venue symbol -> canonical symbol for what this connection context subscribes; lets venues
    # whose names have no separator (BTCUSDT) map back without guessing.
    symbols: Mapping[str, str] = msgspec.field(default_factory=dict)


class Parsed(msgspec.Struct):
    """The result of parsing one frame."""

    trades: list[Trade] = msgspec.field(default_factory=list)
    quotes: list[Quote] = msgspec.field(default_factory=list)
    control: str | None = None  # "ack", "heartbeat", "pong", "error", "unknown:<type>", ...

    @staticmethod
    def of_control(kind: str) -> Parsed:
        return Parsed(control=kind)


class Venue(abc.ABC):
    """One exchange. Subclasses set the class attributes and implement the methods."""

    exchange: ClassVar[str]  # exchange id used in config, streams and rows
    title: ClassVar[str]
    default_url: ClassVar[str]  # scheme://host[:port]; the venue appends its own paths
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.TRADES, Channel.QUOTES})
    kinds: ClassVar[frozenset[Kind]] = frozenset({Kind.SPOT})
    limits: ClassVar[str] = ""  # one line for `tickvault venues`
    caveats: ClassVar[str] = ""
    # Trade ids are consecutive integers per symbol, so a missing id is a missing trade
    # (``tickvault gaps`` checks these venues).
    consecutive_ids: ClassVar[bool] = False
    # The id spaces of its trade_ids, each consecutive on its own: '' is plain ids; a prefix
    # names another (Binance spot's "agg-" rows of @aggTrade). ``consumer.gaps`` checks each.
    id_prefixes: ClassVar[tuple[str, ...]] = ("",)
    options: ClassVar[dict[str, tuple[str, ...]]] = {}  # option name -> allowed values

    def trade_id_prefix(self, options: Mapping[str, str]) -> str:
        """The id space (one of ``id_prefixes``) of the trades a feed with ``options`` stores."""
        return ""

    def base_url(self, url: str | None) -> str:
        """The configured URL override, else the default: scheme://host[:port], no slash."""
        return (url or self.default_url).rstrip("/")

    def check_symbol(self, symbol: Symbol) -> None:
        """Raise ``ValueError`` if this venue cannot serve ``symbol``."""
        if symbol.kind not in self.kinds:
            kinds = ", ".join(sorted(k.value for k in self.kinds))
            raise ValueError(f"{self.exchange} serves {kinds} symbols, not {symbol.kind.value}")

    @abc.abstractmethod
    def venue_symbol(self, symbol: Symbol) -> str:
        """Canonical -> the venue's name for the instrument."""

    @abc.abstractmethod
    def plan(
        self,
        *,
        channels: Sequence[Channel],
        symbols: Sequence[Symbol],
        url: str | None,
        options: dict[str, str],
    ) -> list[ConnectionPlan]:
        """The connections that serve ``channels`` x ``symbols``, respecting the venue's limits."""

    @abc.abstractmethod
    def parse(self, frame: bytes, ctx: FrameContext) -> Parsed:
        """Normalise one raw frame. Raises PoisonFrame when the frame is malformed."""

    def reply(self, frame: bytes) -> str | None:
        """An answer the producer must send to this frame (a server application ping), if any.

        Called by the producer on every frame, so it must be a cheap check, not a parse.
        """
        return None


T = TypeVar("T")


# What decoding bytes with a msgspec decoder raises for bad input: not JSON, not UTF-8, not of the
# decoder's shape (``msgspec.ValidationError`` is a ``DecodeError``), or nested deeper than the
# interpreter's recursion limit: msgspec then raises ``RecursionError`` ("maximum recursion depth
# exceeded while deserializing an object"), even while skipping a value into ``msgspec.Raw``.
DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def decode_frame(decoder: msgspec.json.Decoder[T], frame: bytes, exchange: str) -> T:
    """``decoder.decode(frame)``; any of :data:`DECODE_ERRORS` becomes a PoisonFrame."""
    try:
        return decoder.decode(frame)
    except DECODE_ERRORS as exc:
        raise decode_error(exchange, exc) from None


def decode_error(exchange: str, exc: Exception) -> PoisonFrame:
    """A PoisonFrame for one of :data:`DECODE_ERRORS` raised while decoding a frame."""
    if isinstance(exc, RecursionError):
        return PoisonFrame(f"{exchange}: undecodable frame: nested too deeply ({exc})")
    return PoisonFrame(f"{exchange}: undecodable frame: {exc}")


def raw_decimal(raw: msgspec.Raw) -> str:
    """The exact text of a JSON number (or quoted number) kept as ``msgspec.Raw``."""
    text = bytes(raw).decode()
    if text.startswith('"'):
        text = text[1:-1]
    return text


def chunks(items: Sequence[str], size: int) -> list[list[str]]:
    """Split ``items`` into lists of at most ``size``."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def ms_to_ns(ms: int) -> int:
    return ms * 1_000_000


def epoch_int(value: int | str, name: str) -> int:
    """An epoch time sent as a JSON number or as a string of ASCII digits, as an int in the unit
    the venue documents (never guessed from its size: a time in year 9999 in ms is as large as
    one in 2286 in µs, so that choice belongs to the caller).

    Raises:
        ValueError: a string that is not all ASCII digits ("", "-1", "1e3", " 1", "1_000", "²"),
            or more digits than ``int()`` converts.
    """
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise ValueError(f"{name} is not an epoch number: {value[:40]!r}")
        return int(value)
    return value


# Quote assets tried, longest first, when a venue writes symbols without a separator (BTCUSDT)
# and the symbol is not in the subscribed map.
COMMON_QUOTES = (
    "FDUSD",
    "USDT",
    "USDC",
    "TUSD",
    "BUSD",
    "USDE",
    "DAI",
    "USD",
    "EUR",
    "GBP",
    "TRY",
    "BRL",
    "JPY",
    "KRW",
    "BTC",
    "ETH",
    "BNB",
)


def split_concatenated(venue_symbol: str, quotes: Sequence[str] = COMMON_QUOTES) -> tuple[str, str]:
    """``BTCUSDT`` -> ``("BTC", "USDT")`` by the longest known quote suffix.

    Raises:
        ValueError: no known quote asset ends the symbol.
    """
    upper = venue_symbol.upper()
    for quote in sorted(quotes, key=len, reverse=True):
        if upper.endswith(quote) and len(upper) > len(quote):
            return upper[: -len(quote)], quote
    raise ValueError(f"cannot split {venue_symbol!r} into base and quote")


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:[Zz]|([+-])(\d{2}):(\d{2}))",
    re.ASCII,  # \d: 0-9 only
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def civil_seconds(
    text: str, year: str, month: str, day: str, hour: str, minute: str, second: str
) -> int:
    """Seconds since the epoch of a date and time of day given as digit strings, by integer
    arithmetic (no ``datetime`` arithmetic that overflows near year 1 or 9999).

    Raises:
        ValueError: an impossible date or time of day (``text`` names it).
    """
    h, m, s = int(hour), int(minute), int(second)
    if h > 23 or m > 59 or s > 59:
        raise ValueError(f"impossible time of day: {text!r}")
    try:
        days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
    except ValueError as exc:
        raise ValueError(f"impossible date: {text!r} ({exc})") from None
    return days * 86_400 + h * 3_600 + m * 60 + s


def rfc3339_ns(text: str) -> int:
    """An RFC 3339 date-time (``2023-02-09T20:30:37.167359596Z``) as int ns UTC, exactly.

    Integer arithmetic only: up to nine fraction digits survive unrounded.

    Raises:
        ValueError: not an RFC 3339 date-time, or an impossible date or time.
    """
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    seconds = civil_seconds(text, *m.groups()[:6])
    sign, off_h, off_m = m.group(8), m.group(9), m.group(10)
    if sign is not None:
        offset = int(off_h) * 3_600 + int(off_m) * 60
        seconds -= offset if sign == "+" else -offset
    fraction = (m.group(7) or "").ljust(9, "0")
    return seconds * 1_000_000_000 + int(fraction)
