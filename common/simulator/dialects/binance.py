"""Binance spot as the simulator speaks it: ``/stream`` or ``/ws`` with SUBSCRIBE requests, or
streams in the URL (``/stream?streams=a/b``, ``/ws/<stream>``); server pings every 20 s. Times
are ms, or µs when the URL carries ``timeUnit=MICROSECOND`` (spot only, as documented)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

from ...venues.base import Channel, split_concatenated
from ..dialect import Dialect, Frame, RestReply, SimSession
from ..engine import SimQuote, SimTrade, TradeBook
from ..rest_params import param, uint_param

_CHANNELS = {"trade": Channel.TRADES, "aggTrade": Channel.TRADES, "bookTicker": Channel.QUOTES}


def _ms(ns: int) -> int:
    return ns // 1_000_000


# REST (https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints):
# historicalTrades and aggTrades take ``limit`` "Default: 500; Maximum: 1000".
_REST_LIMIT_DEFAULT = 500
_REST_LIMIT_MAX = 1000
# "X-MBX-TIME-UNIT ... Supported values: MILLISECOND millisecond MICROSECOND microsecond"
_TIME_UNITS = {
    "MILLISECOND": 1_000_000,
    "millisecond": 1_000_000,
    "MICROSECOND": 1_000,
    "microsecond": 1_000,
}
_HOUR_MS = 3_600_000


class _RestError(Exception):
    """A bad parameter: HTTP 400 with Binance's error JSON."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.reply = RestReply(400, json.dumps({"code": code, "msg": msg}))


def _rest_int(query: Mapping[str, list[str]], name: str) -> int | None:
    try:
        return uint_param(query, name)
    except ValueError:
        raise _RestError(
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
        ) from None


def _ns_per_unit(session: SimSession) -> int:
    """1_000 when the spot URL asks for µs ("timeUnit=MICROSECOND or timeUnit=microsecond"),
    else 1_000_000 (ms, the default); cached per session."""
    per = session.state.get("ns_per_unit")
    if per is None:
        units = parse_qs(urlsplit(session.path).query).get("timeUnit", [])
        per = 1_000 if [u.upper() for u in units] == ["MICROSECOND"] else 1_000_000
        session.state["ns_per_unit"] = per
    return int(per)


class BinanceDialect(Dialect):
    exchange = "binance"
    paths: tuple[str, ...] = ("/stream", "/ws")
    futures = False

    def accepts(self, path: str) -> bool:
        route = urlsplit(path).path
        return any(route == p or route.startswith(p + "/") for p in self.paths)

    def _subscribe(self, session: SimSession, stream: str) -> bool:
        lower, _, kind = stream.partition("@")
        channel = _CHANNELS.get(kind)
        if channel is None:
            return False
        try:
            base, quote = split_concatenated(lower)
        except ValueError:
            return False
        session.subscriptions[(channel, f"{base}-{quote}")] = kind
        return True

    def greeting(self, session: SimSession) -> list[Frame]:
        parts = urlsplit(session.path)
        for stream in parse_qs(parts.query).get("streams", [""])[0].split("/"):
            if stream:
                self._subscribe(session, stream)
        for p in self.paths:
            if parts.path.startswith(p + "/"):
                self._subscribe(session, parts.path[len(p) + 1 :])
        return []

    def on_message(self, session: SimSession, message: Frame) -> list[Frame]:
        try:
            request = json.loads(message)
            method, ident = request["method"], request["id"]
        except (ValueError, KeyError, TypeError):
            return [json.dumps({"code": 2, "msg": "Invalid request: malformed JSON or keys"})]
        if method == "SUBSCRIBE":
            for stream in request.get("params", []):
                if not self._subscribe(session, stream):
                    return [json.dumps({"code": 2, "msg": f"Invalid stream {stream}", "id": ident})]
            return [json.dumps({"result": None, "id": ident})]
        if method == "LIST_SUBSCRIPTIONS":
            names = [
                self.stream_name(sym, kind) for (_, sym), kind in session.subscriptions.items()
            ]
            return [json.dumps({"result": names, "id": ident})]
        return [json.dumps({"code": 2, "msg": f"Unknown method {method}", "id": ident})]

    def stream_name(self, symbol: str, kind: str) -> str:
        return f"{symbol.replace('-', '').lower()}@{kind}"

    def _wrap(self, session: SimSession, stream: str, event: dict[str, object]) -> Frame:
        if urlsplit(session.path).path.startswith("/stream"):
            return json.dumps({"stream": stream, "data": event}, separators=(",", ":"))
        return json.dumps(event, separators=(",", ":"))

    def trade_frames(self, session: SimSession, trades: Sequence[SimTrade]) -> list[Frame]:
        if not self.futures and trades:
            kind = session.subscriptions.get((Channel.TRADES, trades[0].symbol), "trade")
            if kind == "trade":
                return self._fast_trades(session, trades)
        frames = []
        for t in trades:
            venue = t.symbol.replace("-", "")
            kind = session.subscriptions.get((Channel.TRADES, t.symbol), "trade")
            stamp = _ms(t.ts_ns) if self.futures else t.ts_ns // _ns_per_unit(session)
            event: dict[str, object]
            if kind == "aggTrade":
                event = {
                    "e": "aggTrade",
                    "E": stamp,
                    "s": venue,
                    "a": t.trade_id,
                    "p": t.price,
                    "q": t.amount,
                    "f": t.trade_id,
                    "l": t.trade_id,
                    "T": stamp,
                    "m": t.side == "sell",
                }
                if not self.futures:
                    event["M"] = True
            else:
                event = {
                    "e": "trade",
                    "E": stamp,
                    "s": venue,
                    "t": t.trade_id,
                    "p": t.price,
                    "q": t.amount,
                    "T": stamp,
                    "m": t.side == "sell",
                    "M": True,
                }
            frames.append(self._wrap(session, f"{venue.lower()}@{kind}", event))
        return frames

    def trade_frames_batch(self, session: SimSession, trades: Sequence[SimTrade]) -> list[Frame]:
        return self.trade_frames(session, trades)  # one frame per trade, any number at once

    def _fast_trades(self, session: SimSession, trades: Sequence[SimTrade]) -> list[Frame]:
        """Spot ``trade`` events by string template: the benchmark's firehose path."""
        venue = trades[0].symbol.replace("-", "")
        wrap = session.state.get("wrap")
        if wrap is None:
            wrap = session.state["wrap"] = urlsplit(session.path).path.startswith("/stream")
        head = f'{{"stream":"{venue.lower()}@trade","data":' if wrap else ""
        tail = "}" if wrap else ""
        per = _ns_per_unit(session)
        frames: list[Frame] = []
        for t in trades:
            stamp = t.ts_ns // per
            maker = "true" if t.side == "sell" else "false"
            frames.append(
                f'{head}{{"e":"trade","E":{stamp},"s":"{venue}","t":{t.trade_id},"p":"{t.price}",'
                f'"q":"{t.amount}","T":{stamp},"m":{maker},"M":true}}{tail}'
            )
        return frames

    def quote_frames(self, session: SimSession, quote: SimQuote) -> list[Frame]:
        venue = quote.symbol.replace("-", "")
        event: dict[str, object] = {
            "u": quote.update_id,
            "s": venue,
            "b": quote.bid_price,
            "B": quote.bid_amount,
            "a": quote.ask_price,
            "A": quote.ask_amount,
        }
        if self.futures:
            ms = _ms(quote.ts_ns)
            event = {"e": "bookTicker", **event, "E": ms, "T": ms}
        return [self._wrap(session, f"{venue.lower()}@bookTicker", event)]

    def expected_trade_id(self, trade: SimTrade) -> str | None:
        return str(trade.trade_id)

    # -- REST ----------------------------------------------------------------------------------
    def rest(
        self,
        path: str,
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
        book: TradeBook,
    ) -> RestReply | None:
        """``/api/v3/historicalTrades`` (by ``fromId``) and ``/api/v3/aggTrades`` (each
        simulated trade is its own aggregate, as on the WebSocket), all history deep; times in
        ms, or µs with the header ``X-MBX-TIME-UNIT: MICROSECOND``."""
        if path not in ("/api/v3/historicalTrades", "/api/v3/aggTrades"):
            return None
        try:
            unit = headers.get("x-mbx-time-unit")
            per = _TIME_UNITS.get(unit) if unit is not None else 1_000_000
            if per is None:
                raise _RestError(-1100, f"Invalid X-MBX-TIME-UNIT: {unit}")
            if path == "/api/v3/aggTrades":
                return self._agg_trades(query, book, per)
            symbol, limit = self._rest_symbol(query, book), self._rest_limit(query)
            from_id = _rest_int(query, "fromId")
            first = book.last_id(symbol) - limit + 1 if from_id is None else from_id
            trades = book.trades(symbol, first, first + limit - 1)
        except _RestError as exc:
            return exc.reply
        rows = [
            {
                "id": t.trade_id,
                "price": t.price,
                "qty": t.amount,
                "quoteQty": str(Decimal(t.price) * Decimal(t.amount)),
                "time": t.ts_ns // per,
                "isBuyerMaker": t.side == "sell",
                "isBestMatch": True,
            }
            for t in trades
        ]
        return RestReply(200, json.dumps(rows, separators=(",", ":")))

    def _rest_symbol(self, query: Mapping[str, list[str]], book: TradeBook) -> str:
        """The canonical symbol of the ``symbol`` parameter, if the book knows it."""
        name = param(query, "symbol")
        if not name:
            raise _RestError(
                -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
            )
        symbol = self.rest_canonical(name)
        if symbol is None or symbol not in book.times:
            raise _RestError(-1121, "Invalid symbol.")
        return symbol

    def rest_canonical(self, venue_symbol: str) -> str | None:
        if venue_symbol != venue_symbol.upper():
            return None
        try:
            base, quote = split_concatenated(venue_symbol)
        except ValueError:
            return None
        return f"{base}-{quote}"

    @staticmethod
    def _rest_limit(query: Mapping[str, list[str]]) -> int:
        limit = _rest_int(query, "limit")
        if limit is None:
            return _REST_LIMIT_DEFAULT
        if not 1 <= limit <= _REST_LIMIT_MAX:
            raise _RestError(-1130, "Data sent for parameter 'limit' is not valid.")
        return limit

    def _agg_trades(self, query: Mapping[str, list[str]], book: TradeBook, per: int) -> RestReply:
        """``aggTrades``: by ``fromId``, by ``startTime``/``endTime`` (inclusive; "Timestamp
        parameters ... can be passed in milliseconds or microseconds" on spot, ms on USD-M,
        which also wants them "less than 1 hour" apart), else the most recent."""
        try:
            symbol, limit = self._rest_symbol(query, book), self._rest_limit(query)
            from_id = _rest_int(query, "fromId")
            start, end = _rest_int(query, "startTime"), _rest_int(query, "endTime")
            if from_id is not None and (start is not None or end is not None):
                raise _RestError(-1128, "Combination of optional parameters invalid.")
            start_ns, end_ns = self._param_ns(start), self._param_ns(end)
            if self.futures and start is not None and end is not None and end - start >= _HOUR_MS:
                raise _RestError(-1127, "More than 1 hours between startTime and endTime.")
        except _RestError as exc:
            return exc.reply
        last = book.last_id(symbol)
        if end_ns is not None:  # inclusive: every trade before the next unit
            last = book.first_id_at(symbol, end_ns + self._param_unit_ns(end)) - 1
        if from_id is not None:
            first = from_id
        elif start_ns is not None:
            first = book.first_id_at(symbol, start_ns)
        else:
            first = last - limit + 1
        trades = book.trades(symbol, first, min(last, first + limit - 1))
        rows = []
        for t in trades:
            row: dict[str, object] = {
                "a": t.trade_id, "p": t.price, "q": t.amount, "f": t.trade_id,
                "l": t.trade_id, "T": t.ts_ns // per, "m": t.side == "sell",
            }  # fmt: skip
            if not self.futures:
                row["M"] = True
            rows.append(row)
        return RestReply(200, json.dumps(rows, separators=(",", ":")))

    def _param_unit_ns(self, value: int | None) -> int:
        # Spot takes ms or µs and tells them apart by size (µs since 1973 has 16 digits); USD-M
        # documents ms only.
        if value is not None and not self.futures and value >= 10**14:
            return 1_000
        return 1_000_000

    def _param_ns(self, value: int | None) -> int | None:
        return None if value is None else value * self._param_unit_ns(value)


DIALECT = BinanceDialect()
