"""OKX v5 (``okx``): ``trades`` (or ``trades-all``) and ``bbo-tbt``.

Docs: https://www.okx.com/docs-v5/en/#overview-websocket and #order-book-trading-market-data-ws
- Public endpoint ``wss://ws.okx.com:8443/ws/v5/public`` (``trades``, ``bbo-tbt``); ``trades-all``
  is on ``/ws/v5/business``.
- Subscribe ``{"id": "1", "op": "subscribe", "args": [{"channel": "trades", "instId": ...}]}``;
  ack ``{"event": "subscribe", "arg": {...}}``; error ``{"event": "error", "code": "60012", ...}``.
- Keepalive: "If there's a network problem, the system will automatically disable the connection.
  The connection will break automatically if the subscription is not established or data has not
  been pushed for more than 30 seconds": we send the text ``ping`` every 20 s and get ``pong``.
- ``trades``: "Aggregation function for the same taker order and price": ``tradeId`` is the last
  trade id of the aggregation and ``count`` the number of fills. ``side`` is the taker side.
  ``sz`` is base currency for spot, contracts for swaps and futures.
- ``bbo-tbt``: ``[price, size, deprecated, orders]`` for the best bid and ask; ``seqId`` is our key.
- Limits: 3 connection requests/s per IP; 480 subscribe requests per connection per hour; a
  subscribe request up to 64 KB.
- Instruments: ``BTC-USDT`` spot, ``BTC-USDT-SWAP`` perpetual, ``BTC-USD-250627`` dated future.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import msgspec

from ..errors import PoisonFrame
from ..records import Quote, Trade
from ..symbols import Kind, Symbol
from .base import (
    Channel,
    ConnectionPlan,
    FrameContext,
    Keepalive,
    Parsed,
    Venue,
    decode_frame,
    epoch_int,
)

ARGS_PER_SUBSCRIBE = 100
ARGS_PER_CONNECTION = 1000
SUBSCRIBE_INTERVAL_S = 0.2


class Arg(msgspec.Struct, frozen=True):
    channel: str
    instId: str | None = None


class WireTrade(msgspec.Struct, frozen=True):
    instId: str
    tradeId: str
    px: str
    sz: str
    side: str
    ts: str
    count: str | None = None


class WireBbo(msgspec.Struct, frozen=True):
    asks: list[list[str]]
    bids: list[list[str]]
    ts: str
    seqId: int | None = None


class _Head(msgspec.Struct):
    arg: Arg | None = None
    event: str | None = None
    data: msgspec.Raw = msgspec.Raw()  # empty when absent
    code: str | None = None
    msg: str | None = None


_head = msgspec.json.Decoder(_Head)
_trades = msgspec.json.Decoder(list[WireTrade])
_bbo = msgspec.json.Decoder(list[WireBbo])

_SIDES = {"buy": "buy", "sell": "sell"}


TRADES_ALL = "trades-all"  # the connection context of the business endpoint's plans


class Okx(Venue):
    exchange = "okx"
    title = "OKX v5"
    default_url = "wss://ws.okx.com:8443"
    kinds = frozenset({Kind.SPOT, Kind.PERP, Kind.FUTURE})
    limits = "3 connects/s/IP, 480 subscribe requests/conn/hour, ping text within 30 s"
    caveats = "trades are aggregated per taker order and price: tradeId is the last fill's id"
    options: ClassVar[dict[str, tuple[str, ...]]] = {"trades": ("trades", "trades-all")}

    def venue_symbol(self, symbol: Symbol) -> str:
        if symbol.kind is Kind.PERP:
            return f"{symbol.base}-{symbol.quote}-SWAP"
        if symbol.kind is Kind.FUTURE:
            return f"{symbol.base}-{symbol.quote}-{symbol.expiry}"
        return f"{symbol.base}-{symbol.quote}"

    @staticmethod
    def canonical(inst_id: str) -> str:
        if inst_id.endswith("-SWAP"):
            return inst_id[: -len("SWAP")] + "PERP"
        return inst_id

    def plan(
        self,
        *,
        channels: Sequence[Channel],
        symbols: Sequence[Symbol],
        url: str | None,
        options: dict[str, str],
    ) -> list[ConnectionPlan]:
        base = self.base_url(url)
        trades_channel = options.get("trades", "trades")
        # trades-all is served only by the business endpoint.
        by_path: dict[str, list[tuple[Channel, dict[str, str]]]] = {}
        for symbol in symbols:
            inst = self.venue_symbol(symbol)
            if Channel.TRADES in channels:
                path = "/ws/v5/business" if trades_channel == "trades-all" else "/ws/v5/public"
                by_path.setdefault(path, []).append(
                    (Channel.TRADES, {"channel": trades_channel, "instId": inst})
                )
            if Channel.QUOTES in channels:
                by_path.setdefault("/ws/v5/public", []).append(
                    (Channel.QUOTES, {"channel": "bbo-tbt", "instId": inst})
                )
        plans = []
        for path, items in sorted(by_path.items()):
            for n in range(0, len(items), ARGS_PER_CONNECTION):
                group = items[n : n + ARGS_PER_CONNECTION]
                args = [arg for _, arg in group]
                messages = tuple(
                    msgspec.json.encode(
                        {"id": str(i + 1), "op": "subscribe", "args": part}
                    ).decode()
                    for i, part in enumerate(
                        args[j : j + ARGS_PER_SUBSCRIBE]
                        for j in range(0, len(args), ARGS_PER_SUBSCRIBE)
                    )
                )
                insts = sorted({self.canonical(a["instId"]) for a in args})
                plans.append(
                    ConnectionPlan(
                        url=f"{base}{path}",
                        subscribe=messages,
                        symbols=tuple(insts),
                        channels=tuple(sorted({c for c, _ in group})),
                        # the trades variant: REST backfill can match trades-all rows only
                        context=TRADES_ALL if path == "/ws/v5/business" else "",
                        subscribe_interval_s=SUBSCRIBE_INTERVAL_S,
                        keepalive=Keepalive(
                            protocol_ping_s=None, app_ping="ping", app_ping_s=20.0, silence_s=45.0
                        ),
                        name=f"okx{path.rsplit('/', 1)[-1]}/{n // ARGS_PER_CONNECTION}",
                    )
                )
        return plans

    def parse(self, frame: bytes, ctx: FrameContext) -> Parsed:
        if frame == b"pong":
            return Parsed.of_control("pong")
        head = decode_frame(_head, frame, self.exchange)
        if head.event is not None:
            if head.event == "error":
                return Parsed.of_control("error")
            if head.event in ("subscribe", "unsubscribe"):
                return Parsed.of_control("ack")
            return Parsed.of_control(f"event:{head.event}")  # notice, channel-conn-count, ...
        if head.arg is None or not head.data:
            raise PoisonFrame(f"{self.exchange}: frame has neither event nor arg+data")
        channel = head.arg.channel
        try:
            if channel in ("trades", "trades-all"):
                return Parsed(trades=[self._trade(t, ctx) for t in _trades.decode(head.data)])
            if channel == "bbo-tbt" or channel.startswith("bbo"):
                if head.arg.instId is None:
                    raise PoisonFrame(f"{self.exchange}: bbo frame without arg.instId")
                symbol = self.canonical(head.arg.instId)
                return Parsed(quotes=[self._quote(q, symbol, ctx) for q in _bbo.decode(head.data)])
        except (msgspec.ValidationError, ValueError, IndexError) as exc:
            raise PoisonFrame(f"{self.exchange}: bad {channel} data: {exc}") from None
        return Parsed.of_control(f"unknown:{channel}")

    def _trade(self, t: WireTrade, ctx: FrameContext) -> Trade:
        return Trade(
            exchange=self.exchange,
            symbol=self.canonical(t.instId),
            trade_id=t.tradeId,
            price=t.px,
            amount=t.sz,
            side=_SIDES.get(t.side),  # "Trade side of taker"
            # ts: "Trade time, Unix timestamp format in milliseconds"
            ts_ns=epoch_int(t.ts, "ts") * 1_000_000,
            recv_ns=ctx.recv_ns,
        )

    def _quote(self, q: WireBbo, symbol: str, ctx: FrameContext) -> Quote:
        if not q.bids or not q.asks:
            raise ValueError("empty side in bbo")
        bid, ask = q.bids[0], q.asks[0]
        ts_ns = epoch_int(q.ts, "ts") * 1_000_000  # ms, as trades
        update = str(q.seqId) if q.seqId is not None else f"ts{q.ts}"
        return Quote(
            exchange=self.exchange,
            symbol=symbol,
            update_id=update,
            bid_price=bid[0],
            bid_amount=bid[1],
            ask_price=ask[0],
            ask_amount=ask[1],
            ts_ns=ts_ns,
            recv_ns=ctx.recv_ns,
        )


VENUE = Okx()
