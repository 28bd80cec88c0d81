"""Bybit v5 past trades: ``GET /v5/market/recent-trade``, SHALLOW (no pagination).

Docs: https://bybit-exchange.github.io/docs/v5/market/recent-trade
- "Query recent public trading data in Bybit"; parameters ``category`` (``spot``, ``linear``,
  ``inverse``, ``option``), ``symbol`` ("uppercase only"), ``limit`` "spot: [1,60], default: 60;
  others: [1,1000], default: 500". No cursor: only the newest ``limit`` trades, newest first.
- Answer ``{"retCode": 0, "retMsg": "OK", "result": {"category", "list": [{"execId", "symbol",
  "price", "size", "side", "time", "isBlockTrade", ...}]}, "retExtInfo": {}, "time": ..}``;
  ``side`` "Side of taker Buy, Sell"; ``time`` "Trade time (ms)" (a string); ``seq`` and
  ``isRPITrade`` were added in 2025 (https://bybit-exchange.github.io/docs/changelog/v5) and are
  not needed here. Errors: ``retCode`` other than 0 (10001 "Request parameter error",
  https://bybit-exchange.github.io/docs/v5/error), with HTTP 200.
- Rate limit, https://bybit-exchange.github.io/docs/v5/rate-limit: per IP "No more than 600
  requests are allowed in any 5-second window", shared by "All traffic to api.bybit.com"; "If
  you receive an HTTP 403 (Access Denied) response, your IP has been either temporarily or
  permanently banned" ("usually 30 minutes"). We use a tenth of it: the producers' own REST
  calls (none today) and other tools on the host share the budget.

So a gap is fillable only while it lies within the last 60 (spot) or 1000 (linear) trades of the
symbol: the page is the whole answer, and unless it holds a trade from before the span's start
(the start is included, and older trades of its own ms may have been cut off) the rest of the
span is unfillable (``Page.short``).

Same key as the WebSocket rows, exactly: ``execId`` is the ``i`` of ``publicTrade`` (numeric
text on spot, a UUID on linear), ``time`` the same ms as ``T``. Each REST row is turned into the
venue module's ``WireTrade`` and normalised by ``Bybit._trade``, the WebSocket parser's own code.
The category comes from the canonical symbol (``-PERP``: ``linear``), which the WebSocket parser
derived from the connection context (``spot``/``linear``) in the first place.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from ..records import Trade
from ..symbols import parse_symbol
from ..venues.base import DECODE_ERRORS, epoch_int
from ..venues.bybit import LINEAR, SPOT, VENUE, WireTrade
from .base import BadAnswer, Page, RateLimit, Request, Span, TradeHistory

PATH = "/v5/market/recent-trade"
# "spot: [1,60] ... others: [1,1000]": the most Bybit serves at all.
DEPTH = {SPOT: 60, LINEAR: 1000}


class _Row(msgspec.Struct, frozen=True):
    execId: str
    symbol: str
    price: str
    size: str
    side: str
    time: int | str  # a string in the docs; a number would mean the same ms
    isBlockTrade: bool = False


class _Result(msgspec.Struct, frozen=True):
    rows: list[_Row] = msgspec.field(default_factory=list, name="list")
    category: str | None = None


class _Answer(msgspec.Struct, frozen=True):
    retCode: int
    retMsg: str = ""
    result: msgspec.Raw = msgspec.Raw()  # an empty object on errors


_answer = msgspec.json.Decoder(_Answer)
_result = msgspec.json.Decoder(_Result)


class BybitHistory(TradeHistory):
    exchange = "bybit"
    default_url = "https://api.bybit.com"
    limit: ClassVar[RateLimit] = RateLimit(units=60, per_s=5.0)
    reach = "the last 60 trades (spot) or 1000 (linear): recent-trade has no pagination"

    def first(self, span: Span) -> Request:
        category, name = _where(span)
        params = (("category", category), ("symbol", name), ("limit", str(DEPTH[category])))
        return Request(PATH, params)

    def page(self, span: Span, request: Request, body: bytes, recv_ns: int) -> Page:
        try:
            answer = _answer.decode(body)
            if answer.retCode != 0:
                raise BadAnswer(
                    f"bybit: recent-trade error {answer.retCode}: {answer.retMsg[:200]}"
                )
            rows = _result.decode(answer.result).rows
        except (*DECODE_ERRORS, msgspec.ValidationError) as exc:
            raise BadAnswer(f"bybit: unreadable recent-trade answer: {exc}") from None
        category, name = _where(span)
        # The subscribed map pins the canonical symbol as the WebSocket parser's does.
        ctx = self.frame_context(span, recv_ns, name, context=category)
        trades: list[Trade] = []
        for row in rows:
            if row.symbol != name:
                raise BadAnswer(f"bybit: asked for {name}, got a trade of {row.symbol[:40]!r}")
            try:
                wire = WireTrade(
                    T=epoch_int(row.time, "time"),
                    s=row.symbol,
                    S=row.side,
                    v=row.size,
                    p=row.price,
                    i=row.execId,
                    BT=row.isBlockTrade,
                )
                trades.append(VENUE._trade(wire, ctx))
            except ValueError as exc:
                raise BadAnswer(f"bybit: bad recent-trade row: {exc}") from None
        oldest = min((t.ts_ns for t in trades), default=None)
        if oldest is not None and oldest < span.after_ns:  # ms ``after_ns`` is complete
            return Page(trades, None)
        what = "no trades" if oldest is None else f"its oldest trade at {oldest} ns"
        return Page(
            trades,
            None,
            short=(
                f"bybit: {category} {name}: recent-trade serves only the last "
                f"{DEPTH[category]} trades ({what}), not back to {span.after_ns} ns"
            ),
        )

    def refusal(self, status: int, body: bytes) -> str | None:
        if status == 403:  # the IP is banned for a while ("usually 30 minutes"): retry later
            return None
        return super().refusal(status, body)


def _where(span: Span) -> tuple[str, str]:
    """(category, Bybit name) of the span's symbol; ValueError for what Bybit is not used for."""
    symbol = parse_symbol(span.symbol)
    return VENUE.category(symbol), VENUE.venue_symbol(symbol)


HISTORY = BybitHistory()

__all__ = ["HISTORY", "BybitHistory"]
