"""Bybit v5 as the simulator speaks it: ``/v5/public/spot`` and ``/v5/public/linear``, subscribe
acks per request in each category's format (spot at most 10 args per request), ``{"op":"ping"}``
answered with the public pong, trades batched in ``publicTrade`` snapshots, level-1 books as
``orderbook.1`` snapshots. No server protocol pings: Bybit relies on the client's pings.

Docs: https://bybit-exchange.github.io/docs/v5/ws/connect,
https://bybit-exchange.github.io/docs/v5/websocket/public/trade and .../orderbook

REST: ``GET /v5/market/recent-trade`` (https://bybit-exchange.github.io/docs/v5/market/recent-trade)
serves only the newest trades of a symbol, newest first, no cursor: ``limit`` "spot: [1,60],
default: 60; others: [1,1000], default: 500", times in ms as strings, ``execId`` the WebSocket
``i``. A bad or missing parameter is ``retCode`` 10001 "Request parameter error"
(https://bybit-exchange.github.io/docs/v5/error) with HTTP 200, as Bybit answers it: Bybit
keeps HTTP errors for the transport (403 for a banned IP, 404 for an unknown route).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from ...venues.base import Channel, split_concatenated
from ..dialect import Dialect, Frame, RestReply, SimSession
from ..engine import SimQuote, SimTrade, TradeBook
from ..rest_params import is_uint, param

_PATHS = {"/v5/public/spot": "spot", "/v5/public/linear": "linear"}
_TOPICS = {"publicTrade": Channel.TRADES, "orderbook": Channel.QUOTES}
_SPOT_ARGS_PER_REQUEST = 10
_CONN_ID = "sim-0000"
RECENT_TRADE = "/v5/market/recent-trade"
# category -> (default, maximum) of ``limit``: also how deep the endpoint reaches.
_REST_LIMITS = {
    "spot": (60, 60),
    "linear": (500, 1000),
    "inverse": (500, 1000),
    "option": (500, 1000),
}


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _venue(symbol: str) -> str:
    """Canonical -> Bybit name: BTC-USDT and BTC-USDT-PERP are both BTCUSDT."""
    return symbol.removesuffix("-PERP").replace("-", "")


class BybitDialect(Dialect):
    exchange = "bybit"
    server_ping_s = None  # the client pings with {"op":"ping"}
    trades_per_frame = 1024  # "a single message may have up to 1024 trades"
    ts_unit_ns = 1_000_000  # T is in ms

    def accepts(self, path: str) -> bool:
        return urlsplit(path).path in _PATHS

    @staticmethod
    def _category(session: SimSession) -> str:
        return _PATHS.get(urlsplit(session.path).path, "spot")

    def _reply(self, session: SimSession, op: str, req_id: str, ok: bool, msg: str) -> Frame:
        if self._category(session) == "spot":
            reply: dict[str, object] = {"success": ok, "ret_msg": msg, "conn_id": _CONN_ID}
            if req_id:
                reply["req_id"] = req_id
            reply["op"] = op
            return _json(reply)
        return _json(
            {"success": ok, "ret_msg": msg, "conn_id": _CONN_ID, "req_id": req_id, "op": op}
        )

    def _topic(self, session: SimSession, arg: object) -> tuple[Channel, str] | None:
        if not isinstance(arg, str):
            return None
        parts = arg.split(".")
        channel = _TOPICS.get(parts[0])
        if channel is Channel.TRADES and len(parts) == 2:
            name = parts[1]
        elif channel is Channel.QUOTES and len(parts) == 3 and parts[1] == "1":
            name = parts[2]
        else:
            return None
        try:
            base, quote = split_concatenated(name)
        except ValueError:
            return None
        symbol = f"{base}-{quote}"
        if self._category(session) == "linear":
            symbol += "-PERP"
        return channel, symbol

    def on_message(self, session: SimSession, message: Frame) -> list[Frame]:
        try:
            request = json.loads(message)
            op = request["op"]
            req_id = str(request.get("req_id", ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            return [self._reply(session, "", "", False, f"Invalid request: {message!r}")]
        if op == "ping":
            # Public pong: op stays "ping"; linear also carries req_id (spot does not).
            pong: dict[str, object] = {"success": True, "ret_msg": "pong", "conn_id": _CONN_ID}
            if self._category(session) == "linear":
                pong["req_id"] = req_id
            pong["op"] = "ping"
            return [_json(pong)]
        if op != "subscribe":
            return [self._reply(session, str(op), req_id, False, f"handler not found: {op}")]
        args = request.get("args")
        if not isinstance(args, list) or not args:
            return [self._reply(session, op, req_id, False, "args is empty")]
        if self._category(session) == "spot" and len(args) > _SPOT_ARGS_PER_REQUEST:
            return [self._reply(session, op, req_id, False, f"args size >{_SPOT_ARGS_PER_REQUEST}")]
        topics = [self._topic(session, arg) for arg in args]
        bad = [arg for arg, topic in zip(args, topics, strict=True) if topic is None]
        if bad:
            return [self._reply(session, op, req_id, False, f"Invalid topic :{bad}")]
        for topic in topics:
            if topic is not None:
                kind = "publicTrade" if topic[0] is Channel.TRADES else "orderbook.1"
                session.subscriptions[topic] = kind
        ok_msg = "subscribe" if self._category(session) == "spot" else ""
        return [self._reply(session, op, req_id, True, ok_msg)]

    def trade_frames(self, session: SimSession, trades: Sequence[SimTrade]) -> list[Frame]:
        if not trades:
            return []
        linear = self._category(session) == "linear"
        name = _venue(trades[0].symbol)
        rows = []
        for t in trades:
            row: dict[str, object] = {
                "T": t.ts_ns // 1_000_000,
                "s": name,
                "S": "Buy" if t.side == "buy" else "Sell",
                "v": t.amount,
                "p": t.price,
            }
            if linear:
                row["L"] = "PlusTick"
            row.update({"i": str(t.trade_id), "BT": False, "RPI": False, "seq": t.trade_id})
            rows.append(row)
        ts = trades[-1].ts_ns // 1_000_000
        return [_json({"topic": f"publicTrade.{name}", "type": "snapshot", "ts": ts, "data": rows})]

    def quote_frames(self, session: SimSession, quote: SimQuote) -> list[Frame]:
        name = _venue(quote.symbol)
        ms = quote.ts_ns // 1_000_000
        # Level 1: "ts" before "type", snapshots only.
        return [
            _json(
                {
                    "topic": f"orderbook.1.{name}",
                    "ts": ms,
                    "type": "snapshot",
                    "data": {
                        "s": name,
                        "b": [[quote.bid_price, quote.bid_amount]],
                        "a": [[quote.ask_price, quote.ask_amount]],
                        "u": quote.update_id,
                        "seq": quote.update_id,
                    },
                    "cts": ms,
                }
            )
        ]

    def expected_trade_id(self, trade: SimTrade) -> str | None:
        return str(trade.trade_id)

    def rest(
        self,
        path: str,
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
        book: TradeBook,
    ) -> RestReply | None:
        if path != RECENT_TRADE:
            return None
        category = param(query, "category")
        if category not in _REST_LIMITS:
            return _rest_error("params error: category invalid")
        name = param(query, "symbol")
        if not name:
            if category != "option":
                return _rest_error("params error: symbol invalid")
            name = ""
        default, most = _REST_LIMITS[category]
        text = param(query, "limit")
        if text is None:
            limit = default
        elif is_uint(text) and 1 <= int(text) <= most:
            limit = int(text)
        else:
            return _rest_error("params error: limit invalid")
        rows: list[dict[str, object]] = []
        symbol = _canonical(name, category)
        if symbol is not None:
            last = book.last_id(symbol)
            for t in reversed(book.trades(symbol, last - limit + 1, last)):
                rows.append(
                    {
                        "execId": str(t.trade_id),
                        "symbol": name,
                        "price": t.price,
                        "size": t.amount,
                        "side": "Buy" if t.side == "buy" else "Sell",
                        "time": str(t.ts_ns // 1_000_000),
                        "isBlockTrade": False,
                        "isRPITrade": False,
                    }
                )
        result: dict[str, object] = {"category": category, "list": rows}
        return RestReply(200, _rest_answer(0, "OK", result))


def _canonical(name: str, category: str) -> str | None:
    """The book's symbol of a spot or linear name (None: the simulator streams no such one)."""
    if category not in ("spot", "linear"):
        return None
    try:
        base, quote = split_concatenated(name)
    except ValueError:
        return None
    return f"{base}-{quote}-PERP" if category == "linear" else f"{base}-{quote}"


def _rest_answer(code: int, msg: str, result: dict[str, object]) -> str:
    # retExtInfo and time as in the docs' examples; the dialect has no clock, so time is 0.
    return _json({"retCode": code, "retMsg": msg, "result": result, "retExtInfo": {}, "time": 0})


def _rest_error(msg: str) -> RestReply:
    return RestReply(200, _rest_answer(10001, msg, {}))


DIALECT = BybitDialect()
