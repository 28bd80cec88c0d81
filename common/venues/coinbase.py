"""Coinbase Advanced Trade (``coinbase``): ``market_trades`` and ``ticker`` (best bid/ask).

Docs: https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-overview
and https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-channels
- Market data endpoint ``wss://advanced-trade-ws.coinbase.com``; market channels need no
  authentication. "You must send a subscribe message ... or you are disconnected in 5 seconds";
  "You can only subscribe to one channel per subscription message": one message per channel,
  ``{"type": "subscribe", "product_ids": [...], "channel": "market_trades"}``, sent right after
  connecting. Acks arrive on channel ``subscriptions``; errors as ``{"type": "error", ...}``.
- "Most channels close within 60-90 seconds if no updates are sent. Subscribe to heartbeats to
  keep all subscriptions open": every connection also subscribes ``heartbeats`` (one message a
  second), which lets a short silence watchdog stand in for protocol pings.
- Rate limits (https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-rate-limits):
  "unauthenticated messages are rate-limited at 8 per second per IP address"; connections at
  8 (older page: 750) per second per IP.
- ``market_trades``: "The channel collects all updates over the last 250 ms and sends them as an
  ``update``", so one frame holds one or many trades (newest first); the subscription starts with
  a ``snapshot`` event of recent trades, stored like any other (``trade_id`` deduplicates).
  ``time`` is RFC 3339 with up to 9 fraction digits, parsed exactly to int ns.
- Trade ``side``: the channels page says "Each market trade belongs to a ``side``, which refers
  to the makers side, and can be of type ``BUY``, or ``SELL``". Recorded frames agree (``SELL``
  prints at the ask, i.e. a resting sell order was lifted by a buyer), as does Coinbase
  Exchange's documentation of the same trades ("The side field indicates the maker order side").
  So the TAKER side is the opposite: ``BUY`` (maker bought) -> ``"sell"``, ``SELL`` -> ``"buy"``.
- ``ticker`` (https://docs.cdp.coinbase.com/api-reference/advanced-trade-api/websocket/ticker):
  "Real-time price updates every time a match happens", with ``best_bid``,
  ``best_bid_quantity``, ``best_ask``, ``best_ask_quantity`` per product. A ticker has no time
  or sequence of its own: the quote's ts is the frame ``timestamp`` (ns) and its ``update_id`` is
  that timestamp plus the ticker's index in the frame. The frame's ``sequence_num`` is not used:
  it counts messages per connection and restarts on every reconnect, so it would collide.
- "Subscribing to '-USDC' based products are only available on the user channel. Other channels
  will return the same data as the corresponding '-USD' based products. USDT-USDC and EURC-USDC
  are available on all channels": other ``-USDC`` symbols are refused at configuration time.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    rfc3339_ns,
)

# Our choice, not a documented limit: bounds the traffic one connection must keep up with.
PRODUCTS_PER_CONNECTION = 100
# 3 subscribe messages per connection at 2.5/s: the first goes out at once (the 5 s deadline),
# and three connections opening together stay under the 8 messages/s per IP.
SUBSCRIBE_INTERVAL_S = 0.4
HEARTBEAT_SILENCE_S = 10.0  # heartbeats come every second once subscribed

CHANNEL_NAMES = {Channel.TRADES: "market_trades", Channel.QUOTES: "ticker"}
# "USDT-USDC and EURC-USDC are available on all channels"; other -USDC products are not.
USDC_MARKET_DATA = frozenset({"USDT-USDC", "EURC-USDC"})

# Maker side as sent -> taker side as stored (see the module docstring).
_TAKER = {"BUY": "sell", "SELL": "buy"}


class WireTrade(msgspec.Struct, frozen=True):
    trade_id: str
    product_id: str
    price: str
    size: str
    side: str
    time: str


class WireTicker(msgspec.Struct, frozen=True):
    product_id: str
    best_bid: str
    best_bid_quantity: str
    best_ask: str
    best_ask_quantity: str


class TradesEvent(msgspec.Struct, frozen=True):
    trades: list[WireTrade]
    type: str = ""  # "snapshot" or "update"


class TickerEvent(msgspec.Struct, frozen=True):
    tickers: list[WireTicker]
    type: str = ""


class _Head(msgspec.Struct):
    """The envelope: ``channel`` names the payload; errors have ``type`` instead."""

    channel: str | None = None
    type: str | None = None
    timestamp: str | None = None
    sequence_num: int | None = None
    events: msgspec.Raw = msgspec.Raw()  # empty when absent


_head = msgspec.json.Decoder(_Head)
_trade_events = msgspec.json.Decoder(list[TradesEvent])
_ticker_events = msgspec.json.Decoder(list[TickerEvent])


class Coinbase(Venue):
    exchange = "coinbase"
    title = "Coinbase Advanced Trade"
    default_url = "wss://advanced-trade-ws.coinbase.com"
    kinds = frozenset({Kind.SPOT})
    limits = "subscribe within 5 s, one channel per message, 8 unauthenticated msgs/s per IP"
    consecutive_ids = True  # trade_id is consecutive per product (recorded frames)
    caveats = (
        "side is sent as the maker's and stored inverted (taker); ticker quotes use the frame "
        "timestamp as ts and key; -USDC products other than USDT-USDC/EURC-USDC are refused"
    )

    def check_symbol(self, symbol: Symbol) -> None:
        super().check_symbol(symbol)
        if symbol.quote == "USDC" and str(symbol) not in USDC_MARKET_DATA:
            raise ValueError(
                f"coinbase serves -USDC market data only for {', '.join(sorted(USDC_MARKET_DATA))}"
                f"; {symbol} would return {symbol.base}-USD data: subscribe that instead"
            )

    def venue_symbol(self, symbol: Symbol) -> str:
        return f"{symbol.base}-{symbol.quote}"

    @staticmethod
    def canonical(product_id: str, ctx: FrameContext) -> str:
        known = ctx.symbols.get(product_id)
        if known is not None:
            return known
        parts = product_id.split("-")
        if len(parts) == 2 and all(parts):
            return f"{canonical_asset(parts[0])}-{canonical_asset(parts[1])}"
        return product_id  # futures and INTX products: validation reports it as not subscribed

    def plan(
        self,
        *,
        channels: Sequence[Channel],
        symbols: Sequence[Symbol],
        url: str | None,
        options: dict[str, str],
    ) -> list[ConnectionPlan]:
        base = self.base_url(url)
        by_product = {self.venue_symbol(s): str(s) for s in symbols}  # deduplicated, in order
        wanted = tuple(c for c in (Channel.TRADES, Channel.QUOTES) if c in channels)
        plans = []
        for n, group in enumerate(chunks(list(by_product), PRODUCTS_PER_CONNECTION)):
            requests: list[dict[str, object]] = [
                {"type": "subscribe", "product_ids": group, "channel": CHANNEL_NAMES[c]}
                for c in wanted
            ]
            # The channels page subscribes heartbeats without product ids.
            requests.append({"type": "subscribe", "channel": "heartbeats"})
            plans.append(
                ConnectionPlan(
                    url=base,
                    subscribe=tuple(msgspec.json.encode(r).decode() for r in requests),
                    symbols=tuple(by_product[p] for p in group),
                    channels=wanted,
                    context="",
                    subscribe_interval_s=SUBSCRIBE_INTERVAL_S,
                    # Coinbase documents no protocol pings; the heartbeats channel keeps the
                    # connection busy every second, so silence means it is dead.
                    keepalive=Keepalive(protocol_ping_s=None, silence_s=HEARTBEAT_SILENCE_S),
                    name=f"{self.exchange}/{n}",
                )
            )
        return plans

    def parse(self, frame: bytes, ctx: FrameContext) -> Parsed:
        head = decode_frame(_head, frame, self.exchange)
        channel = head.channel
        if channel is None:
            if head.type == "error":
                return Parsed.of_control("error")
            if head.type:
                return Parsed.of_control(f"unknown:{head.type}")
            raise PoisonFrame(f"{self.exchange}: frame has neither a channel nor a type")
        if channel == "heartbeats":
            return Parsed.of_control("heartbeat")
        if channel == "subscriptions":
            return Parsed.of_control("ack")
        if channel not in ("market_trades", "ticker"):
            return Parsed.of_control(f"unknown:{channel}")  # l2_data, candles, status, ...
        if not head.events:
            raise PoisonFrame(f"{self.exchange}: {channel} frame without events")
        try:
            if channel == "market_trades":
                events = _trade_events.decode(head.events)
                return Parsed(trades=[self._trade(t, ctx) for e in events for t in e.trades])
            if head.timestamp is None:
                raise ValueError("ticker frame without timestamp")
            ts_ns = rfc3339_ns(head.timestamp)
            tickers = [t for e in _ticker_events.decode(head.events) for t in e.tickers]
            quotes = [self._quote(t, ts_ns, i, ctx) for i, t in enumerate(tickers)]
            return Parsed(quotes=[q for q in quotes if q is not None])
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            raise PoisonFrame(f"{self.exchange}: bad {channel} events: {exc}") from None

    def _trade(self, t: WireTrade, ctx: FrameContext) -> Trade:
        return Trade(
            exchange=self.exchange,
            symbol=self.canonical(t.product_id, ctx),
            trade_id=t.trade_id,
            price=t.price,
            amount=t.size,
            side=_TAKER.get(t.side),  # `side` "refers to the makers side": store its opposite
            ts_ns=rfc3339_ns(t.time),
            recv_ns=ctx.recv_ns,
        )

    def _quote(self, t: WireTicker, ts_ns: int, index: int, ctx: FrameContext) -> Quote | None:
        if not (t.best_bid and t.best_bid_quantity and t.best_ask and t.best_ask_quantity):
            return None  # an empty book side has no best price to record
        return Quote(
            exchange=self.exchange,
            symbol=self.canonical(t.product_id, ctx),
            update_id=f"{ts_ns}-{index}",
            bid_price=t.best_bid,
            bid_amount=t.best_bid_quantity,
            ask_price=t.best_ask,
            ask_amount=t.best_ask_quantity,
            ts_ns=ts_ns,
            recv_ns=ctx.recv_ns,
        )


VENUE = Coinbase()
