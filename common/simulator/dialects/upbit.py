"""Upbit as the simulator speaks it: ``/websocket/v1``, one JSON-array request (``ticket``, data
types with ``codes``, ``format``) and no acknowledgement, BINARY data frames, text ``PING`` ->
``{"status":"UP"}``, errors as ``{"error":{"name":..,"message":..}}``. All four formats: DEFAULT,
SIMPLE (abbreviated keys), JSON_LIST and SIMPLE_LIST (the same objects in a JSON array).
Prices and volumes are written as JSON numbers, digit for digit.

REST: ``GET /v1/trades/ticks`` (https://docs.upbit.com/kr/reference/list-pair-trades) from the
trade book: the trades of one day ("일자 구분은 UTC를 기준"; ``days_ago`` 1..7 days before the
request date: the wall clock, ``rest_now_ns``, the one impure part), newest first, before ``to``
(``HHmmss`` or ``HH:mm:ss``, that day) and before the ``cursor`` trade, ``count`` (1..500,
default 1) of them; ``sequential_id`` is the book's trade id and ``timestamp`` the trade's ms,
as on the WebSocket. A bad parameter is a 400, an unknown market a 404, both with Upbit's
``{"error": {"name", "message"}}`` (the messages are ours).

Not simulated: the SNAPSHOT replay of the last trade / book right after a request (every frame is
``REALTIME``), the 10 s repeats of ``{"status":"UP"}`` (a dialect has no timer), the best bid/ask
fields of trade messages and orderbook levels beyond the first. A new request replaces the
connection's subscriptions.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import msgspec

from ...symbols import canonical_asset
from ...venues.base import Channel
from ..dialect import Dialect, Frame, RestReply, SimSession
from ..engine import SimQuote, SimTrade, TradeBook
from ..rest_params import is_uint, param

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

S_NS = 1_000_000_000
DAY_NS = 86_400 * S_NS
_MARKET = re.compile(r"[A-Z0-9]{1,20}-[A-Z0-9]{1,20}", re.ASCII)
_TO = re.compile(r"([01]\d|2[0-3]):?([0-5]\d):?([0-5]\d)", re.ASCII)


class _RestError(Exception):
    """A refused REST request: its status and Upbit's error JSON."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        body = encode({"error": {"name": str(status), "message": message}})
        self.reply = RestReply(status, body)


def _rest_int(query: Mapping[str, list[str]], name: str, low: int, high: int) -> int | None:
    value = param(query, name)
    if value is None:
        return None
    if not (is_uint(value) and low <= int(value) <= high):
        raise _RestError(400, f"{name} must be an integer from {low} to {high}")
    return int(value)


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

    # -- REST ----------------------------------------------------------------------------------
    rest_path: ClassVar[str] = "/v1/trades/ticks"
    rest_days_param: ClassVar[str] = "days_ago"
    rest_day_offset_s: ClassVar[int] = 0  # where a day of ``days_ago`` and ``to`` starts
    rest_max_count: ClassVar[int] = 500  # "최대 500개 조회를 지원하며 기본 값은 1"
    rest_max_days: ClassVar[int] = 7

    def rest_now_ns(self) -> int:
        """The request time: ``days_ago`` counts days back from its date ("요청 일자")."""
        return time.time_ns()

    def rest(
        self,
        path: str,
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
        book: TradeBook,
    ) -> RestReply | None:
        if path != self.rest_path:
            return None
        try:
            code = param(query, "market")
            if not code:
                raise _RestError(400, "market is required")
            symbol = self.canonical(code) if _MARKET.fullmatch(code) else None
            if symbol is None or symbol not in book.times:
                raise _RestError(404, "Code not found")
            count = _rest_int(query, "count", 1, self.rest_max_count) or 1
            days = _rest_int(query, self.rest_days_param, 1, self.rest_max_days) or 0
            cursor = _rest_int(query, "cursor", 0, 2**63 - 1)  # a sequential_id
            to = param(query, "to")
            until = _TO.fullmatch(to) if to is not None else None
            if to is not None and until is None:
                raise _RestError(400, "to must be HHmmss or HH:mm:ss")
        except _RestError as exc:
            return exc.reply
        offset = self.rest_day_offset_s * S_NS
        start = ((self.rest_now_ns() + offset) // DAY_NS - days) * DAY_NS - offset
        end = start + DAY_NS
        if until is not None:
            hours, minutes, seconds = (int(g) for g in until.groups())
            end = start + (hours * 3_600 + minutes * 60 + seconds) * S_NS
        first, last = book.first_id_at(symbol, start), book.first_id_at(symbol, end) - 1
        if cursor is not None:
            last = min(last, cursor - 1)
        ids = range(last, max(first, last - count + 1) - 1, -1)
        return RestReply(200, encode([self.tick_object(book.trade(symbol, i)) for i in ids]))

    def tick_object(self, t: SimTrade) -> dict[str, Any]:
        """One row of ``/v1/trades/ticks``: the trade as the WebSocket sends it (same
        ``sequential_id``, ``timestamp`` = ``trade_timestamp`` in ms, same number text)."""
        at = clock(t.ts_ns, UTC)
        return {
            "market": self.code(t.symbol), "trade_date_utc": at.strftime("%Y-%m-%d"),
            "trade_time_utc": at.strftime("%H:%M:%S"), "timestamp": t.ts_ns // 1_000_000,
            "trade_price": number(t.price), "trade_volume": number(t.amount),
            "prev_closing_price": number("100.00"), "change_price": number("0.01"),
            "ask_bid": "BID" if t.side == "buy" else "ASK", "sequential_id": t.trade_id,
        }  # fmt: skip


DIALECT = UpbitDialect()
