"""Coinbase Advanced Trade as the simulator speaks it: one WebSocket at ``/``, one subscribe
message per channel (``market_trades``, ``ticker``, ``heartbeats``), each answered on channel
``subscriptions`` with everything the connection now holds; ``market_trades`` opens with a
``snapshot`` event (empty here: the simulator has no history) and then batches several trades per
``update`` frame, newest first, with ``side`` as the MAKER's side and µs RFC 3339 times; tickers
carry the best bid/ask and a ns frame timestamp. No protocol pings: Coinbase keeps connections
alive with the heartbeats channel.

REST: ``GET /api/v3/brokerage/market/products/{product_id}/ticker?limit=&start=&end=`` (Get
Public Market Trades) from the trade book: the newest ``limit`` (1..1000) trades with
``start <= time < end`` (whole UNIX seconds, both optional), newest first, in the WebSocket's
trade format (same ``trade_id``, maker ``side``, µs ``time``), plus ``best_bid``/``best_ask``.
A missing or bad parameter is a 400 ``INVALID_ARGUMENT``; a product the book has no trades of
gets an empty list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from urllib.parse import urlsplit

from ...venues.base import Channel
from ..dialect import Dialect, Frame, RestReply, SimSession
from ..engine import SimQuote, SimTrade, TradeBook
from ..rest_params import uint_param

_CHANNELS = {"market_trades": Channel.TRADES, "ticker": Channel.QUOTES}
_KNOWN = {"market_trades", "ticker", "ticker_batch", "level2", "candles", "status", "heartbeats"}
_MAKER = {"buy": "SELL", "sell": "BUY"}  # taker side -> the maker side Coinbase reports
_TRADES_PATH = re.compile(r"/api/v3/brokerage/market/products/([A-Z0-9]+-[A-Z0-9]+)/ticker")
_REST_LIMIT = 1000  # the most trades one market-trades answer holds
_NS = 1_000_000_000
_MAX_DIGITS = 18  # the most digits of an integer parameter


def rfc3339(ns: int) -> str:
    """``1675974637167359596`` -> ``2023-02-09T20:30:37.167359596Z`` (all nine digits)."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{fraction:09d}Z"


def _us(ns: int) -> str:
    """Trade times as Coinbase sends them: microseconds (``...27.028459Z``)."""
    return rfc3339(ns)[:-4] + "Z"


def _error(message: str) -> Frame:
    return json.dumps({"type": "error", "message": message})


def _rest_error(status: int, code: str, message: str) -> RestReply:
    """An Advanced Trade REST error: ``{"error", "error_details", "message"}``."""
    body = {"error": code, "error_details": message, "message": message}
    return RestReply(status, json.dumps(body))


def _wire(t: SimTrade) -> dict[str, str]:
    """One trade as both the WebSocket and the REST API send it."""
    return {"trade_id": str(t.trade_id), "product_id": t.symbol, "price": t.price,
            "size": t.amount, "side": _MAKER[t.side], "time": _us(t.ts_ns)}  # fmt: skip


class CoinbaseDialect(Dialect):
    exchange = "coinbase"
    server_ping_s = None  # keepalive is the heartbeats channel, not protocol pings
    heartbeat_s = 1.0

    def heartbeat_frames(self, session: SimSession, now_ns: int) -> list[Frame]:
        if "heartbeats" not in session.state.get("channels", {}):
            return []
        counter = session.state["heartbeat_counter"] = session.state.get("heartbeat_counter", 0) + 1
        event = {"current_time": rfc3339(now_ns), "heartbeat_counter": str(counter)}
        return [self._envelope(session, "heartbeats", now_ns, [event])]

    trades_per_frame = 5  # "collects all updates over the last 250 ms": several per frame
    ts_unit_ns = 1_000  # trade times have microseconds

    def accepts(self, path: str) -> bool:
        return urlsplit(path).path in ("", "/")

    def _envelope(self, session: SimSession, channel: str, ts_ns: int, events: list[object]) -> str:
        seq = session.state.get("sequence_num", 0)
        session.state["sequence_num"] = seq + 1  # +1 per message, per connection
        session.state["last_ns"] = max(ts_ns, session.state.get("last_ns", 0))
        body = {"channel": channel, "client_id": "", "timestamp": rfc3339(ts_ns),
                "sequence_num": seq, "events": events}  # fmt: skip
        return json.dumps(body, separators=(",", ":"))

    def on_message(self, session: SimSession, message: Frame) -> list[Frame]:
        try:
            request = json.loads(message)
            kind, channel = request["type"], request["channel"]
            products = request.get("product_ids", [])
        except (ValueError, KeyError, TypeError):
            return [_error("failure to subscribe")]
        if kind != "subscribe" or channel not in _KNOWN or not isinstance(products, list):
            return [_error("failure to subscribe")]
        held: dict[str, list[str]] = session.state.setdefault("channels", {})
        held.setdefault(channel, [])
        replies: list[Frame] = []
        for product in products:
            if product not in held[channel]:
                held[channel].append(product)
            mapped = _CHANNELS.get(channel)
            if mapped is not None:
                session.subscriptions[(mapped, product)] = channel
        ts_ns = session.state.get("last_ns", 0)  # the dialect has no clock: reuse the last time
        replies.append(self._envelope(session, "subscriptions", ts_ns, [{"subscriptions": held}]))
        if channel == "market_trades" and products:
            snapshot: list[object] = [{"type": "snapshot", "trades": []}]
            replies.append(self._envelope(session, "market_trades", ts_ns, snapshot))
        return replies

    def trade_frames(self, session: SimSession, trades: Sequence[SimTrade]) -> list[Frame]:
        if not trades:
            return []
        rows = [_wire(t) for t in reversed(trades)]  # newest first, as the venue sends them
        newest = max(t.ts_ns for t in trades)
        return [
            self._envelope(session, "market_trades", newest, [{"type": "update", "trades": rows}])
        ]

    def quote_frames(self, session: SimSession, quote: SimQuote) -> list[Frame]:
        ticker = {"type": "ticker", "product_id": quote.symbol, "price": quote.ask_price,
                  "best_bid": quote.bid_price, "best_bid_quantity": quote.bid_amount,
                  "best_ask": quote.ask_price, "best_ask_quantity": quote.ask_amount}  # fmt: skip
        return [
            self._envelope(
                session, "ticker", quote.ts_ns, [{"type": "update", "tickers": [ticker]}]
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
        m = _TRADES_PATH.fullmatch(path)
        if m is None:
            return None
        product = m.group(1)
        try:
            limit = uint_param(query, "limit", _MAX_DIGITS)
            start = uint_param(query, "start", _MAX_DIGITS)
            end = uint_param(query, "end", _MAX_DIGITS)
        except ValueError as exc:
            return _rest_error(400, "INVALID_ARGUMENT", str(exc))
        if limit is None or not 1 <= limit <= _REST_LIMIT:
            return _rest_error(400, "INVALID_ARGUMENT", f"limit must be 1..{_REST_LIMIT}")
        last = book.last_id(product)
        lo = book.first_id_at(product, start * _NS) if start is not None else 1
        hi = book.first_id_at(product, end * _NS) - 1 if end is not None else last
        trades = book.trades(product, max(lo, hi - limit + 1), hi)
        rows = [{**_wire(t), "bid": "", "ask": ""} for t in reversed(trades)]  # newest first
        newest = book.trade(product, last) if last else None
        best_bid, best_ask = (newest.price, newest.price) if newest else ("", "")
        body = {"trades": rows, "best_bid": best_bid, "best_ask": best_ask}
        return RestReply(200, json.dumps(body, separators=(",", ":")))


DIALECT = CoinbaseDialect()
