"""Bybit v5 public streams (``bybit``): ``publicTrade.<SYM>`` and ``orderbook.1.<SYM>``.

Docs (official, https://bybit-exchange.github.io/docs/):
- Connect: https://bybit-exchange.github.io/docs/v5/ws/connect
  - one endpoint per category: ``/v5/public/spot`` and ``/v5/public/linear`` ("USDT, USDC
    perpetual & USDT Futures"); the same name (``BTCUSDT``) exists in both, so the frame alone
    cannot say spot or perpetual: each plan carries ``context`` "spot" or "linear".
  - subscribe ``{"req_id": "1", "op": "subscribe", "args": ["publicTrade.BTCUSDT", ...]}``.
    Acks differ: spot ``{"success": true, "ret_msg": "subscribe", "conn_id": .., "req_id": ..,
    "op": "subscribe"}``, linear ``{"success": true, "ret_msg": "", ..., "op": "subscribe"}``;
    a failure has ``"success": false``.
  - "Spot can input up to 10 args for each subscription request sent to one connection";
    "for one public connection, you cannot have length of "args" array over 21,000 characters";
    "No args limit for Futures". "Do not build over 500 connections in 5 minutes".
  - Heartbeat: the client sends ``{"op": "ping"}``; "we recommend that you send the ping heartbeat
    packet every 20 seconds". Pong (public): ``{"success": true, "ret_msg": "pong", ...,
    "op": "ping"}`` (spot and linear; linear adds ``"req_id": ""``); option/spread answer
    ``{"args": [..], "op": "pong"}``.
- Trade: https://bybit-exchange.github.io/docs/v5/websocket/public/trade
  ``{"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": .., "data": [{"T", "s", "S", "v",
  "p", "L", "i", "BT", "RPI", "seq"}]}``; "For Futures and Spot, a single message may have up to
  1024 trades"; data "Sorted by the time the trade was matched in ascending order"; ``T`` "The
  timestamp (ms) that the order is filled"; ``S`` "Side of taker. Buy, Sell"; ``i`` "Trade ID"
  (numeric text on spot, a UUID on linear).
- Orderbook: https://bybit-exchange.github.io/docs/v5/websocket/public/orderbook
  ``orderbook.1`` pushes every 10 ms; "Linear, inverse, spot level 1 data has snapshot message
  only"; "if 3 seconds have elapsed without a change in the orderbook, a snapshot message will be
  pushed again, and the field u will be the same as that in the previous message"; "Occasionally,
  you'll receive "u"=1, which is a snapshot data due to the restart of the service". ``cts`` is
  "The timestamp from the matching engine when this orderbook data is produced".

Symbols: canonical ``BTC-USDT`` -> spot ``BTCUSDT``; ``BTC-USDT-PERP`` -> linear ``BTCUSDT``.
Dated futures and USDC perpetuals are not served: their linear names could not be confirmed for
every quote coin in the official docs.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    chunks,
    decode_frame,
    epoch_int,
    ms_to_ns,
    split_concatenated,
)

SPOT = "spot"
LINEAR = "linear"
# "Spot can input up to 10 args for each subscription request"; linear has no documented cap,
# we keep its requests modest anyway.
ARGS_PER_SUBSCRIBE = {SPOT: 10, LINEAR: 100}
# "you cannot have length of "args" array over 21,000 characters" per public connection; we
# count the JSON text of the array and keep a margin.
ARGS_CHARS_PER_CONNECTION = 20_000
SUBSCRIBE_INTERVAL_S = 0.1  # no documented subscribe rate: a small pause to be polite
PING = '{"op":"ping"}'
PING_INTERVAL_S = 20.0  # "send the ping heartbeat packet every 20 seconds"
# Pongs arrive every 20 s even on a quiet symbol, level-1 books re-push every 3 s.
SILENCE_S = 45.0


class WireTrade(msgspec.Struct, frozen=True):
    T: int
    s: str
    S: str
    v: str
    p: str
    i: str
    BT: bool = False
    L: str | None = None  # "Unique field for Perps & futures"
    RPI: bool | None = None
    seq: int | None = None


class WireBook(msgspec.Struct, frozen=True):
    s: str
    b: list[list[str]]
    a: list[list[str]]
    u: int
    seq: int | None = None


class _Head(msgspec.Struct):
    """Just enough of a frame to know what it is."""

    topic: str | None = None
    type: str | None = None
    ts: int | str | None = None
    cts: int | str | None = None
    data: msgspec.Raw = msgspec.Raw()  # empty when absent
    op: str | None = None
    success: bool | None = None
    ret_msg: str | None = None


_head = msgspec.json.Decoder(_Head)
_trades = msgspec.json.Decoder(list[WireTrade])
_book = msgspec.json.Decoder(WireBook)

# "S: Side of taker. Buy, Sell"
_SIDES = {"Buy": "buy", "Sell": "sell"}


class Bybit(Venue):
    exchange = "bybit"
    title = "Bybit v5 (spot, USDT perpetuals)"
    default_url = "wss://stream.bybit.com"
    kinds = frozenset({Kind.SPOT, Kind.PERP})
    limits = (
        "spot: 10 args/subscribe; 21,000 chars of args/conn; 500 connects/5 min; ping every 20 s"
    )
    caveats = (
        "spot and linear share names (BTCUSDT): the connection context tells them apart; "
        "PERP = USDT linear perpetuals only"
    )

    def check_symbol(self, symbol: Symbol) -> None:
        super().check_symbol(symbol)
        if symbol.kind is Kind.PERP and symbol.quote != "USDT":
            raise ValueError(f"bybit serves USDT perpetuals only (BTC-USDT-PERP), not {symbol}")

    def venue_symbol(self, symbol: Symbol) -> str:
        self.check_symbol(symbol)
        return f"{symbol.base}{symbol.quote}"

    @staticmethod
    def category(symbol: Symbol) -> str:
        return LINEAR if symbol.kind is Kind.PERP else SPOT

    def canonical(self, venue_symbol: str, ctx: FrameContext) -> str:
        known = ctx.symbols.get(venue_symbol)
        if known is not None:
            return known
        if ctx.context not in (SPOT, LINEAR):
            raise PoisonFrame(
                f"{self.exchange}: {venue_symbol!r} is not subscribed and the frame has no "
                f"spot/linear context ({ctx.context!r})"
            )
        try:
            base, quote = split_concatenated(venue_symbol)
        except ValueError:
            return venue_symbol  # validation reports it as not subscribed
        return f"{base}-{quote}-PERP" if ctx.context == LINEAR else f"{base}-{quote}"

    def plan(
        self,
        *,
        channels: Sequence[Channel],
        symbols: Sequence[Symbol],
        url: str | None,
        options: dict[str, str],
    ) -> list[ConnectionPlan]:
        base = self.base_url(url)
        by_category: dict[str, list[Symbol]] = {}
        for symbol in symbols:
            by_category.setdefault(self.category(symbol), []).append(symbol)
        plans: list[ConnectionPlan] = []
        for category in (SPOT, LINEAR):
            group = by_category.get(category)
            if not group:
                continue
            for n, (members, args) in enumerate(self._connections(channels, group)):
                messages = tuple(
                    msgspec.json.encode(
                        {"req_id": str(i + 1), "op": "subscribe", "args": part}
                    ).decode()
                    for i, part in enumerate(chunks(args, ARGS_PER_SUBSCRIBE[category]))
                )
                plans.append(
                    ConnectionPlan(
                        url=f"{base}/v5/public/{category}",
                        subscribe=messages,
                        symbols=tuple(str(s) for s in members),
                        channels=tuple(channels),
                        context=category,
                        subscribe_interval_s=SUBSCRIBE_INTERVAL_S,
                        keepalive=Keepalive(
                            protocol_ping_s=None,
                            app_ping=PING,
                            app_ping_s=PING_INTERVAL_S,
                            silence_s=SILENCE_S,
                        ),
                        name=f"{self.exchange}/{category}/{n}",
                    )
                )
        return plans

    def _connections(
        self, channels: Sequence[Channel], symbols: Sequence[Symbol]
    ) -> list[tuple[list[Symbol], list[str]]]:
        """Symbols and their topics per connection, within the args length budget."""
        out: list[tuple[list[Symbol], list[str]]] = []
        members: list[Symbol] = []
        args: list[str] = []
        used = 2  # the array's brackets
        for symbol in symbols:
            name = self.venue_symbol(symbol)
            topics = []
            if Channel.TRADES in channels:
                topics.append(f"publicTrade.{name}")
            if Channel.QUOTES in channels:
                topics.append(f"orderbook.1.{name}")
            cost = sum(len(t) + 3 for t in topics)  # quotes and a comma each
            if members and used + cost > ARGS_CHARS_PER_CONNECTION:
                out.append((members, args))
                members, args, used = [], [], 2
            members.append(symbol)
            args.extend(topics)
            used += cost
        if members:
            out.append((members, args))
        return out

    def parse(self, frame: bytes, ctx: FrameContext) -> Parsed:
        head = decode_frame(_head, frame, self.exchange)
        if head.topic is None:
            return self._control(head)
        kind = head.topic.split(".", 1)[0]
        try:
            if kind == "publicTrade":
                if not head.data:
                    raise PoisonFrame(f"{self.exchange}: {head.topic} frame without data")
                return Parsed(trades=[self._trade(t, ctx) for t in _trades.decode(head.data)])
            if kind == "orderbook":
                return self._book(head, ctx)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError, IndexError) as exc:
            raise PoisonFrame(f"{self.exchange}: bad {head.topic} frame: {exc}") from None
        return Parsed.of_control(f"unknown:{kind}")

    def _control(self, head: _Head) -> Parsed:
        op = head.op
        if op is None:
            if head.success is None:
                raise PoisonFrame(f"{self.exchange}: frame has neither a topic nor an op")
            # option/spread acks: {"success": true, "type": "COMMAND_RESP", "data": {..}}
            return Parsed.of_control("ack" if head.success else "error")
        if head.success is False:
            return Parsed.of_control("error")
        # Public pongs echo the request's op ("ping") with ret_msg "pong"; option/spread and
        # private pongs say op "pong".
        if op == "pong" or (op == "ping" and head.ret_msg == "pong"):
            return Parsed.of_control("pong")
        if op in ("subscribe", "unsubscribe", "auth"):
            return Parsed.of_control("ack")
        return Parsed.of_control(f"unknown:{op}")

    def _trade(self, t: WireTrade, ctx: FrameContext) -> Trade:
        return Trade(
            exchange=self.exchange,
            symbol=self.canonical(t.s, ctx),
            trade_id=t.i,
            price=t.p,
            amount=t.v,
            side=_SIDES.get(t.S),  # "S: Side of taker. Buy, Sell"
            ts_ns=ms_to_ns(t.T),
            recv_ns=ctx.recv_ns,
        )

    def _book(self, head: _Head, ctx: FrameContext) -> Parsed:
        topic = head.topic or ""
        parts = topic.split(".")
        depth = parts[1] if len(parts) >= 3 else ""
        if depth != "1":
            # Deeper books (orderbook.50, orderbook.rpi) are not best bid/ask.
            return Parsed.of_control(f"unknown:orderbook.{depth}")
        if head.type != "snapshot":
            # "Linear, inverse, spot level 1 data has snapshot message only"
            return Parsed.of_control(f"unknown:orderbook.1:{head.type}")
        if not head.data:
            raise PoisonFrame(f"{self.exchange}: {topic} frame without data")
        book = _book.decode(head.data)
        if not book.b or not book.a:
            return Parsed.of_control("one-sided")  # an empty side is a state, not an error
        bid, ask = book.b[0], book.a[0]
        stamp = head.cts if head.cts is not None else head.ts
        if stamp is None:
            raise PoisonFrame(f"{self.exchange}: {topic} frame without ts")
        # u repeats on the 3 s re-push (deduplicated) and restarts at 1 when Bybit restarts the
        # service; the cross sequence keeps ids after a restart distinct.
        update = f"{book.u}-{book.seq}" if book.seq is not None else str(book.u)
        quote = Quote(
            exchange=self.exchange,
            symbol=self.canonical(book.s, ctx),
            update_id=update,
            bid_price=bid[0],
            bid_amount=bid[1],
            ask_price=ask[0],
            ask_amount=ask[1],
            ts_ns=ms_to_ns(epoch_int(stamp, "ts")),  # "cts"/"ts": ms
            recv_ns=ctx.recv_ns,
        )
        return Parsed(quotes=[quote])


VENUE = Bybit()
