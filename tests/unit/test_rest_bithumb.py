"""Bithumb's REST trade history (``GET /v1/trades/ticks``, Upbit's endpoint with ``daysAgo``):
the same keys as the v2 WebSocket rows, the walk back by day whatever zone a day starts in,
legacy spans refused, and a fetch against the simulator (whose days start at 00:00 KST).

Fixture ``rest_ticks_of_ws_example.json`` is constructed: the trade of ``v2_trade.json`` (the
example of https://apidocs.bithumb.com/v2.1.5/reference/체결-trade) written as the REST row of
https://apidocs.bithumb.com/reference/최근-체결-내역 (``timestamp`` = ``trade_timestamp``, same
``sequential_id`` and number text; ``trade_date_utc``/``trade_time_utc`` in UTC, where the
WebSocket's ``trade_date``/``trade_time`` are Korean time).
"""

from __future__ import annotations

import time
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.rest import all_histories
from common.rest.base import Page, Span
from common.rest.bithumb import HISTORY
from common.rest.upbit import PAGE_SIZE, PATH, day_of, day_start_ns
from common.simulator.dialects import get_dialect
from common.simulator.dialects.bithumb import BithumbDialect
from common.simulator.engine import TradeBook
from common.venues.bithumb import LEGACY_CONTEXT
from tests.rest_helpers import fetch_from, make_span
from tests.unit.test_rest_upbit import (
    DAY,
    MS,
    RANDOM_SPANS,
    T0,
    TIMES,
    TODAY,
    TRADE_IDS,
    S,
    clocked,
    fetch_beyond_seven_days,
    fetch_the_middle_of_a_book,
    filled_book,
    listed,
    params,
    rows,
    walk_a_random_span,
    ws_and_rest,
)
from tests.venue_helpers import RECV_NS, fixture, parse

KST = 9 * 3_600 * S


def span_of(after_ns: int, before_ns: int, *, context: str = "") -> Span:
    return make_span("bithumb", "BTC-KRW", after_ns, before_ns, context=context)


# -- the same keys as the WebSocket rows --------------------------------------------------------
def test_same_key_as_the_websocket_docs_example() -> None:
    [ws] = parse("bithumb", fixture("bithumb", "v2_trade.json")).trades
    span = span_of(0, ws.ts_ns)
    body = fixture("bithumb", "rest_ticks_of_ws_example.json")
    [rest] = HISTORY.page(span, HISTORY.first(span), body, RECV_NS).trades
    assert rest == ws  # every field: exchange, symbol, trade_id, ts_ns, price, amount, side
    assert (rest.exchange, rest.symbol, rest.trade_id, rest.ts_ns, rest.side) == (
        "bithumb", "BTC-KRW", "17259299343730000", 1_725_929_934_373_000_000, "buy",
    )  # fmt: skip
    # a sequential_id sent as a string (as recorded WebSocket frames carry it) keys the same
    [ws_str] = parse("bithumb", fixture("bithumb", "v2_trade_string_id.json")).trades
    as_text = body.replace(b"17259299343730000", b'"17259299343730000"').replace(b"BID", b"ASK")
    [rest_str] = HISTORY.page(span, HISTORY.first(span), as_text, RECV_NS).trades
    assert rest_str == ws_str


@settings(max_examples=200)
@given(trade_id=TRADE_IDS, ts_ns=TIMES, fmt=st.sampled_from(["DEFAULT", "SIMPLE"]))
def test_simulated_trade_has_the_same_key_both_ways(trade_id: int, ts_ns: int, fmt: str) -> None:
    ws, rest = ws_and_rest(HISTORY, clocked(BithumbDialect()), "XRP-KRW", trade_id, ts_ns, fmt)
    assert rest == ws
    assert (rest.trade_id, rest.ts_ns) == (str(trade_id), ts_ns // MS * MS)


def test_registered() -> None:
    assert all_histories()["bithumb"] is HISTORY
    assert HISTORY.default_url == "https://api.bithumb.com"
    assert HISTORY.limit.units / HISTORY.limit.per_s <= 150  # "분류 항목별 150회"


# -- legacy spans -------------------------------------------------------------------------------
def test_legacy_span_is_refused_before_any_request() -> None:
    legacy = span_of(T0 - DAY, T0, context=LEGACY_CONTEXT)
    why = HISTORY.cannot(legacy)
    assert why is not None and "legacy" in why
    assert HISTORY.cannot(span_of(T0 - DAY, T0)) is None
    body = fixture("bithumb", "rest_ticks_of_ws_example.json")
    assert HISTORY.page(legacy, HISTORY.first(legacy), body, T0) == Page([], None, short=why)
    book = filled_book("BTC-KRW", time.time_ns(), days=1, step_s=3_600)
    got, served = fetch_from(HISTORY, book, legacy)
    assert got.refused == why and got.requests == served == 0 and got.trades == []


# -- requests and paging (pure) -----------------------------------------------------------------
def test_first_asks_for_the_latest_trades_without_to() -> None:
    span = span_of(T0 - 3_600 * S, T0 - 600 * S)
    assert params(HISTORY.first(span)) == {"market": "KRW-BTC", "count": str(PAGE_SIZE)}


def test_walks_back_with_cursor_then_daysago() -> None:
    dialect = clocked(BithumbDialect())
    span = span_of((TODAY - 3) * DAY, (TODAY - 2) * DAY)
    body = rows(dialect, "BTC-KRW", [(9, T0 - S), (8, T0 - 2 * S)])  # today, after the span
    page = HISTORY.page(span, HISTORY.first(span), body, T0)
    assert params(page.next) == {"market": "KRW-BTC", "count": "500", "cursor": "8"}  # no jump
    page = HISTORY.page(span, HISTORY.request(span, 0, cursor="8"), b"[]", T0)
    assert params(page.next) == {"market": "KRW-BTC", "count": "500", "daysAgo": "1"}
    page = HISTORY.page(span, HISTORY.request(span, 1), body, T0)
    assert params(page.next) == {
        "market": "KRW-BTC", "count": "500", "cursor": "8", "daysAgo": "1",
    }  # fmt: skip
    page = HISTORY.page(span, HISTORY.request(span, 4, cursor="8"), b"[]", T0)
    assert page == Page([], None)  # day -4 starts before the span, whichever zone: done
    old = span_of((TODAY - 9) * DAY, (TODAY - 8) * DAY)
    page = HISTORY.page(old, HISTORY.request(old, 7, cursor="8"), b"[]", T0)
    assert page.next is None and page.short is not None and "daysAgo 1..7" in page.short


def test_walk_stops_only_where_both_day_boundaries_agree() -> None:
    """T0 is 01:07 UTC = 10:07 KST of the same date: ``daysAgo=1`` lists the day before, which
    starts at 00:00 UTC, or at 00:00 KST = 15:00 UTC two dates before."""
    utc_start, kst_start = (TODAY - 1) * DAY, (TODAY - 1) * DAY - KST
    yesterday = HISTORY.request(span_of(0, 1), 1)
    for after, stops in (
        (utc_start + 3_600 * S, True),
        (utc_start, True),
        (utc_start - 1, False),  # in a UTC day before the one listed: maybe in the span
        (utc_start - 5 * 3_600 * S, False),
        (kst_start, False),
        (kst_start - 1, False),
    ):
        span = span_of(after, T0)
        page = HISTORY.page(span, yesterday, b"[]", T0)
        assert (page.next is None) is stops, after
    assert day_start_ns(day_of(T0, KST), KST) == TODAY * DAY - KST


def test_paging_stops_at_a_row_before_the_span_start() -> None:
    dialect = clocked(BithumbDialect())
    span = span_of(T0 - 10 * S, T0)
    body = rows(dialect, "BTC-KRW", [(3, T0 - 5 * S), (2, T0 - 10 * S), (1, T0 - 11 * S)])
    assert HISTORY.page(span, HISTORY.first(span), body, T0).next is None


# answer-shaped JSON (Upbit's rows): test_rest_upbit.py; any answer at all: test_rest_all.py


@settings(max_examples=60, deadline=None)
@RANDOM_SPANS
def test_paging_gets_every_reachable_trade_of_any_span(
    now: int, gaps: list[int], ends: tuple[int, int]
) -> None:
    """Against Korean days (the simulator's choice), paging that assumes neither zone."""
    got, before_reach = walk_a_random_span(
        HISTORY, BithumbDialect(), now, gaps, ends, day_offset_ns=KST
    )
    if before_reach:
        assert got.short is not None
    # (a span starting up to 9 hours after ``reach`` may be reported short too: from the
    # listings alone, a UTC day before the last one listed cannot be ruled out)


# -- against the simulator ----------------------------------------------------------------------
@pytest.mark.parametrize("faults", [0, 2])
def test_fetch_a_span_in_the_middle_of_the_book(faults: int) -> None:
    fetch_the_middle_of_a_book(HISTORY, faults)


def test_fetch_beyond_seven_days_is_short() -> None:
    fetch_beyond_seven_days(HISTORY, step_s=900, day_offset_ns=KST)  # the simulator's KST days


def test_simulator_counts_days_ago_in_korean_days() -> None:
    dialect = clocked(BithumbDialect())  # T0: 10:07 KST
    book = TradeBook()
    kst_midnight = TODAY * DAY - KST  # 15:00 UTC the day before
    for n, ts in enumerate((kst_midnight - S, kst_midnight, T0 - S), start=1):
        book.record("BTC-KRW", n, 1, ts)

    ids = partial(listed, dialect, book, count="500")
    assert ids() == [3, 2]
    assert ids(daysAgo="1") == [1]
    assert ids(days_ago="1") == [3, 2]  # Upbit's name is not Bithumb's: ignored
    reply = get_dialect("bithumb").rest(PATH, {"market": ["KRW-BTC"], "daysAgo": ["9"]}, {}, book)
    assert reply is not None and reply.status == 400
