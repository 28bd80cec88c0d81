"""Coinbase Advanced Trade (``coinbase``): past trades from the public market-trades endpoint.

Docs (official):
- Get Public Market Trades, ``GET /api/v3/brokerage/market/products/{product_id}/ticker``:
  https://docs.cdp.coinbase.com/api-reference/advanced-trade-api/rest-api/public/get-public-market-trades
  (the authenticated twin, same parameters and answer:
  https://docs.cdp.coinbase.com/api-reference/advanced-trade-api/rest-api/products/get-market-trades).
  "Get snapshot information by product ID about the last trades (ticks) and best bid/ask";
  ``limit`` (required) "The number of trades to be returned", ``start`` / ``end`` "The UNIX
  timestamp indicating the start / end of the time interval" (whole seconds). No key needed.
- Answer ``{"trades": [{"trade_id", "product_id", "price", "size", "time", "side", ...}],
  "best_bid", "best_ask"}``: the same trade objects as the WebSocket ``market_trades`` channel
  (numeric-string ``trade_id``, RFC 3339 ``time`` with microseconds, ``side`` BUY/SELL), newest
  first.
- Rate limit: Advanced Trade public endpoints are throttled per IP at 10 requests/s
  (https://docs.cloud.coinbase.com/advanced-trade/docs/rest-api-rate-limits, the Advanced Trade
  REST rate-limits page; the Exchange API documents the same 10/s with bursts of 15:
  https://docs.cdp.coinbase.com/exchange/rest-api/rate-limits). Half of it is used here: the
  IP's budget is shared with anything else the host runs.

Paging (by time, backwards): the first request asks for the span's whole time window in whole
seconds, ``start = floor(after)`` .. ``end = floor(before) + 1``; an answer holds the newest
``limit`` trades of the window, and the next request moves ``end`` back to the second after the
oldest trade received (that second is asked again, whichever way the venue bounds ``end``: the
repeats are dropped by id in the shell). Paging stops when the span's first id (or start time) is
reached or the window is exhausted (a short page). A second holding more than ``LIMIT`` trades
cannot be paged through with whole-second bounds: the page says so (``short``).

The docs give no maximum for ``limit``; 1000 is what client libraries ask for (and what the
simulator allows). Depth is not documented: a window the venue answers without the span's first id
gives ``short``.

Keys: every trade goes through the WebSocket parser's own conversion (``Coinbase._trade``), so
symbol, ``trade_id``, ``ts_ns`` (µs, as on the WebSocket), price, amount and the side mapping
(Coinbase reports the MAKER side; the stored side is the taker's) are the WebSocket row's.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from ..records import Trade
from ..symbols import parse_symbol
from ..venues.base import DECODE_ERRORS
from ..venues.coinbase import VENUE, WireTrade
from .base import BadAnswer, Page, RateLimit, Request, Span, TradeHistory

LIMIT = 1000  # trades per request (the docs name no maximum; see the module docstring)
_NS = 1_000_000_000


class _Answer(msgspec.Struct, frozen=True):
    trades: list[WireTrade] | None = None
    # An error answer has these instead (``{"error": "...", "message": "..."}``).
    error: str | None = None
    message: str | None = None


_answer = msgspec.json.Decoder(_Answer)


def product_id(symbol: str) -> str:
    """The Coinbase product id of a canonical spot symbol (``BTC-USD`` -> ``BTC-USD``)."""
    return VENUE.venue_symbol(parse_symbol(symbol))


def trades_path(product: str) -> str:
    return f"/api/v3/brokerage/market/products/{product}/ticker"


def _window(request: Request) -> tuple[int, int]:
    params = dict(request.params)
    return int(params["start"]), int(params["end"])


class CoinbaseHistory(TradeHistory):
    exchange: ClassVar[str] = "coinbase"
    default_url: ClassVar[str] = "https://api.coinbase.com"
    limit: ClassVar[RateLimit] = RateLimit(units=5, per_s=1.0)  # half of 10/s per IP
    reach: ClassVar[str] = (
        "by time window (start/end in whole seconds, newest first); depth not documented"
    )

    def first(self, span: Span) -> Request:
        return self._request(span.symbol, span.after_ns // _NS, span.before_ns // _NS + 1)

    @staticmethod
    def _request(symbol: str, start_s: int, end_s: int) -> Request:
        params = (("limit", str(LIMIT)), ("start", str(start_s)), ("end", str(end_s)))
        return Request(trades_path(product_id(symbol)), params)

    def page(self, span: Span, request: Request, body: bytes, recv_ns: int) -> Page:
        trades = self._trades(span, body, recv_ns)
        start_s, end_s = _window(request)
        if not trades:
            return Page([], None, self._not_reached(span, None, start_s, end_s))
        oldest_ts = min(t.ts_ns for t in trades)
        ids = [int(t.trade_id) for t in trades if t.trade_id.isdigit() and len(t.trade_id) < 19]
        lowest = min(ids) if ids else None
        if span.by_id:
            assert span.first_id is not None
            reached = lowest is not None and lowest <= span.first_id
        else:
            reached = oldest_ts <= span.after_ns
        if reached:
            return Page(trades, None)
        if len(trades) < LIMIT:  # the window is exhausted without reaching the span's start
            return Page(trades, None, self._not_reached(span, lowest, start_s, end_s))
        next_end = oldest_ts // _NS + 1
        if next_end >= end_s:
            return Page(
                trades,
                None,
                f"more than {LIMIT} trades in the second before end={end_s}: whole-second "
                "windows cannot page further back",
            )
        return Page(trades, self._request(span.symbol, start_s, next_end))

    @staticmethod
    def _not_reached(span: Span, lowest: int | None, start_s: int, end_s: int) -> str | None:
        if not span.by_id:
            return None  # a time span: the venue had no more trades in it
        seen = f"the oldest id it returned is {lowest}" if lowest is not None else "no ids"
        return f"the venue serves no trade {span.first_id} in [{start_s}, {end_s}): {seen}"

    def _trades(self, span: Span, body: bytes, recv_ns: int) -> list[Trade]:
        try:
            answer = _answer.decode(body)
        except (*DECODE_ERRORS, msgspec.ValidationError) as exc:
            raise BadAnswer(f"coinbase: unreadable market trades answer: {exc}") from None
        if answer.trades is None:
            what = answer.message or answer.error or "no trades field"
            raise BadAnswer(f"coinbase: market trades answer without trades: {what}")
        product = product_id(span.symbol)
        ctx = self.frame_context(span, recv_ns, product)
        out = []
        for wire in answer.trades:
            if wire.product_id != product:
                raise BadAnswer(f"coinbase: asked for {product}, got a {wire.product_id} trade")
            try:
                # The WebSocket parser's own conversion: the same key, side and decimals.
                out.append(VENUE._trade(wire, ctx))
            except ValueError as exc:
                raise BadAnswer(f"coinbase: bad trade {wire.trade_id!r}: {exc}") from None
        return out


HISTORY = CoinbaseHistory()
