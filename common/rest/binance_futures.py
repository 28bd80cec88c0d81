"""Binance USD-M futures (``binance-futures``) past trades: ``GET /fapi/v1/aggTrades``.

Docs: https://developers.binance.com/docs/derivatives/usds-margined-futures/market-data/rest-api/Compressed-Aggregate-Trades-List
- "Get compressed, aggregate market trades. Market trades that fill in 100ms with the same price
  and the same taking side will have the quantity aggregated." "Request Weight: 20".
  ``fromId`` "ID to get aggregate trades from INCLUSIVE"; ``startTime``/``endTime`` "Timestamp in
  ms ... INCLUSIVE"; ``limit`` "Default 500; max 1000". "If both startTime and endTime are sent,
  time between startTime and endTime must be less than 1 hour." "Sending both startTime/endTime
  and fromId might cause response timeout, please send either fromId or startTime/endTime."
  The page states no depth limit for aggTrades (unlike ``/fapi/v1/historicalTrades``: "Only
  supports data from within the last 3 months", and it needs an API key), so reach is all
  history by aggregate id. "Only market trades will be aggregated and returned, which means the
  insurance fund trades and ADL trades won't be aggregated": as on the WebSocket.
- The ``@aggTrade`` stream is what the collector stores (``common.venues.binance_futures``): the
  aggregate id ``a`` is the row's ``trade_id``, ``T`` its time in ms (USD-M documents no
  microsecond switch), ``m`` the maker flag; the REST answer has the same ``a``/``p``/``q``/
  ``T``/``m``, and the row is built by the same ``Binance._trade``: the same key exactly.
- Limits: "The default rate limit per IP is 2,400/min" (request weight;
  https://www.binance.com/en/support/faq/rate-limits-on-binance-futures-281596e222414cdd9051664ea621cdc3,
  https://developers.binance.com/docs/derivatives/usds-margined-futures/general-info): we spend
  half, 60 pages (60,000 aggregates) a minute.

Id spans page by ``fromId``; time spans (a blind interval) walk hour windows
(``startTime``/``endTime`` < 1 h apart) until one has trades, then page by ``fromId`` from there.
"""

from __future__ import annotations

from typing import ClassVar

from ..venues.binance import Binance
from ..venues.binance_futures import VENUE
from .base import BadAnswer, Page, RateLimit, Request, Span
from .binance import AGGS, PAGE_SIZE, BinanceHistory, decode, next_after, param

AGG_TRADES = "/fapi/v1/aggTrades"
AGG_WEIGHT = 20
WINDOW_MS = 3_600_000 - 1  # "must be less than 1 hour" apart, both ends inclusive


class BinanceFuturesHistory(BinanceHistory):
    exchange = "binance-futures"
    default_url = "https://fapi.binance.com"
    limit = RateLimit(units=1200, per_s=60.0)  # half the 2,400 weight/min per IP
    reach = "all history, by aggregate trade id (aggTrades states no depth limit)"
    venue: ClassVar[Binance] = VENUE

    def headers(self, span: Span) -> tuple[tuple[str, str], ...]:
        return ()  # times are always ms on USD-M

    def by_id(self, span: Span, from_id: int) -> Request:
        return Request(
            AGG_TRADES,
            (("symbol", self.venue_symbol(span)), ("fromId", str(from_id)), ("limit", "1000")),
            (),
            AGG_WEIGHT,
        )

    def window(self, span: Span, start_ms: int) -> Request:
        """The aggregates of ``start_ms`` .. ``start_ms`` + 1 h - 1 ms (never past the span)."""
        end_ms = min(start_ms + WINDOW_MS, span.before_ns // 1_000_000)
        return Request(
            AGG_TRADES,
            (
                ("symbol", self.venue_symbol(span)),
                ("startTime", str(start_ms)),
                ("endTime", str(end_ms)),
                ("limit", "1000"),
            ),
            (),
            AGG_WEIGHT,
        )

    def cannot(self, span: Span) -> str | None:
        return None  # one trade stream (@aggTrade): a time span's rows have aggregate ids too

    def first(self, span: Span) -> Request:
        if span.by_id:
            assert span.first_id is not None
            return self.by_id(span, span.first_id)
        # ms rounded down (both span ends are included): the shell keeps the trades inside.
        return self.window(span, span.after_ns // 1_000_000)

    def page(self, span: Span, request: Request, body: bytes, recv_ns: int) -> Page:
        if request.path != AGG_TRADES:
            raise BadAnswer(f"{self.exchange}: no answer expected for {request.path}")
        rows = decode(AGGS, body, self.exchange)
        end = param(request, "endTime")
        asked = param(request, "fromId")
        # A window that ended before the span did is followed by the next one.
        following = None
        if end is not None and (int(end) + 1) * 1_000_000 <= span.before_ns:
            following = self.window(span, int(end) + 1)
        if not rows:
            return Page([], following)  # nothing more, or a quiet window
        ctx = self.context(span, recv_ns)
        venue_symbol = self.venue_symbol(span)
        trades = [self.venue._trade(venue_symbol, str(r.a), r.p, r.q, r.T, r.m, ctx) for r in rows]
        full = len(rows) >= PAGE_SIZE
        done, short = next_after(
            span, [r.a for r in rows], trades, int(asked) if asked is not None else None, full
        )
        if not full and following is not None and trades[-1].ts_ns <= span.before_ns:
            return Page(trades, following, short)  # the window is exhausted, the span is not
        return Page(trades, None if done else self.by_id(span, rows[-1].a + 1), short)


HISTORY = BinanceFuturesHistory()

__all__ = ["HISTORY", "BinanceFuturesHistory"]
