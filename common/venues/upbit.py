"""Upbit (``upbit``): ``trade`` and ``orderbook`` on the quotation WebSocket.

Docs: https://docs.upbit.com/kr/reference/websocket-guide (request, errors, formats),
https://docs.upbit.com/kr/reference/websocket-trade, https://docs.upbit.com/kr/reference/websocket-orderbook,
https://docs.upbit.com/reference/connection (keepalive), https://docs.upbit.com/kr/reference/rate-limits.
- Endpoint ``wss://api.upbit.com/websocket/v1``. One request, a JSON array
  ``[{"ticket": ...}, {"type": "trade", "codes": [...]}, {"type": "orderbook", "codes": [...]},
  {"format": "DEFAULT"}]``. There is no acknowledgement: data simply starts. A bad request gets
  ``{"error": {"name": "WRONG_FORMAT", "message": ...}}``.
- Frames are BINARY WebSocket frames holding JSON text. ``format`` picks the keys: ``DEFAULT``
  (``trade_price``...), ``SIMPLE`` (``tp``...); ``JSON_LIST`` / ``SIMPLE_LIST`` (added 2025-07-07)
  wrap the objects in a JSON array. All four parse here, frame by frame.
- Market codes are QUOTE-BASE: ``KRW-BTC`` is canonical ``BTC-KRW``.
- Prices and volumes are JSON numbers: kept as their exact text (``100473000.00000000``).
- ``ask_bid``: "매수/매도 구분, ASK: 매도, BID: 매수". We store it as the TAKER side: the docs'
  own examples carry the best bid/ask at the trade (since 2024-11-27) and show BID trades printing
  at ``best_ask_price`` and ASK trades at ``best_bid_price``, i.e. the side that took liquidity.
- Times: ``trade_timestamp`` "체결 타임스탬프(ms)" and the orderbook's ``timestamp``
  "타임스탬프(ms)", both Long (https://docs.upbit.com/kr/reference/websocket-trade,
  https://docs.upbit.com/kr/reference/websocket-orderbook): milliseconds, whatever their size.
- ``sequential_id`` "체결 번호 (Unique)" is the trade id; "it does not guarantee trade order".
  ``stream_type`` ``SNAPSHOT`` replays the last trade on subscribe: stored like any other,
  deduplicated downstream by the natural key.
- ``orderbook``: the best level is ``orderbook_units[0]``; there is no book sequence, so a quote's
  ``update_id`` is ``<timestamp>-<hash of the best level>`` (deterministic for replays).
- Keepalive: "약 120초가 경과하면 Idle Timeout으로 WebSocket Connection을 종료" (no data for about
  120 s closes the connection); the server answers protocol PING frames, and a text ``PING`` gets
  ``{"status":"UP"}`` (then every 10 s). We send both: protocol pings detect dead TCP, ``PING``
  keeps a quiet connection chatty so the silence watchdog cannot fire on an idle market.
- Limits: ``websocket-connect`` 5/s per IP, ``websocket-message`` 5/s and 100/min per connection.
  No documented cap on codes per request; we keep ``CODES_PER_CONNECTION`` markets per connection.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from hashlib import blake2b
from typing import ClassVar

import msgspec

from ..errors import PoisonFrame
from ..records import Quote, Trade
from ..symbols import Kind, Symbol, canonical_asset
from .base import (
    Channel,
    ConnectionPlan,
    FrameContext,
    Keepalive,
    Parsed,
    Venue,
    chunks,
    decode_error,
    decode_frame,
    epoch_int,
    raw_decimal,
)

CODES_PER_CONNECTION = 100  # our own budget: Upbit documents no cap
SUBSCRIBE_INTERVAL_S = 0.25  # websocket-message: 5 per second per connection
FORMATS = ("DEFAULT", "SIMPLE", "JSON_LIST", "SIMPLE_LIST")

# A JSON number (or a quoted one): what a price or an amount must look like.
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", re.ASCII)
# "ASK: 매도, BID: 매수": the side that took liquidity (see the module docstring).
_SIDES = {"ASK": "sell", "BID": "buy"}


class _Error(msgspec.Struct, frozen=True):
    name: str | None = None
    message: str | None = None


class Head(msgspec.Struct):
    """Just enough of an object frame to know what it is (DEFAULT ``type`` or SIMPLE ``ty``)."""

    type: str | None = None
    ty: str | None = None
    error: _Error | None = None
    status: str | None = None
    method: str | None = None  # LIST_SUBSCRIPTIONS replies
    mthd: str | None = None


class WireTrade(msgspec.Struct, frozen=True):
    """``trade``, DEFAULT format."""

    code: str
    trade_price: msgspec.Raw
    trade_volume: msgspec.Raw
    ask_bid: str
    trade_timestamp: int | str
    sequential_id: int | str
    stream_type: str | None = None


class WireTradeSimple(msgspec.Struct, frozen=True):
    """``trade``, SIMPLE format (abbreviated keys)."""

    cd: str
    tp: msgspec.Raw
    tv: msgspec.Raw
    ab: str
    ttms: int | str
    sid: int | str
    st: str | None = None


class WireUnit(msgspec.Struct, frozen=True):
    ask_price: msgspec.Raw
    bid_price: msgspec.Raw
    ask_size: msgspec.Raw
    bid_size: msgspec.Raw


class WireOrderbook(msgspec.Struct, frozen=True):
    """``orderbook``, DEFAULT format."""

    code: str
    timestamp: int | str
    orderbook_units: list[WireUnit]
    stream_type: str | None = None


class WireUnitSimple(msgspec.Struct, frozen=True):
    ap: msgspec.Raw
    bp: msgspec.Raw
    as_: msgspec.Raw = msgspec.field(name="as")
    bs: msgspec.Raw


class WireOrderbookSimple(msgspec.Struct, frozen=True):
    """``orderbook``, SIMPLE format."""

    cd: str
    tms: int | str
    obu: list[WireUnitSimple]
    st: str | None = None


_head = msgspec.json.Decoder(Head)
_items = msgspec.json.Decoder(list[msgspec.Raw])
_trade = msgspec.json.Decoder(WireTrade)
_trade_simple = msgspec.json.Decoder(WireTradeSimple)
_book = msgspec.json.Decoder(WireOrderbook)
_book_simple = msgspec.json.Decoder(WireOrderbookSimple)


def number(raw: msgspec.Raw, name: str) -> str:
    """The exact text of a JSON number field; ValueError when it is not a number."""
    text = raw_decimal(raw)
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"{name} is not a number: {text!r}")
    return text


def epoch_ms_ns(value: int | str, name: str) -> int:
    """An epoch time in ms (a number or a numeric string) as ns; ValueError when not positive."""
    ms = epoch_int(value, name)
    if ms <= 0:
        raise ValueError(f"{name} is not a positive epoch number: {ms}")
    return ms * 1_000_000


class Upbit(Venue):
    exchange = "upbit"
    title = "Upbit (KRW markets)"
    default_url = "wss://api.upbit.com"
    kinds = frozenset({Kind.SPOT})
    limits = "5 connects/s/IP; 5 requests/s and 100/min per connection; 120 s idle timeout"
    caveats = (
        "binary frames; QUOTE-BASE codes (KRW-BTC); prices are JSON numbers kept as exact text; "
        "quote update_id is derived (timestamp + best-level hash)"
    )
    options: ClassVar[dict[str, tuple[str, ...]]] = {"format": FORMATS}
    path: ClassVar[str] = "/websocket/v1"
    ticket_prefix: ClassVar[str] = "tickvault-upbit"
    sides: ClassVar[dict[str, str]] = _SIDES

    # -- symbols -------------------------------------------------------------------------------
    def venue_symbol(self, symbol: Symbol) -> str:
        return f"{symbol.quote}-{symbol.base}"

    def canonical(self, code: str, ctx: FrameContext) -> str:
        known = ctx.symbols.get(code)
        if known is not None:
            return known
        quote, sep, base = code.partition("-")
        if not sep or not base:
            return code  # validation reports it as not subscribed
        return f"{canonical_asset(base)}-{canonical_asset(quote)}"

    # -- plan ----------------------------------------------------------------------------------
    def plan(
        self,
        *,
        channels: Sequence[Channel],
        symbols: Sequence[Symbol],
        url: str | None,
        options: dict[str, str],
    ) -> list[ConnectionPlan]:
        base = self.base_url(url)
        return self.plan_requests(
            f"{base}{self.path}", channels, symbols, options.get("format", "DEFAULT"), context=""
        )

    def plan_requests(
        self,
        url: str,
        channels: Sequence[Channel],
        symbols: Sequence[Symbol],
        fmt: str,
        *,
        context: str,
    ) -> list[ConnectionPlan]:
        """One connection per ``CODES_PER_CONNECTION`` markets, one request each."""
        plans = []
        names = [str(s) for s in symbols]
        for n, group in enumerate(chunks(names, CODES_PER_CONNECTION)):
            members = set(group)
            codes = [self.venue_symbol(s) for s in symbols if str(s) in members]
            request: list[dict[str, object]] = [{"ticket": f"{self.ticket_prefix}-{n}"}]
            if Channel.TRADES in channels:
                request.append({"type": "trade", "codes": codes})
            if Channel.QUOTES in channels:
                request.append({"type": "orderbook", "codes": codes})
            request.append({"format": fmt})
            plans.append(
                ConnectionPlan(
                    url=url,
                    subscribe=(msgspec.json.encode(request).decode(),),
                    symbols=tuple(group),
                    channels=tuple(channels),
                    context=context,
                    subscribe_interval_s=SUBSCRIBE_INTERVAL_S,
                    # 120 s idle timeout: protocol pings every 30 s; text PING every 30 s makes
                    # the server send {"status":"UP"}, so silence means a dead connection.
                    keepalive=Keepalive(
                        protocol_ping_s=30.0, app_ping="PING", app_ping_s=30.0, silence_s=90.0
                    ),
                    name=f"{self.exchange}{'/' + context if context else ''}/{n}",
                )
            )
        return plans

    # -- parse ---------------------------------------------------------------------------------
    def parse(self, frame: bytes, ctx: FrameContext) -> Parsed:
        first = frame[:1]
        if first == b"[" or (first.isspace() and frame.lstrip()[:1] == b"["):
            return self._parse_list(frame, ctx)
        return self.parse_object(frame, ctx)

    def _parse_list(self, frame: bytes, ctx: FrameContext) -> Parsed:
        """``JSON_LIST`` / ``SIMPLE_LIST``: an array of the objects the other formats send."""
        items = decode_frame(_items, frame, self.exchange)
        out = Parsed()
        controls = []
        for item in items:
            parsed = self.parse_object(bytes(item), ctx)
            out.trades.extend(parsed.trades)
            out.quotes.extend(parsed.quotes)
            if parsed.control is not None:
                controls.append(parsed.control)
        if not out.trades and not out.quotes:
            out.control = controls[0] if controls else "unknown:empty-list"
        return out

    def parse_object(self, frame: bytes, ctx: FrameContext) -> Parsed:
        head = decode_frame(_head, frame, self.exchange)
        kind = head.type if head.type is not None else head.ty
        if kind is None:
            return self.parse_untyped(head, frame)
        try:
            if kind == "trade":
                return Parsed(trades=[self._trade(frame, simple=head.type is None, ctx=ctx)])
            if kind == "orderbook":
                quote = self._quote(frame, simple=head.type is None, ctx=ctx)
                if quote is None:
                    return Parsed.of_control("empty:orderbook")
                return Parsed(quotes=[quote])
        except (msgspec.ValidationError, ValueError) as exc:
            raise PoisonFrame(f"{self.exchange}: bad {kind} message: {exc}") from None
        except msgspec.DecodeError as exc:
            raise decode_error(self.exchange, exc) from None
        return self.parse_other(kind, frame, ctx)

    def parse_untyped(self, head: Head, frame: bytes) -> Parsed:
        """A frame without a data type: an error, a keepalive reply or an operation reply."""
        if head.error is not None:
            return Parsed.of_control("error")
        if head.status == "UP":
            return Parsed.of_control("pong")  # the answer to our text PING
        if head.method is not None or head.mthd is not None:
            return Parsed.of_control("ack")  # LIST_SUBSCRIPTIONS
        raise PoisonFrame(f"{self.exchange}: frame has neither a type nor an error")

    def parse_other(self, kind: str, frame: bytes, ctx: FrameContext) -> Parsed:
        """A data type this venue does not store (ticker, candle...): counted, not stored."""
        return Parsed.of_control(f"unknown:{kind}")

    def book_time_ns(self, stamp: int | str) -> int:
        """The orderbook ``timestamp`` as ns: "타임스탬프(ms)"."""
        return epoch_ms_ns(stamp, "timestamp")

    def _trade(self, frame: bytes, *, simple: bool, ctx: FrameContext) -> Trade:
        if simple:
            s = _trade_simple.decode(frame)
            code, price, volume, ask_bid, stamp, seq = s.cd, s.tp, s.tv, s.ab, s.ttms, s.sid
        else:
            t = _trade.decode(frame)
            code, price, volume = t.code, t.trade_price, t.trade_volume
            ask_bid, stamp, seq = t.ask_bid, t.trade_timestamp, t.sequential_id
        trade_id = str(seq)
        if not trade_id:
            raise ValueError("empty sequential_id")
        return Trade(
            exchange=self.exchange,
            symbol=self.canonical(code, ctx),
            trade_id=trade_id,
            price=number(price, "trade_price"),
            amount=number(volume, "trade_volume"),
            side=self.sides.get(ask_bid),
            ts_ns=epoch_ms_ns(stamp, "trade_timestamp"),
            recv_ns=ctx.recv_ns,
        )

    def _quote(self, frame: bytes, *, simple: bool, ctx: FrameContext) -> Quote | None:
        if simple:
            s = _book_simple.decode(frame)
            if not s.obu:
                return None
            u = s.obu[0]
            code, stamp = s.cd, s.tms
            raws = (u.bp, u.bs, u.ap, u.as_)
        else:
            b = _book.decode(frame)
            if not b.orderbook_units:
                return None
            top = b.orderbook_units[0]
            code, stamp = b.code, b.timestamp
            raws = (top.bid_price, top.bid_size, top.ask_price, top.ask_size)
        bid, bid_size, ask, ask_size = (
            number(r, n)
            for r, n in zip(raws, ("bid_price", "bid_size", "ask_price", "ask_size"), strict=True)
        )
        ts_ns = self.book_time_ns(stamp)
        digest = blake2b(f"{bid}|{bid_size}|{ask}|{ask_size}".encode(), digest_size=6).hexdigest()
        return Quote(
            exchange=self.exchange,
            symbol=self.canonical(code, ctx),
            update_id=f"{stamp}-{digest}",
            bid_price=bid,
            bid_amount=bid_size,
            ask_price=ask,
            ask_amount=ask_size,
            ts_ns=ts_ns,
            recv_ns=ctx.recv_ns,
        )


VENUE = Upbit()
