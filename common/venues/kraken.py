"""Kraken spot WebSocket v2 (``kraken``): ``trade`` and ``ticker`` with ``event_trigger: bbo``.

Docs (official):
- Endpoint ``wss://ws.kraken.com/v2`` (public data):
  https://docs.kraken.com/exchange/guides/websockets/introduction
- Trades: https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/trade
  (also https://docs.kraken.com/api/docs/websocket-v2/trade)
- Ticker: https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/ticker
- Heartbeat: https://docs.kraken.com/api/docs/websocket-v2/heartbeat
- Ping/pong: https://docs.kraken.com/api/docs/websocket-v2/ping
- Status: https://docs.kraken.com/api/docs/websocket-v2/status

Facts this module relies on:
- Subscribe ``{"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"],
  "snapshot": true}, "req_id": 1}``; the ack comes ONE PER SYMBOL as ``{"method": "subscribe",
  "result": {"channel", "symbol", "snapshot"}, "success": true|false, "error": ..., "time_in",
  "time_out", "req_id"}``.
- Data frames are ``{"channel": ..., "type": "snapshot"|"update", "data": [...]}``. The trade
  snapshot "reflects the most recent 50 trades"; "Multiple trades may be batched in a single
  message". Trade fields: ``symbol``, ``side`` ("The side of the taker order"), ``price``, ``qty``,
  ``ord_type``, ``trade_id`` ("Trade identifier is a sequence number, unique per book"),
  ``timestamp`` (RFC 3339 with microseconds).
- "Prices and quantities are published as a number type ... The values contain the same precision
  as the engine and full precision can be maintained when decoded as a decimal"
  (https://docs.kraken.com/api/docs/guides/spot-ws-intro): decoded here as ``msgspec.Raw``.
- ``ticker`` with ``event_trigger: "bbo"`` publishes "on a change in the best-bid-offer price
  levels" with ``bid``, ``bid_qty``, ``ask``, ``ask_qty``; recent doc examples carry a
  ``timestamp``, older schemas do not.
- ``{"channel": "heartbeat"}`` arrives "approximately once every second in the absence of any other
  channel updates"; a ``status`` frame arrives on connect. ``{"method": "ping"}`` is an
  application-level ping answered by ``{"method": "pong", ...}``.
- v2 names assets BTC (v1 used XBT); we still map XBT -> BTC when parsing.

Keys: ``trade_id`` is the venue's. A quote's ``update_id`` is ``<timestamp ns>-<hash of the four
bbo values>`` (the timestamp alone is not documented to be unique per bbo change); a ticker
without a timestamp takes the frame's receive time as its ``ts`` and in its id. Both come from
what the entry carries (its ``t`` field and frame), never from its stream id: a dead letter
requeued (``tickvault dlq requeue`` adds it again under a new id) or a frame replayed gives the
same key, so the idempotent insert skips it instead of storing the quote twice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from hashlib import blake2b

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
    decode_frame,
    raw_decimal,
    rfc3339_ns,
)

# Kraken documents no per-connection subscription cap and only a dynamic message-rate limit
# (an error frame when exceeded): these are conservative choices, not documented limits.
SYMBOLS_PER_SUBSCRIBE = 100
SYMBOLS_PER_CONNECTION = 200
SUBSCRIBE_INTERVAL_S = 0.5
# Heartbeats come about every second, so 15 s without any frame means a dead connection. The app
# ping every 10 s (answered by a pong) also keeps quiet connections, e.g. a simulator, chatty.
PING = '{"method":"ping"}'
PING_INTERVAL_S = 10.0
SILENCE_S = 15.0


class WireTrade(msgspec.Struct, frozen=True):
    symbol: str
    side: str
    price: msgspec.Raw
    qty: msgspec.Raw
    trade_id: int
    timestamp: str
    ord_type: str | None = None


class WireTicker(msgspec.Struct, frozen=True):
    symbol: str
    bid: msgspec.Raw
    bid_qty: msgspec.Raw
    ask: msgspec.Raw
    ask_qty: msgspec.Raw
    timestamp: str | None = None  # present in recent doc examples, absent from older schemas


class _Head(msgspec.Struct):
    """Just enough of a frame to know what it is."""

    channel: str | None = None
    type: str | None = None
    data: msgspec.Raw = msgspec.Raw()  # empty when absent
    method: str | None = None
    success: bool | None = None
    error: msgspec.Raw = msgspec.Raw()
    Error: msgspec.Raw = msgspec.Raw()  # rate-limit errors have been seen spelled this way


_head = msgspec.json.Decoder(_Head)
_trades = msgspec.json.Decoder(list[WireTrade])
_tickers = msgspec.json.Decoder(list[WireTicker])

_SIDES = {"buy": "buy", "sell": "sell"}
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _decimal(raw: msgspec.Raw, name: str) -> str:
    """The exact text of a JSON number field; ValueError when it is not a number."""
    text = raw_decimal(raw)
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"{name} is not a number: {text!r}")
    return text


class Kraken(Venue):
    exchange = "kraken"
    title = "Kraken spot (WebSocket v2)"
    default_url = "wss://ws.kraken.com"
    kinds = frozenset({Kind.SPOT})
    limits = "no documented per-connection cap; dynamic message-rate limit (error frame when hit)"
    consecutive_ids = True  # trade_id: "sequence number, unique per book"
    caveats = (
        "prices are JSON numbers (kept as exact text, trailing zeros trimmed by Kraken); "
        "quote update_id is derived (timestamp, else receive time, + bbo hash)"
    )
    path = "/v2"

    def venue_symbol(self, symbol: Symbol) -> str:
        return f"{symbol.base}/{symbol.quote}"

    @staticmethod
    def canonical(venue_symbol: str, ctx: FrameContext) -> str:
        known = ctx.symbols.get(venue_symbol)
        if known is not None:
            return known
        base, sep, quote = venue_symbol.partition("/")
        if not sep or not base or not quote:
            raise ValueError(f"symbol {venue_symbol!r} is not BASE/QUOTE")
        return f"{canonical_asset(base)}-{canonical_asset(quote)}"

    def plan(
        self,
        *,
        channels: Sequence[Channel],
        symbols: Sequence[Symbol],
        url: str | None,
        options: dict[str, str],
    ) -> list[ConnectionPlan]:
        base = self.base_url(url)
        plans = []
        for n, group in enumerate(chunks([str(s) for s in symbols], SYMBOLS_PER_CONNECTION)):
            names = [self.venue_symbol(s) for s in symbols if str(s) in group]
            params: list[dict[str, object]] = []
            for part in chunks(names, SYMBOLS_PER_SUBSCRIBE):
                if Channel.TRADES in channels:
                    params.append({"channel": "trade", "symbol": part, "snapshot": True})
                if Channel.QUOTES in channels:
                    params.append(
                        {"channel": "ticker", "symbol": part, "event_trigger": "bbo",
                         "snapshot": True}
                    )  # fmt: skip
            messages = tuple(
                msgspec.json.encode({"method": "subscribe", "params": p, "req_id": i + 1}).decode()
                for i, p in enumerate(params)
            )
            plans.append(
                ConnectionPlan(
                    url=f"{base}{self.path}",
                    subscribe=messages,
                    symbols=tuple(group),
                    channels=tuple(c for c in (Channel.TRADES, Channel.QUOTES) if c in channels),
                    context="",
                    subscribe_interval_s=SUBSCRIBE_INTERVAL_S,
                    keepalive=Keepalive(
                        protocol_ping_s=None,
                        app_ping=PING,
                        app_ping_s=PING_INTERVAL_S,
                        silence_s=SILENCE_S,
                    ),
                    name=f"{self.exchange}/{n}",
                )
            )
        return plans

    def parse(self, frame: bytes, ctx: FrameContext) -> Parsed:
        head = decode_frame(_head, frame, self.exchange)
        channel = head.channel
        if channel is not None:
            if channel == "heartbeat":
                return Parsed.of_control("heartbeat")
            if channel == "status":
                return Parsed.of_control("status")
            if channel not in ("trade", "ticker"):
                return Parsed.of_control(f"unknown:{channel}")
            if not head.data:
                raise PoisonFrame(f"{self.exchange}: {channel} frame without data")
            try:
                if channel == "trade":
                    return Parsed(trades=[self._trade(t, ctx) for t in _trades.decode(head.data)])
                tickers = _tickers.decode(head.data)
                return Parsed(quotes=[q for t in tickers if (q := self._quote(t, ctx)) is not None])
            except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
                raise PoisonFrame(f"{self.exchange}: bad {channel} data: {exc}") from None
        if head.method is not None:
            if head.method == "pong":
                return Parsed.of_control("pong")
            if head.method in ("subscribe", "unsubscribe"):
                # One response per symbol; success false carries an "error" text.
                return Parsed.of_control("ack" if head.success else "error")
            return Parsed.of_control(f"unknown:{head.method}")
        if head.error or head.Error:
            return Parsed.of_control("error")
        raise PoisonFrame(f"{self.exchange}: frame has neither channel nor method")

    def _trade(self, t: WireTrade, ctx: FrameContext) -> Trade:
        return Trade(
            exchange=self.exchange,
            symbol=self.canonical(t.symbol, ctx),
            trade_id=str(t.trade_id),
            price=_decimal(t.price, "price"),
            amount=_decimal(t.qty, "qty"),
            side=_SIDES.get(t.side),  # "side: The side of the taker order."
            ts_ns=rfc3339_ns(t.timestamp),
            recv_ns=ctx.recv_ns,
        )

    def _quote(self, t: WireTicker, ctx: FrameContext) -> Quote | None:
        raws = (t.bid, t.bid_qty, t.ask, t.ask_qty)
        if any(bytes(r) == b"null" for r in raws):
            return None  # an empty side: no best bid/ask to record
        bid, bid_qty, ask, ask_qty = (
            _decimal(r, n) for r, n in zip(raws, ("bid", "bid_qty", "ask", "ask_qty"), strict=True)
        )
        # no timestamp (older schemas): the receive time, which a requeue or replay keeps
        ts_ns = rfc3339_ns(t.timestamp) if t.timestamp is not None else ctx.recv_ns
        digest = blake2b(f"{bid}|{bid_qty}|{ask}|{ask_qty}".encode(), digest_size=6).hexdigest()
        update_id = f"{ts_ns}-{digest}"
        return Quote(
            exchange=self.exchange,
            symbol=self.canonical(t.symbol, ctx),
            update_id=update_id,
            bid_price=bid,
            bid_amount=bid_qty,
            ask_price=ask,
            ask_amount=ask_qty,
            ts_ns=ts_ns,
            recv_ns=ctx.recv_ns,
        )


VENUE = Kraken()
