"""Upbit as the simulator speaks it: ``/websocket/v1``, one JSON-array request (``ticket``, data
types with ``codes``, ``format``) and no acknowledgement, BINARY data frames, text ``PING`` ->
``{"status":"UP"}``, errors as ``{"error":{"name":..,"message":..}}``. All four formats: DEFAULT,
SIMPLE (abbreviated keys), JSON_LIST and SIMPLE_LIST (the same objects in a JSON array).
Prices and volumes are written as JSON numbers, digit for digit.

Not simulated: the SNAPSHOT replay of the last trade / book right after a request (every frame is
``REALTIME``), the 10 s repeats of ``{"status":"UP"}`` (a dialect has no timer), the best bid/ask
fields of trade messages and orderbook levels beyond the first. A new request replaces the
connection's subscriptions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import msgspec

from ...symbols import canonical_asset
from ...venues.base import Channel
from ..dialect import Dialect, Frame, SimSession
from ..engine import SimQuote, SimTrade

_CHANNELS = {"trade": Channel.TRADES, "orderbook": Channel.QUOTES}
FORMATS = ("DEFAULT", "SIMPLE", "JSON_LIST", "SIMPLE_LIST")
UTC: tzinfo = ZoneInfo("UTC")

# DEFAULT key -> SIMPLE key, from the "축약형" columns of the trade and orderbook pages.
TRADE_KEYS = {
    "type": "ty", "code": "cd", "timestamp": "tms", "trade_date": "td", "trade_time": "ttm",
    "trade_timestamp": "ttms", "trade_price": "tp", "trade_volume": "tv", "ask_bid": "ab",
    "prev_closing_price": "pcp", "change": "c", "change_price": "cp", "sequential_id": "sid",
    "stream_type": "st",
}  # fmt: skip
BOOK_KEYS = {
    "type": "ty", "code": "cd", "timestamp": "tms", "total_ask_size": "tas",
    "total_bid_size": "tbs", "orderbook_units": "obu", "stream_type": "st", "level": "lv",
}  # fmt: skip
UNIT_KEYS = {"ask_price": "ap", "bid_price": "bp", "ask_size": "as", "bid_size": "bs"}


def number(text: str) -> msgspec.Raw:
    """A decimal string written into the JSON as a number, digit for digit."""
    return msgspec.Raw(text.encode())


def encode(message: Any) -> str:
    return msgspec.json.encode(message).decode()


def clock(ns: int, zone: tzinfo) -> datetime:
    return datetime.fromtimestamp(ns // 1_000_000_000, zone)


class UpbitDialect(Dialect):
    exchange = "upbit"
    binary = True  # Upbit sends its JSON in binary WebSocket frames
    server_ping_s = None  # the server answers pings; it does not send its own
    path: ClassVar[str] = "/websocket/v1"
    trade_keys: ClassVar[dict[str, str]] = TRADE_KEYS
    zone: ClassVar[tzinfo] = UTC  # trade_date / trade_time are UTC on Upbit

    def accepts(self, path: str) -> bool:
        return path.split("?", 1)[0] == self.path

    @staticmethod
    def canonical(code: str) -> str:
        quote, _, base = code.split(".", 1)[0].partition("-")  # "KRW-BTC.15": 15 book units
        return f"{canonical_asset(base)}-{canonical_asset(quote)}"

    @staticmethod
    def code(symbol: str) -> str:
        base, quote = symbol.split("-")[:2]
        return f"{quote}-{base}"

    def frame(self, session: SimSession, message: Any) -> Frame:
        return encode(message)  # sent binary: ``binary`` is set

    def error(self, session: SimSession, name: str, message: str) -> Frame:
        return self.frame(session, {"error": {"name": name, "message": message}})

    def on_message(self, session: SimSession, message: Frame) -> list[Frame]:
        if message in ("PING", b"PING"):
            return [self.frame(session, {"status": "UP"})]
        try:
            request = json.loads(message)
        except ValueError:
            return [self.error(session, "WRONG_FORMAT", "요청 형식 위반")]
        return self.request(session, request)

    def request(self, session: SimSession, request: Any) -> list[Frame]:
        if not isinstance(request, list) or not all(isinstance(x, dict) for x in request):
            return [self.error(session, "WRONG_FORMAT", "요청 형식 위반")]
        if not any("ticket" in x for x in request):
            return [self.error(session, "NO_TICKET", "티켓 필드 누락")]
        types = [x for x in request if "type" in x]
        if not types:
            return [self.error(session, "NO_TYPE", "타입 필드 누락")]
        fmt = next((x["format"] for x in request if "format" in x), "DEFAULT")
        if fmt not in FORMATS:
            return [self.error(session, "INVALID_PARAM", f"format {fmt!r}")]
        subscriptions: dict[tuple[Channel, str], str] = {}
        for item in types:
            codes = item.get("codes")
            if not isinstance(codes, list) or not codes:
                return [self.error(session, "NO_CODES", "코드 필드 누락")]
            channel = _CHANNELS.get(item["type"])
            if channel is None:
                continue  # ticker, candle...: accepted, not simulated
            for code in codes:
                subscriptions[(channel, self.canonical(str(code)))] = item["type"]
        session.subscriptions.clear()
        session.subscriptions.update(subscriptions)
        session.state["format"] = fmt
        return []  # no acknowledgement: data starts

    # -- frames --------------------------------------------------------------------------------
    def _emit(self, session: SimSession, objects: list[dict[str, Any]]) -> list[Frame]:
        fmt = session.state.get("format", "DEFAULT")
        if fmt.startswith("SIMPLE"):
            objects = [self._simple(o) for o in objects]
        if fmt.endswith("_LIST"):
            return [self.frame(session, objects)]
        return [self.frame(session, o) for o in objects]

    def _simple(self, obj: dict[str, Any]) -> dict[str, Any]:
        keys = self.trade_keys if obj["type"] == "trade" else BOOK_KEYS
        out = {keys.get(k, k): v for k, v in obj.items()}
        if "obu" in out:
            out["obu"] = [{UNIT_KEYS[k]: v for k, v in u.items()} for u in out["obu"]]
        return out

    def trade_object(self, t: SimTrade) -> dict[str, Any]:
        ms = t.ts_ns // 1_000_000
        at = clock(t.ts_ns, self.zone)
        return {
            "type": "trade", "code": self.code(t.symbol), "timestamp": ms,
            "trade_date": at.strftime("%Y-%m-%d"), "trade_time": at.strftime("%H:%M:%S"),
            "trade_timestamp": ms, "trade_price": number(t.price),
            "trade_volume": number(t.amount), "ask_bid": "BID" if t.side == "buy" else "ASK",
            "prev_closing_price": number("100.00"), "change": "RISE",
            "change_price": number("0.01"), "sequential_id": t.trade_id,
            "stream_type": "REALTIME",
        }  # fmt: skip

    def trade_frames(self, session: SimSession, trades: Sequence[SimTrade]) -> list[Frame]:
        return self._emit(session, [self.trade_object(t) for t in trades])

    def quote_frames(self, session: SimSession, quote: SimQuote) -> list[Frame]:
        unit = {
            "ask_price": number(quote.ask_price), "bid_price": number(quote.bid_price),
            "ask_size": number(quote.ask_amount), "bid_size": number(quote.bid_amount),
        }  # fmt: skip
        book = {
            "type": "orderbook", "code": self.code(quote.symbol),
            "timestamp": quote.ts_ns // 1_000_000, "total_ask_size": number(quote.ask_amount),
            "total_bid_size": number(quote.bid_amount), "orderbook_units": [unit],
            "stream_type": "REALTIME", "level": 0,
        }  # fmt: skip
        return self._emit(session, [book])

    def expected_trade_id(self, trade: SimTrade) -> str | None:
        return str(trade.trade_id)  # sequential_id


DIALECT = UpbitDialect()
