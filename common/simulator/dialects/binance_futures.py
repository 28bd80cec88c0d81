"""Binance USD-M futures as the simulator speaks it: routed paths ``/market`` (``@aggTrade``)
and ``/public`` (``@bookTicker``), each with ``/stream`` (combined, wrapped events) or ``/ws``;
SUBSCRIBE requests acked with ``{"result": null, "id": n}``; server pings every 3 minutes.

Like the venue, a stream subscribed on the wrong route is acked but never delivered ("Streams
belonging to /market ... will not push data on unrouted connections"), and an unrouted
connection (``/ws``, ``/stream``) only gets ``/public`` streams.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from ...venues.base import Channel, split_concatenated
from ..dialect import Frame, RestReply, SimSession
from ..engine import SimQuote, SimTrade, TradeBook
from .binance import BinanceDialect

_CHANNELS = {"aggTrade": Channel.TRADES, "bookTicker": Channel.QUOTES}
_ROUTE_OF = {"aggTrade": "/market", "bookTicker": "/public"}
_ROUTES = ("/market", "/public")


def _ms(ns: int) -> int:
    return ns // 1_000_000


def _venue(symbol: str) -> str:
    """``BTC-USDT-PERP`` -> ``BTCUSDT``; ``BTC-USDT-250627`` -> ``BTCUSDT_250627``."""
    base, quote, suffix = symbol.split("-")
    return f"{base}{quote}" if suffix == "PERP" else f"{base}{quote}_{suffix}"


def _canonical(lower: str) -> str | None:
    root, sep, expiry = lower.upper().partition("_")
    try:
        base, quote = split_concatenated(root)
    except ValueError:
        return None
    if not sep:
        return f"{base}-{quote}-PERP"
    if len(expiry) == 6 and expiry.isdigit():
        return f"{base}-{quote}-{expiry}"
    return None


def _route(path: str) -> tuple[str, str]:
    """``/market/stream`` -> ``("/market", "/stream")``; unrouted paths are ``/public``'s."""
    route = urlsplit(path).path
    for prefix in _ROUTES:
        if route == prefix or route.startswith(prefix + "/"):
            return prefix, route[len(prefix) :]
    return "/public", route


class BinanceFuturesDialect(BinanceDialect):
    exchange = "binance-futures"
    server_ping_s = 180.0  # "The websocket server will send a ping frame every 3 minutes"
    paths = ("/market/stream", "/market/ws", "/public/stream", "/public/ws", "/stream", "/ws")
    futures = True

    def _subscribe(self, session: SimSession, stream: str) -> bool:
        lower, _, kind = stream.partition("@")
        channel = _CHANNELS.get(kind)
        symbol = _canonical(lower)
        if channel is None or symbol is None:
            return False
        if _ROUTE_OF[kind] == _route(session.path)[0]:
            session.subscriptions[(channel, symbol)] = kind
        return True  # on the wrong route Binance acks and then stays silent

    def stream_name(self, symbol: str, kind: str) -> str:
        return f"{_venue(symbol).lower()}@{kind}"

    def _wrap(self, session: SimSession, stream: str, event: dict[str, object]) -> Frame:
        if _route(session.path)[1].startswith("/stream"):
            return json.dumps({"stream": stream, "data": event}, separators=(",", ":"))
        return json.dumps(event, separators=(",", ":"))

    def trade_frames(self, session: SimSession, trades: Sequence[SimTrade]) -> list[Frame]:
        frames = []
        for t in trades:
            venue = _venue(t.symbol)
            ms = _ms(t.ts_ns)
            event: dict[str, object] = {
                "e": "aggTrade", "E": ms, "s": venue, "a": t.trade_id, "p": t.price,
                "q": t.amount, "f": t.trade_id, "l": t.trade_id, "T": ms,
                "m": t.side == "sell",
            }  # fmt: skip
            frames.append(self._wrap(session, f"{venue.lower()}@aggTrade", event))
        return frames

    def quote_frames(self, session: SimSession, quote: SimQuote) -> list[Frame]:
        venue = _venue(quote.symbol)
        ms = _ms(quote.ts_ns)
        event: dict[str, object] = {
            "e": "bookTicker", "u": quote.update_id, "E": ms, "T": ms, "s": venue,
            "b": quote.bid_price, "B": quote.bid_amount, "a": quote.ask_price,
            "A": quote.ask_amount,
        }  # fmt: skip
        return [self._wrap(session, f"{venue.lower()}@bookTicker", event)]

    def expected_trade_id(self, trade: SimTrade) -> str | None:
        return str(trade.trade_id)  # the plain aggregate id, no prefix on futures

    def rest(
        self,
        path: str,
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
        book: TradeBook,
    ) -> RestReply | None:
        """``/fapi/v1/aggTrades`` only (times always ms: USD-M documents no time unit header);
        each simulated trade is its own aggregate, as on the WebSocket."""
        if path != "/fapi/v1/aggTrades":
            return None
        return self._agg_trades(query, book, 1_000_000)

    def rest_canonical(self, venue_symbol: str) -> str | None:
        if venue_symbol != venue_symbol.upper():
            return None
        return _canonical(venue_symbol)


DIALECT = BinanceFuturesDialect()
