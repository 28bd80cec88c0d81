"""Kraken spot WebSocket v2 as the simulator speaks it: ``/v2``, a ``status`` frame on connect,
one subscribe ack per symbol, ``{"method":"ping"}`` -> ``{"method":"pong"}``, several trades per
``trade`` frame with prices as JSON numbers, RFC 3339 microsecond timestamps, and ``ticker``
best bid/ask frames. The first frame of a channel after subscribing is typed ``snapshot``.

``{"channel":"heartbeat"}`` about every second once subscribed. Not simulated: the 50-trade
history in the real trade snapshot. Acks and
pongs carry fixed ``time_in``/``time_out`` values because a dialect has no clock.

REST: ``GET /0/public/Trades?pair=&since=&count=`` (Get Recent Trades) from the trade book: up
to ``count`` (1..1000, default 1000) trades after ``since`` (ns, or whole seconds when it is
short), oldest first, keyed by Kraken's internal pair name (``XXBTZUSD``) whatever name the
request used (``XBTUSD``, ``BTCUSD``, ``BTC/USD``, ``XBT/USD``), with ``last`` (the newest
returned trade's time in ns). Errors come in the ``error`` array with HTTP 200, as Kraken sends
them. The venue's precision is reproduced: Kraken's engine clock is finer than the microsecond
the WebSocket prints, and REST prints it as a float of seconds. The simulated engine time of a
trade is its (microsecond) book time plus ``ENGINE_SUB_US_NS``, so the WebSocket (truncating to
the microsecond) still shows the book time, while REST shows the shortest float repr of the
engine time in seconds (``1688669597.8277364``), as Kraken's own example does. Prices and amounts
are padded with zeros to 5 and 8 decimals, as Kraken pads them to the pair's decimals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from ...symbols import ASSET_ALIASES, canonical_asset
from ...venues.base import Channel
from ..dialect import Dialect, Frame, RestReply, SimSession
from ..engine import SimQuote, SimTrade, TradeBook
from ..rest_params import is_uint, param

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


# REST (see the module docstring).
ENGINE_SUB_US_NS = 369  # the simulated engine time's part below the microsecond
_REST_COUNT = 1000  # "Return specific number of trades, up to 1000"
_V1 = {canonical: venue for venue, canonical in ASSET_ALIASES.items()}  # BTC -> XBT
_X_ASSETS = frozenset({"XBT", "ETH", "LTC", "XRP", "XDG", "XLM", "ETC", "ZEC", "XMR", "REP"})
_Z_ASSETS = frozenset({"USD", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF"})


def _rest_error(*errors: str) -> RestReply:
    """Kraken's REST errors: HTTP 200 with the ``error`` array ("HTTP status codes are generally
    not used by the API to indicate request success or failure")."""
    return RestReply(200, _encode({"error": list(errors)}))


def _internal_pair(base: str, quote: str) -> str:
    """Kraken's internal pair name, the key of a Trades answer: ``XXBTZUSD`` for BTC/USD (legacy
    assets are prefixed X or Z), ``SOLUSD`` for newer ones."""
    b, q = _V1.get(base, base), _V1.get(quote, quote)
    if b in _X_ASSETS and (q in _Z_ASSETS or q in _X_ASSETS):
        return f"X{b}{'Z' if q in _Z_ASSETS else 'X'}{q}"
    return f"{b}{q}"


def _rest_names(symbol: str) -> set[str]:
    """The pair names Kraken's REST accepts for a canonical symbol, upper case."""
    base, quote = symbol.split("-")[:2]
    b, q = _V1.get(base, base), _V1.get(quote, quote)
    return {f"{b}{q}", f"{base}{quote}", f"{b}/{q}", f"{base}/{quote}", _internal_pair(base, quote)}


def _padded(text: str, decimals: int) -> str:
    """``123.4`` -> ``123.40000``: Kraken pads REST decimals to the pair's precision."""
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.ljust(decimals, '0')}"


def _seconds(ns: int) -> msgspec.Raw:
    """A time as Kraken's REST prints it: the shortest repr of the float of seconds."""
    return msgspec.Raw(repr(ns / 1_000_000_000).encode())


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

    def rest(
        self,
        path: str,
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
        book: TradeBook,
    ) -> RestReply | None:
        if path != "/0/public/Trades":
            return None
        pair = param(query, "pair", "").upper()
        if not pair:
            return _rest_error("EGeneral:Invalid arguments")
        symbol = next((s for s in book.symbols() if pair in _rest_names(s)), None)
        if symbol is None:
            return _rest_error("EQuery:Unknown asset pair")
        since_text = param(query, "since", "0")
        count_text = param(query, "count", str(_REST_COUNT))
        if not is_uint(since_text):
            return _rest_error("EGeneral:Invalid arguments:since")
        if not is_uint(count_text):
            return _rest_error("EGeneral:Invalid arguments:count")
        since, count = int(since_text), int(count_text)
        if not 1 <= count <= _REST_COUNT:
            return _rest_error("EGeneral:Invalid arguments:count")
        if since < 10**12:  # whole seconds (the docs' example), else nanoseconds
            since *= 1_000_000_000
        # Engine time = book time + ENGINE_SUB_US_NS; trades strictly after ``since``.
        first = book.first_id_after(symbol, since - ENGINE_SUB_US_NS)
        trades = book.trades(symbol, first, first + count - 1)
        rows = [
            [_padded(t.price, 5), _padded(t.amount, 8), _seconds(t.ts_ns + ENGINE_SUB_US_NS),
             t.side[0], "m" if t.trade_id % 2 else "l", "", t.trade_id]
            for t in trades
        ]  # fmt: skip
        last = trades[-1].ts_ns + ENGINE_SUB_US_NS if trades else since
        base, quote = symbol.split("-")[:2]
        result = {_internal_pair(base, quote): rows, "last": str(last)}
        return RestReply(200, _encode({"error": [], "result": result}))


DIALECT = KrakenDialect()
