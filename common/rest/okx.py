"""OKX v5 past trades: ``GET /api/v5/market/history-trades``, paged backward.

Docs: https://www.okx.com/docs-v5/en/#order-book-trading-market-data-get-trades-history
- "Retrieve the recent transactions of an instrument from the last 3 months with pagination."
- "Rate Limit: 20 requests per 2 seconds", "Rate limit rule: IP" (older versions of the page
  said 10 per 2 s: we keep to 10, which is both the older figure and half the current one).
- ``type``: "Pagination Type 1: tradeId 2: timestamp. The default is 1"; ``after``: "Pagination
  of data to return records earlier than the requested tradeId or ts"; ``limit``: "The maximum
  and default both are 100". Answer ``{"code": "0", "msg": "", "data": [{"instId", "tradeId",
  "px", "sz", "side", "source", "ts"}]}``, newest first; ``ts`` "Trade time, Unix timestamp
  format in milliseconds"; ``side`` "Trade side of taker".
- Errors: ``code`` other than ``"0"``; "51001 | 200 | Instrument ID, Instrument ID code or
  Spread ID doesn't exist." (https://www.okx.com/docs-v5/en/#error-code-rest-api-trade).

Paging: the first request asks by time (``type=2``, ``after`` = the ms after the span's end, so
every trade up to and including its end ms); the next ones by trade id (``type=1``, ``after`` =
the oldest id received), which never skips trades sharing a millisecond across a page boundary.
Both ends of a time span are included, so paging stops only once a page holds a trade from
before the span's start (older trades of the start's own ms may still be on the next page); a
venue that runs out first (3-month reach) makes the rest unfillable (``Page.short``).

Same key as the WebSocket rows, exactly, for the ``trades-all`` channel: each REST row is decoded
into the venue module's own ``WireTrade`` and normalised by ``Okx._trade`` (same ``tradeId``,
``ts`` in ms -> ns, ``px``/``sz`` text, taker ``side``, ``-SWAP`` -> ``-PERP``).

NOT the same rows as the aggregated ``trades`` channel (the default): "The message is sent only
once per taker order, filled price, source. The count field is used to represent the number of
aggregated matches"; "The tradeId field in the message becomes the last trade ID in the
aggregation" (https://www.okx.com/docs-v5/en/#order-book-trading-market-data-ws-trades-channel).
This endpoint returns every fill: an aggregated WebSocket row with ``count`` > 1 (ids ``n-c+1 ..
n``, summed ``sz``) comes back over REST as ``count`` rows, the last with the same id and time
but a smaller ``sz``. Volume sums agree; row counts and that one row's amount do not. A span of
a ``trades`` feed (connection context other than ``trades-all``) is therefore refused before any
request (``cannot``).
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from ..records import Trade
from ..symbols import parse_symbol
from ..venues.base import DECODE_ERRORS
from ..venues.okx import TRADES_ALL, VENUE, WireTrade
from .base import BadAnswer, Page, RateLimit, Request, Span, TradeHistory

PATH = "/api/v5/market/history-trades"
PAGE_SIZE = 100  # "The maximum and default both are 100"
BY_ID = "1"  # pagination type "1: tradeId"
BY_TIME = "2"  # pagination type "2: timestamp"
NO_SUCH_INSTRUMENT = "51001"


class _Answer(msgspec.Struct, frozen=True):
    code: str
    msg: str = ""
    data: list[WireTrade] = msgspec.field(default_factory=list)


_answer = msgspec.json.Decoder(_Answer)


class OkxHistory(TradeHistory):
    exchange = "okx"
    default_url = "https://www.okx.com"
    limit: ClassVar[RateLimit] = RateLimit(units=10, per_s=2.0)
    reach = "about the last 3 months (history-trades), 100 trades a request"

    def first(self, span: Span) -> Request:
        if span.by_id:
            assert span.last_id is not None
            return _request(span, BY_ID, str(span.last_id + 1))
        # ts is in ms and ``after`` excludes its own: the span's end ms is included.
        return _request(span, BY_TIME, str(span.before_ns // 1_000_000 + 1))

    def cannot(self, span: Span) -> str | None:
        # https://www.okx.com/docs-v5/en/#order-book-trading-market-data-ws-trades-channel:
        # "trades" pushes one row per taker order and price ("tradeId" the last id, "count"
        # fills); history-trades serves single fills, so its rows are not the feed's rows.
        if span.context != TRADES_ALL:
            return (
                "okx's trades channel aggregates fills and REST serves single fills (other rows, "
                'other ids): set options = { trades = "trades-all" } to backfill okx'
            )
        return None

    def page(self, span: Span, request: Request, body: bytes, recv_ns: int) -> Page:
        try:
            answer = _answer.decode(body)
        except (*DECODE_ERRORS, msgspec.ValidationError) as exc:
            raise BadAnswer(f"okx: unreadable history-trades answer: {exc}") from None
        if answer.code != "0":
            if answer.code == NO_SUCH_INSTRUMENT:
                return Page([], None, short=f"okx: {_inst(span)}: {answer.msg[:200]} (51001)")
            raise BadAnswer(f"okx: history-trades error {answer.code[:20]}: {answer.msg[:200]}")
        if not answer.data:
            return Page([], None, short=_too_old(span, request))
        ctx = self.frame_context(span, recv_ns)
        inst = _inst(span)
        trades: list[Trade] = []
        for row in answer.data:
            if row.instId != inst:
                raise BadAnswer(f"okx: asked for {inst}, got a trade of {row.instId[:40]!r}")
            if not (row.tradeId.isascii() and row.tradeId.isdigit()):
                raise BadAnswer(f"okx: tradeId is not a number: {row.tradeId[:40]!r}")
            try:
                trades.append(VENUE._trade(row, ctx))
            except ValueError as exc:
                raise BadAnswer(f"okx: bad history-trades row: {exc}") from None
        oldest_id = min(int(t.trade_id) for t in trades)
        if span.by_id:
            assert span.first_id is not None
            covered = oldest_id <= span.first_id
        else:
            # strictly before: trades at ``after_ns`` belong to the span and an older one of
            # the same ms may be on the next page
            covered = min(t.ts_ns for t in trades) < span.after_ns
        if covered:
            return Page(trades, None)
        if len(answer.data) < PAGE_SIZE:  # the venue has nothing older
            return Page(trades, None, short=_too_old(span, request, oldest_id))
        return Page(trades, _request(span, BY_ID, str(oldest_id)))


def _inst(span: Span) -> str:
    return VENUE.venue_symbol(parse_symbol(span.symbol))


def _request(span: Span, kind: str, after: str) -> Request:
    params = (("instId", _inst(span)), ("type", kind), ("after", after), ("limit", str(PAGE_SIZE)))
    return Request(PATH, params)


def _too_old(span: Span, request: Request, oldest_id: int | None = None) -> str:
    asked = dict(request.params)
    what = "no trades" if oldest_id is None else f"nothing older than trade {oldest_id}"
    where = "id" if asked.get("type") == BY_ID else "time (ms)"
    return (
        f"okx: {_inst(span)}: history-trades has {what} before {where} {asked.get('after')}: "
        "it serves about the last 3 months"
    )


HISTORY = OkxHistory()

__all__ = ["HISTORY", "OkxHistory"]
