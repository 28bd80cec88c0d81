"""Binance spot as the simulator speaks it: ``/stream`` or ``/ws`` with SUBSCRIBE requests, or
streams in the URL (``/stream?streams=a/b``, ``/ws/<stream>``); server pings every 20 s. Times
are ms, or µs when the URL carries ``timeUnit=MICROSECOND`` (spot only, as documented)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from ...venues.base import Channel, split_concatenated
from ..dialect import Dialect, Frame, SimSession
from ..engine import SimQuote, SimTrade

_CHANNELS = {"trade": Channel.TRADES, "aggTrade": Channel.TRADES, "bookTicker": Channel.QUOTES}


def _ms(ns: int) -> int:
    return ns // 1_000_000


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


DIALECT = BinanceDialect()
