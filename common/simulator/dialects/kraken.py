"""Kraken spot WebSocket v2 as the simulator speaks it: ``/v2``, a ``status`` frame on connect,
one subscribe ack per symbol, ``{"method":"ping"}`` -> ``{"method":"pong"}``, several trades per
``trade`` frame with prices as JSON numbers, RFC 3339 microsecond timestamps, and ``ticker``
best bid/ask frames. The first frame of a channel after subscribing is typed ``snapshot``.

``{"channel":"heartbeat"}`` about every second once subscribed. Not simulated: the 50-trade
history in the real trade snapshot. Acks and
pongs carry fixed ``time_in``/``time_out`` values because a dialect has no clock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from ...symbols import canonical_asset
from ...venues.base import Channel
from ..dialect import Dialect, Frame, SimSession
from ..engine import SimQuote, SimTrade

_CHANNELS = {"trade": Channel.TRADES, "ticker": Channel.QUOTES}
_TIME_IN = "2023-09-25T09:04:31.742599Z"
_TIME_OUT = "2023-09-25T09:04:31.742648Z"
_STATUS = {
    "channel": "status",
    "data": [
        {"api_version": "v2", "connection_id": 13834774380200032777, "system": "online",
         "version": "2.0.0"}
    ],
    "type": "update",
}  # fmt: skip


def _rfc3339(ns: int) -> str:
    seconds, nanos = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos // 1_000:06d}Z"


def _number(text: str) -> msgspec.Raw:
    """A decimal string written into the JSON as a number, digit for digit."""
    return msgspec.Raw(text.encode())


def _encode(message: dict[str, Any]) -> str:
    return msgspec.json.encode(message).decode()


def _error(text: str, fields: dict[str, Any]) -> str:
    return _encode({"error": text, "success": False, "time_in": _TIME_IN, "time_out": _TIME_OUT,
                    **fields})  # fmt: skip


def _canonical(venue: str) -> str:
    base, _, quote = venue.partition("/")
    return f"{canonical_asset(base)}-{canonical_asset(quote)}"


def _venue(symbol: str) -> str:
    base, quote = symbol.split("-")[:2]
    return f"{base}/{quote}"


class KrakenDialect(Dialect):
    exchange = "kraken"
    server_ping_s = None  # Kraken keeps connections alive with heartbeats and app-level pings
    heartbeat_s = 1.0

    def heartbeat_frames(self, session: SimSession, now_ns: int) -> list[Frame]:
        return ['{"channel":"heartbeat"}'] if session.subscriptions else []

    trades_per_frame = 5  # "Multiple trades may be batched in a single message"
    ts_unit_ns = 1_000  # RFC 3339 timestamps with microseconds

    def accepts(self, path: str) -> bool:
        return path.split("?", 1)[0] == "/v2"

    def greeting(self, session: SimSession) -> list[Frame]:
        return [_encode(_STATUS)]

    def on_message(self, session: SimSession, message: Frame) -> list[Frame]:
        try:
            request = json.loads(message)
            method = request["method"]
        except (ValueError, KeyError, TypeError):
            return [_error("Malformed request", {})]
        tail: dict[str, Any] = {"time_in": _TIME_IN, "time_out": _TIME_OUT}
        if request.get("req_id") is not None:
            tail["req_id"] = request["req_id"]
        if method == "ping":
            return [_encode({"method": "pong", **tail})]
        if method != "subscribe":
            return [_error(f"Method not supported: {method}", {"method": method, **tail})]
        params: dict[str, Any] = request.get("params") or {}
        name = str(params.get("channel"))
        channel = _CHANNELS.get(name)
        symbols = params.get("symbol")
        if channel is None or not isinstance(symbols, list):
            return [_error(f"Channel not supported: {name}", {"method": "subscribe", **tail})]
        variant = str(params.get("event_trigger", "trades")) if name == "ticker" else "trade"
        snapshot = bool(params.get("snapshot", True))
        replies: list[Frame] = []
        for venue in symbols:
            base, sep, quote = str(venue).partition("/")
            # v2 names assets BTC; v1's XBT/USD is rejected.
            if not sep or not base or not quote or "XBT" in (base, quote):
                fields = {"method": "subscribe", "symbol": venue, **tail}
                replies.append(_error(f"Currency pair not supported {venue}", fields))
                continue
            symbol = _canonical(venue)
            session.subscriptions[(channel, symbol)] = variant
            if snapshot:
                session.state.setdefault("snapshot", set()).add((channel, symbol))
            result = {"channel": name, "snapshot": snapshot, "symbol": venue}
            replies.append(
                _encode({"method": "subscribe", "result": result, "success": True, **tail})
            )
        return replies

    def _type(self, session: SimSession, channel: Channel, symbol: str) -> str:
        pending: set[tuple[Channel, str]] = session.state.get("snapshot", set())
        if (channel, symbol) in pending:
            pending.discard((channel, symbol))
            return "snapshot"
        return "update"

    def trade_frames(self, session: SimSession, trades: Sequence[SimTrade]) -> list[Frame]:
        if not trades:
            return []
        symbol = trades[0].symbol
        data = [
            {"symbol": _venue(t.symbol), "side": t.side, "price": _number(t.price),
             "qty": _number(t.amount), "ord_type": "market" if t.trade_id % 2 else "limit",
             "trade_id": t.trade_id, "timestamp": _rfc3339(t.ts_ns)}
            for t in trades
        ]  # fmt: skip
        kind = self._type(session, Channel.TRADES, symbol)
        return [_encode({"channel": "trade", "type": kind, "data": data})]

    def quote_frames(self, session: SimSession, quote: SimQuote) -> list[Frame]:
        data = {
            "symbol": _venue(quote.symbol),
            "bid": _number(quote.bid_price),
            "bid_qty": _number(quote.bid_amount),
            "ask": _number(quote.ask_price),
            "ask_qty": _number(quote.ask_amount),
            "last": _number(quote.bid_price),
            "volume": _number("0"),
            "vwap": _number(quote.bid_price),
            "low": _number(quote.bid_price),
            "high": _number(quote.ask_price),
            "change": _number("0"),
            "change_pct": _number("0"),
            "timestamp": _rfc3339(quote.ts_ns),
        }
        kind = self._type(session, Channel.QUOTES, quote.symbol)
        return [_encode({"channel": "ticker", "type": kind, "data": [data]})]

    def expected_trade_id(self, trade: SimTrade) -> str | None:
        return str(trade.trade_id)


DIALECT = KrakenDialect()
