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
        silence_s: reconnect when no frame at all arrived for this long (the watchdog).
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
    entry_id: str  # the stream id: a stable base for derived ids
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
    options: ClassVar[dict[str, tuple[str, ...]]] = {}  # option name -> allowed values

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


def decode_frame(decoder: msgspec.json.Decoder[T], frame: bytes, exchange: str) -> T:
    """``decoder.decode(frame)``; a frame that is not JSON, not UTF-8, or not of the decoder's
    shape (``msgspec.ValidationError`` is a ``DecodeError``) is a PoisonFrame."""
    try:
        return decoder.decode(frame)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise decode_error(exchange, exc) from None


def decode_error(exchange: str, exc: Exception) -> PoisonFrame:
    """A PoisonFrame for a msgspec/Unicode/Value error raised while decoding a frame."""
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


def epoch_to_ns(value: int) -> int:
    """An epoch integer in s, ms, us or ns (told apart by magnitude) as ns.

    Binance switches to microseconds with ``timeUnit=MICROSECOND``; the frame does not say which.
    Any date between 2001 and 2286 is unambiguous by magnitude.
    """
    if value >= 10**17:
        return value  # ns
    if value >= 10**14:
        return value * 1_000  # us
    if value >= 10**11:
        return value * 1_000_000  # ms
    return value * 1_000_000_000  # s


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
    r"(?:[Zz]|([+-])(\d{2}):(\d{2}))"
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def rfc3339_ns(text: str) -> int:
    """An RFC 3339 date-time (``2023-02-09T20:30:37.167359596Z``) as int ns UTC, exactly.

    Integer arithmetic only: up to nine fraction digits survive unrounded.

    Raises:
        ValueError: not an RFC 3339 date-time, or an impossible date or time.
    """
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"impossible time of day: {text!r}")
    days = date(year, month, day).toordinal() - _EPOCH_ORDINAL  # ValueError on a bad date
    seconds = days * 86_400 + hour * 3_600 + minute * 60 + second
    sign, off_h, off_m = m.group(8), m.group(9), m.group(10)
    if sign is not None:
        offset = int(off_h) * 3_600 + int(off_m) * 60
        seconds -= offset if sign == "+" else -offset
    fraction = (m.group(7) or "").ljust(9, "0")
    return seconds * 1_000_000_000 + int(fraction)
