"""Binance spot (``binance``) past trades: ``GET /api/v3/historicalTrades`` by trade id.

Docs (https://developers.binance.com/docs/binance-spot-api-docs/rest-api):
- Old trade lookup, https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints#old-trade-lookup:
  ``GET /api/v3/historicalTrades`` "Get older trades", "Weight: 25", ``limit`` "Default: 500;
  Maximum: 1000", ``fromId`` "TradeId to fetch from. Default gets most recent trades", "Data
  Source: Database" (all history). No security type is stated ("If unspecified, the security
  type is NONE"): no API key since 2023 (it used to be MARKET_DATA; binance-connector-python
  v3.2.0: "Changes to GET /api/v3/historicalTrades: api key is not required").
  ``GET /api/v3/trades`` is the "Recent trades list" from Memory (the latest ``limit`` trades
  only): no use for a gap.
- Times: "All time and timestamp related fields in the JSON responses are in milliseconds by
  default. To receive the information in microseconds, please add the header
  X-MBX-TIME-UNIT:MICROSECOND" (General API Information). The span's ``context`` is the
  WebSocket connection's time unit (``common.venues.binance.TIME_UNIT_CONTEXTS``): a
  ``"microsecond"`` span asks in µs, so REST and WebSocket times are the same integer.
- Limits: REQUEST_WEIGHT 6,000 per minute per IP (CHANGELOG 2023-08-25, "The REQUEST_WEIGHT rate
  limit for SPOT API has been adjusted to 6,000 every minute"); "Repeatedly violating rate
  limits and/or failing to back off after receiving 429s will result in an automated IP ban
  (HTTP status 418)". A backfill shares the IP with the collector, so it spends half.
  https://developers.binance.com/docs/binance-spot-api-docs/CHANGELOG
- "HTTP 403 return code is used when a WAF (Web Application Firewall) rule has been violated.
  This can indicate a rate limit violation or a security block": not final (:meth:`refusal`).
- Compressed/Aggregate trades list,
  https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints#compressedaggregate-trades-list:
  ``GET /api/v3/aggTrades``, "Weight: 4", ``fromId`` "ID to get aggregate trades from
  INCLUSIVE", ``limit`` "Default 500; max 1000", "Data Source: Database"; each element
  ``a`` (aggregate tradeId), ``p``, ``q``, ``f``/``l`` (first/last tradeId), ``T``, ``m``,
  ``M``. The same time unit header applies.
- Only id spans: Binance's trade ids and aggregate trade ids are each consecutive, so its gaps
  are id gaps (``consumer.gaps``), each in its id space: a span whose ``id_prefix`` is
  ``agg-`` (rows of ``@aggTrade``) is paged on ``aggTrades``, any other on
  ``historicalTrades``. A time span is refused (:meth:`cannot`): its context (the time unit)
  does not say which of the two streams the rows came from, and filling one feed's interval
  with the other's rows would store the same trades twice under other keys.

Key: a fetched trade is built by the WebSocket parser's own ``Binance._trade`` from the same
fields (``id`` = ``t``, ``time`` = ``T``, ``isBuyerMaker`` = ``m``), so it is the row a ``@trade``
event makes: plain ``trade_id``. An aggregate (``a``, ``T``, ``m``) is the row an ``@aggTrade``
event makes: ``trade_id`` ``agg-<a>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import ClassVar, TypeVar

import msgspec

from ..records import Trade
from ..symbols import parse_symbol
from ..venues.base import DECODE_ERRORS, FrameContext
from ..venues.binance import MICROSECOND, VENUE, Binance
from .base import BadAnswer, Page, RateLimit, Request, Span, TradeHistory

HISTORICAL = "/api/v3/historicalTrades"
PAGE_SIZE = 1000  # "limit ... Default: 500; Maximum: 1000"
HISTORICAL_WEIGHT = 25
SPOT_AGG_TRADES = "/api/v3/aggTrades"
SPOT_AGG_WEIGHT = 4
TIME_UNIT_HEADER = "X-MBX-TIME-UNIT"

T = TypeVar("T")


class RestTrade(msgspec.Struct, frozen=True):
    """One element of the historicalTrades answer (``quoteQty``, ``isBestMatch`` ignored)."""

    id: int
    price: str
    qty: str
    time: int
    isBuyerMaker: bool


class RestAggTrade(msgspec.Struct, frozen=True):
    """One element of an aggTrades answer (USD-M's, ``common.rest.binance_futures``; ``f``,
    ``l`` and spot's ``M`` ignored)."""

    a: int
    p: str
    q: str
    T: int
    m: bool


class RestError(msgspec.Struct, frozen=True):
    """``{"code": -1121, "msg": "Invalid symbol."}``: every Binance error."""

    code: int
    msg: str


TRADES = msgspec.json.Decoder(list[RestTrade])
AGGS = msgspec.json.Decoder(list[RestAggTrade])
_error = msgspec.json.Decoder(RestError)


def decode(decoder: msgspec.json.Decoder[T], body: bytes, exchange: str) -> T:
    """``decoder.decode(body)``; anything else than the documented answer is BadAnswer."""
    try:
        return decoder.decode(body)
    except DECODE_ERRORS as exc:
        raise BadAnswer(f"{exchange}: unexpected REST answer: {exc}") from None


def param(request: Request, name: str) -> str | None:
    for key, value in request.params:
        if key == name:
            return value
    return None


def next_after(
    span: Span, ids: Sequence[int], trades: Sequence[Trade], asked_from: int | None, full: bool
) -> tuple[bool, str | None]:
    """Whether paging is done after a page of ``ids`` (ascending, the venue's cursor ids) and
    the reason the venue cannot serve part of the span, if it skipped ids it was asked for.

    Raises:
        BadAnswer: ids not ascending, or before the one asked from.
    """
    for a, b in pairwise(ids):
        if b <= a:
            raise BadAnswer(f"{span.exchange}: REST trade ids not ascending ({a} then {b})")
    if asked_from is not None and ids[0] < asked_from:
        raise BadAnswer(f"{span.exchange}: asked from id {asked_from}, got {ids[0]}")
    short = None
    if asked_from is not None and ids[0] > asked_from:
        if not span.by_id or span.last_id is None or asked_from <= span.last_id:
            short = f"the venue has no trades {asked_from}..{ids[0] - 1} of {span.symbol}"
    if span.by_id:
        assert span.last_id is not None
        done = ids[-1] >= span.last_id
    else:
        done = trades[-1].ts_ns > span.before_ns  # the span's end is included
    return (done or not full), short


class BinanceHistory(TradeHistory):
    """Binance spot: trade ids are consecutive per symbol, so every span is paged by id."""

    exchange = "binance"
    default_url = "https://api.binance.com"
    limit = RateLimit(units=3000, per_s=60.0)  # half the 6,000 weight/min per IP
    reach = "all history, by trade id (historicalTrades reads the database)"
    venue: ClassVar[Binance] = VENUE

    def venue_symbol(self, span: Span) -> str:
        return self.venue.venue_symbol(parse_symbol(span.symbol))

    def headers(self, span: Span) -> tuple[tuple[str, str], ...]:
        # The WebSocket rows' unit: the same integer times, so the same ts_ns.
        return ((TIME_UNIT_HEADER, "MICROSECOND"),) if span.context == MICROSECOND else ()

    def context(self, span: Span, recv_ns: int) -> FrameContext:
        """What the WebSocket parser would know of the span's rows."""
        return self.frame_context(span, recv_ns, self.venue_symbol(span))

    def aggregates(self, span: Span) -> bool:
        """Whether ``span`` is of aggregate trade ids (rows of ``@aggTrade``)."""
        return bool(self.venue.agg_prefix) and span.id_prefix == self.venue.agg_prefix

    def by_id(self, span: Span, from_id: int) -> Request:
        path, weight = (
            (SPOT_AGG_TRADES, SPOT_AGG_WEIGHT) if self.aggregates(span)
            else (HISTORICAL, HISTORICAL_WEIGHT)
        )  # fmt: skip
        return Request(
            path,
            (("symbol", self.venue_symbol(span)), ("fromId", str(from_id)), ("limit", "1000")),
            self.headers(span),
            weight,
        )

    def cannot(self, span: Span) -> str | None:
        if not span.by_id:
            return (
                "binance spot backfills id gaps only: a time span does not say whether its rows "
                "are @trade ids or @aggTrade (agg-) ids"
            )
        if span.id_prefix and not self.aggregates(span):
            return f"binance spot has no id space {span.id_prefix!r}"
        return None

    def first(self, span: Span) -> Request:
        """The first page of an id span.

        Raises:
            ValueError: a time span (:meth:`cannot` refuses those).
        """
        if span.first_id is None or not span.by_id:
            raise ValueError(f"binance: not an id span: {span}")
        return self.by_id(span, span.first_id)

    def page(self, span: Span, request: Request, body: bytes, recv_ns: int) -> Page:
        aggregates = self.aggregates(span)
        if request.path != (SPOT_AGG_TRADES if aggregates else HISTORICAL):
            raise BadAnswer(f"{self.exchange}: no answer expected for {request.path}")
        # (id, price, qty, time, buyer is maker) of each trade, or of each aggregate (agg-<a>)
        prefix = self.venue.agg_prefix if aggregates else ""
        rows = (
            [(r.a, r.p, r.q, r.T, r.m) for r in decode(AGGS, body, self.exchange)] if aggregates
            else [(r.id, r.price, r.qty, r.time, r.isBuyerMaker)
                  for r in decode(TRADES, body, self.exchange)]
        )  # fmt: skip
        if not rows:
            return Page([], None)  # nothing from fromId on (yet)
        ctx = self.context(span, recv_ns)
        venue_symbol = self.venue_symbol(span)
        trades = [
            self.venue._trade(venue_symbol, f"{prefix}{i}", price, qty, time, maker, ctx)
            for i, price, qty, time, maker in rows
        ]
        asked = param(request, "fromId")
        done, short = next_after(
            span,
            [r[0] for r in rows],
            trades,
            int(asked) if asked is not None else None,
            len(rows) >= PAGE_SIZE,
        )
        return Page(trades, None if done else self.by_id(span, rows[-1][0] + 1), short)

    def refusal(self, status: int, body: bytes) -> str | None:
        if status == 403:
            return None  # a WAF block "can indicate a rate limit violation": try again later
        try:
            error = _error.decode(body)
        except DECODE_ERRORS:
            return super().refusal(status, body)
        return f"HTTP {status}: Binance error {error.code}: {error.msg}"


HISTORY = BinanceHistory()

__all__ = ["HISTORY", "BinanceHistory", "RestAggTrade", "RestTrade"]
