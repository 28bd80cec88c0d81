"""Binance spot (``binance``): ``<sym>@trade`` / ``@aggTrade`` and ``<sym>@bookTicker``.

Docs: https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams
- Endpoint ``wss://stream.binance.com:9443``; we use the combined path ``/stream`` and SUBSCRIBE
  requests, so every event arrives wrapped as ``{"stream": ..., "data": ...}``. Raw ``/ws``
  events (no wrapper) parse the same way.
- "A single connection is only valid for 24 hours": the producer rolls over before that.
- "The websocket server will send a ping frame every 20 seconds"; the websockets library answers
  with a pong carrying the same payload. Limits: 5 incoming messages per second (pings, pongs and
  subscribe requests count), 1024 streams per connection.
- Trade: ``m`` "Is the buyer the market maker?": true means the seller was the taker.
- ``bookTicker`` (spot) carries no time: the quote's ts is the receive time; ``u`` is the order
  book update id, our quote key.
- Time unit: "All time and timestamp related fields are milliseconds by default. To receive the
  information in microseconds, please add the parameter timeUnit=MICROSECOND or
  timeUnit=microsecond in the URL" (General WSS information). The frame does not say which, and
  a value's size cannot (a time in year 9999 in ms is a plausible one in µs), so the feed option
  ``time_unit`` chooses: ``"microsecond"`` appends ``?timeUnit=MICROSECOND`` to the URL and sets
  the connection context ``"microsecond"``; the default context ``""`` means milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import msgspec

from ..errors import PoisonFrame
from ..records import Quote, Trade
from ..symbols import Kind, Symbol
from .base import (
    DECODE_ERRORS,
    Channel,
    ConnectionPlan,
    FrameContext,
    Keepalive,
    Parsed,
    Venue,
    chunks,
    decode_error,
    decode_frame,
    split_concatenated,
)

STREAMS_PER_CONNECTION = 1000  # documented cap 1024
PARAMS_PER_SUBSCRIBE = 200
SUBSCRIBE_INTERVAL_S = 0.25  # 4 messages/s, under the 5/s incoming limit
LIFETIME_S = 23.5 * 3600  # Binance closes connections after 24 h
# options.time_unit value -> connection context; "" (milliseconds) is every older stream's context.
MILLISECOND = "millisecond"
MICROSECOND = "microsecond"
TIME_UNIT_CONTEXTS = {MILLISECOND: "", MICROSECOND: MICROSECOND}


class _Head(msgspec.Struct):
    """Just enough of a frame to know what it is."""

    stream: str | None = None
    data: msgspec.Raw = msgspec.Raw()  # empty when absent
    e: str | None = None
    u: int | None = None
    result: msgspec.Raw = msgspec.Raw()
    id: int | str | None = None
    code: int | None = None
    msg: str | None = None
    error: msgspec.Raw = msgspec.Raw()


class _Type(msgspec.Struct):
    e: str | None = None
    u: int | None = None


class WireTrade(msgspec.Struct, frozen=True):
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool


class WireAggTrade(msgspec.Struct, frozen=True):
    s: str
    a: int
    p: str
    q: str
    T: int
    m: bool


class WireBookTicker(msgspec.Struct, frozen=True):
    u: int
    s: str
    b: str
    B: str
    a: str
    A: str
    # USD-M futures add event and transaction times; spot has neither.
    E: int | None = None
    T: int | None = None


class _Event(msgspec.Struct, frozen=True):
    """Every field of the events we store, all optional: one decode for the hot path."""

    e: str | None = None
    E: int | None = None
    s: str | None = None
    t: int | None = None
    p: str | None = None
    q: str | None = None
    T: int | None = None
    m: bool | None = None
    a: int | str | None = None  # aggTrade id (int) or bookTicker best ask (str)
    u: int | None = None
    b: str | None = None
    B: str | None = None
    A: str | None = None


class _Frame(_Event, frozen=True):
    """A raw event, or the combined-stream wrapper around one."""

    stream: str | None = None
    data: _Event | None = None


_frame = msgspec.json.Decoder(_Frame)
_head = msgspec.json.Decoder(_Head)
_type = msgspec.json.Decoder(_Type)
_trade = msgspec.json.Decoder(WireTrade)
_agg = msgspec.json.Decoder(WireAggTrade)
_book = msgspec.json.Decoder(WireBookTicker)


class Binance(Venue):
    exchange = "binance"
    title = "Binance spot"
    default_url = "wss://stream.binance.com:9443"
    kinds = frozenset({Kind.SPOT})
    limits = "1024 streams/conn, 5 msgs/s in, 24 h per connection, 300 connects/5 min/IP"
    caveats = "spot bookTicker has no timestamp: quote ts is the receive time"
    consecutive_ids = True  # trade ids `t` (and aggTrade ids `a`) are consecutive per symbol
    options: ClassVar[dict[str, tuple[str, ...]]] = {
        "trades": ("trade", "aggTrade"),
        "time_unit": (MILLISECOND, MICROSECOND),
    }
    stream_path = "/stream"
    agg_prefix = "agg-"  # aggTrade ids live in another id space than trade ids
    id_prefixes: ClassVar[tuple[str, ...]] = ("", agg_prefix)

    def trade_id_prefix(self, options: Mapping[str, str]) -> str:
        return self.agg_prefix if options.get("trades") == "aggTrade" else ""

    def venue_symbol(self, symbol: Symbol) -> str:
        return f"{symbol.base}{symbol.quote}"

    def canonical(self, venue_symbol: str, ctx: FrameContext) -> str:
        known = ctx.symbols.get(venue_symbol)
        if known is not None:
            return known
        try:
            base, quote = split_concatenated(venue_symbol)
        except ValueError:
            return venue_symbol  # validation reports it as not subscribed
        return f"{base}-{quote}"

    def stream_names(
        self, channels: Sequence[Channel], symbols: Sequence[Symbol], options: dict[str, str]
    ) -> list[str]:
        trade_stream = options.get("trades", "trade")
        names = []
        for symbol in symbols:
            lower = self.venue_symbol(symbol).lower()
            if Channel.TRADES in channels:
                names.append(f"{lower}@{trade_stream}")
            if Channel.QUOTES in channels:
                names.append(f"{lower}@bookTicker")
        return names

    def plan(
        self,
        *,
        channels: Sequence[Channel],
        symbols: Sequence[Symbol],
        url: str | None,
        options: dict[str, str],
    ) -> list[ConnectionPlan]:
        base = self.base_url(url)
        context = TIME_UNIT_CONTEXTS[options.get("time_unit", MILLISECOND)]
        query = "?timeUnit=MICROSECOND" if context == MICROSECOND else ""
        return self.plan_streams(
            f"{base}{self.stream_path}{query}", channels, symbols, options, context=context
        )

    def plan_streams(
        self,
        url: str,
        channels: Sequence[Channel],
        symbols: Sequence[Symbol],
        options: dict[str, str],
        *,
        context: str,
    ) -> list[ConnectionPlan]:
        plans = []
        per_conn = STREAMS_PER_CONNECTION // max(1, len(channels))
        for n, group in enumerate(chunks([str(s) for s in symbols], per_conn)):
            group_symbols = [s for s in symbols if str(s) in group]
            streams = self.stream_names(channels, group_symbols, options)
            messages = tuple(
                msgspec.json.encode({"method": "SUBSCRIBE", "params": params, "id": i + 1}).decode()
                for i, params in enumerate(chunks(streams, PARAMS_PER_SUBSCRIBE))
            )
            plans.append(
                ConnectionPlan(
                    url=url,
                    subscribe=messages,
                    symbols=tuple(group),
                    channels=tuple(channels),
                    context=context,
                    subscribe_interval_s=SUBSCRIBE_INTERVAL_S,
                    # The server pings every 20 s (every 3 min on futures); we also ping every
                    # 30 s so a dead TCP path is noticed by the missing pong. Pings prove the
                    # path, not the subscription, and Binance has no heartbeat channel
                    # (silence_s=None): the silence threshold is derived from the feed's own
                    # rate (producer.liveness).
                    keepalive=Keepalive(protocol_ping_s=30.0, silence_s=None),
                    max_lifetime_s=LIFETIME_S,
                    name=f"{self.exchange}{'/' + context if context else ''}/{n}",
                )
            )
        return plans

    def parse(self, frame: bytes, ctx: FrameContext) -> Parsed:
        """One decode for trades and book tickers; anything else takes the general path."""
        try:
            f = _frame.decode(frame)
        except msgspec.ValidationError:
            return self._parse_general(frame, ctx)  # e.g. depthUpdate's array fields
        except DECODE_ERRORS as exc:
            raise decode_error(self.exchange, exc) from None
        ev: _Event = f.data if f.data is not None else f
        event = ev.e
        if event == "trade" or event == "aggTrade":
            trade_id: int | str | None = ev.t if event == "trade" else ev.a
            if (
                ev.s is None or ev.p is None or ev.q is None or ev.T is None or ev.m is None
                or not isinstance(trade_id, int)
            ):  # fmt: skip
                raise PoisonFrame(f"{self.exchange}: {event} event misses fields")
            tid = str(trade_id) if event == "trade" else f"{self.agg_prefix}{trade_id}"
            return Parsed([self._trade(ev.s, tid, ev.p, ev.q, ev.T, ev.m, ctx)])
        if (event == "bookTicker" or event is None) and ev.u is not None:
            if (
                ev.s is None or ev.b is None or ev.B is None or not isinstance(ev.a, str)
                or ev.A is None
            ):  # fmt: skip
                raise PoisonFrame(f"{self.exchange}: bookTicker event misses fields")
            stamp = ev.T if ev.T is not None else ev.E
            quote = Quote(
                exchange=self.exchange,
                symbol=self.canonical(ev.s, ctx),
                update_id=str(ev.u),
                bid_price=ev.b,
                bid_amount=ev.B,
                ask_price=ev.a,
                ask_amount=ev.A,
                ts_ns=self._time_ns(stamp, ctx) if stamp else ctx.recv_ns,
                recv_ns=ctx.recv_ns,
            )
            return Parsed(quotes=[quote])
        return self._parse_general(frame, ctx)

    def _time_ns(self, value: int, ctx: FrameContext) -> int:
        """An event time in the connection's unit (see the module docstring) as ns."""
        return value * 1_000 if ctx.context == MICROSECOND else value * 1_000_000

    def _parse_general(self, frame: bytes, ctx: FrameContext) -> Parsed:
        head = decode_frame(_head, frame, self.exchange)
        if head.data:
            body: bytes = bytes(head.data)
            try:
                kind = _type.decode(body)
            except DECODE_ERRORS as exc:
                raise decode_error(self.exchange, exc) from None
            event, update = kind.e, kind.u
        else:
            body = frame
            event, update = head.e, head.u
            if event is None and update is None:
                if head.code is not None or head.error:
                    return Parsed.of_control("error")
                if head.id is not None:
                    return Parsed.of_control("ack")
                raise PoisonFrame(f"{self.exchange}: frame has neither an event type nor an id")
        try:
            if event == "trade":
                t = _trade.decode(body)
                return Parsed(trades=[self._trade(t.s, str(t.t), t.p, t.q, t.T, t.m, ctx)])
            if event == "aggTrade":
                a = _agg.decode(body)
                trade_id = f"{self.agg_prefix}{a.a}"
                return Parsed(trades=[self._trade(a.s, trade_id, a.p, a.q, a.T, a.m, ctx)])
            if event == "bookTicker" or (event is None and update is not None):
                b = _book.decode(body)
                stamp = b.T if b.T is not None else b.E
                ts = self._time_ns(stamp, ctx) if stamp else ctx.recv_ns
                quote = Quote(
                    exchange=self.exchange,
                    symbol=self.canonical(b.s, ctx),
                    update_id=str(b.u),
                    bid_price=b.b,
                    bid_amount=b.B,
                    ask_price=b.a,
                    ask_amount=b.A,
                    ts_ns=ts,
                    recv_ns=ctx.recv_ns,
                )
                return Parsed(quotes=[quote])
        except msgspec.ValidationError as exc:
            raise PoisonFrame(
                f"{self.exchange}: bad {event or 'bookTicker'} event: {exc}"
            ) from None
        except DECODE_ERRORS as exc:
            raise decode_error(self.exchange, exc) from None
        return Parsed.of_control(f"unknown:{event}")

    def _trade(
        self,
        venue_symbol: str,
        trade_id: str,
        price: str,
        amount: str,
        time: int,
        buyer_is_maker: bool,
        ctx: FrameContext,
    ) -> Trade:
        # Positional: this runs for every trade. Fields: exchange, symbol, trade_id, price,
        # amount, side, ts_ns, recv_ns. "m: Is the buyer the market maker?" -> the seller took.
        return Trade(
            self.exchange,
            self.canonical(venue_symbol, ctx),
            trade_id,
            price,
            amount,
            "sell" if buyer_is_maker else "buy",
            self._time_ns(time, ctx),
            ctx.recv_ns,
        )


VENUE = Binance()
