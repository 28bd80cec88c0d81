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

import json
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from common.rest import all_histories
from common.rest.base import Page, Span
from common.rest.bithumb import HISTORY
from common.rest.upbit import PAGE_SIZE, PATH, day_of, day_start_ns
from common.simulator.dialect import SimSession
from common.simulator.dialects import get_dialect
from common.simulator.dialects.bithumb import BithumbDialect
from common.simulator.engine import TradeBook, make_trade
from common.venues import FrameContext, get_venue
from common.venues.bithumb import LEGACY_CONTEXT
from tests.unit.test_rest_upbit import (
    DAY,
    GAPS,
    MS,
    T0,
    TODAY,
    S,
    _json,
    _page_or_bad_answer,
    _row,
    fetch,
    filled_book,
    in_span,
    keys,
    params,
    random_book,
    rows,
    walk,
)
from tests.venue_helpers import RECV_NS, fixture, parse

KST = 9 * 3_600 * S


def span_of(after_ns: int, before_ns: int, *, context: str = "", symbol: str = "BTC-KRW") -> Span:
    return Span(
        exchange="bithumb",
        symbol=symbol,
        context=context,
        first_id=None,
        last_id=None,
        after_ns=after_ns,
        before_ns=before_ns,
    )


class _FixedNow(BithumbDialect):
    def rest_now_ns(self) -> int:
        return T0


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
@given(
    trade_id=st.integers(1, 2**62),
    ts_ns=st.integers(MS, 4_000_000_000 * S),
    fmt=st.sampled_from(["DEFAULT", "SIMPLE"]),
)
def test_simulated_trade_has_the_same_key_both_ways(trade_id: int, ts_ns: int, fmt: str) -> None:
    dialect, venue = _FixedNow(), get_venue("bithumb")
    trade = make_trade("XRP-KRW", trade_id, ts_ns)
    session = SimSession(path="/websocket/v1", state={"format": fmt})
    [frame] = dialect.trade_frames(session, [trade])
    ctx = FrameContext("bithumb", "", RECV_NS, "1-0", {"KRW-XRP": "XRP-KRW"})
    [ws] = venue.parse(frame if isinstance(frame, bytes) else frame.encode(), ctx).trades
    span = span_of(0, 2**62, symbol="XRP-KRW")
    body = rows(dialect, "XRP-KRW", [(trade_id, ts_ns)])
    [rest] = HISTORY.page(span, HISTORY.first(span), body, RECV_NS).trades
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
    got = fetch(HISTORY, book, legacy)
    assert got.refused == why and got.requests == 0 and got.trades == []


# -- requests and paging (pure) -----------------------------------------------------------------
def test_first_asks_for_the_latest_trades_without_to() -> None:
    span = span_of(T0 - 3_600 * S, T0 - 600 * S)
    assert params(HISTORY.first(span)) == {"market": "KRW-BTC", "count": str(PAGE_SIZE)}


def test_walks_back_with_cursor_then_daysago() -> None:
    dialect = _FixedNow()
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
    dialect = _FixedNow()
    span = span_of(T0 - 10 * S, T0)
    body = rows(dialect, "BTC-KRW", [(3, T0 - 5 * S), (2, T0 - 10 * S), (1, T0 - 11 * S)])
    assert HISTORY.page(span, HISTORY.first(span), body, T0).next is None


@given(body=st.binary(max_size=300))
def test_page_on_arbitrary_bytes(body: bytes) -> None:
    _page_or_bad_answer(HISTORY, span_of(T0 - DAY, T0), body)


@given(value=_json() | st.lists(_row(), max_size=4))
def test_page_on_arbitrary_json(value: Any) -> None:
    _page_or_bad_answer(HISTORY, span_of(T0 - DAY, T0), json.dumps(value).encode())


class _NowAt(BithumbDialect):
    def __init__(self, now: int) -> None:
        self.now = now

    def rest_now_ns(self) -> int:
        return self.now


@settings(max_examples=60, deadline=None)
@given(
    now=st.integers(T0 - DAY, T0),
    gaps=GAPS,
    ends=st.tuples(st.integers(0, 10 * DAY), st.integers(0, 10 * DAY)),
)
def test_paging_gets_every_reachable_trade_of_any_span(
    now: int, gaps: list[int], ends: tuple[int, int]
) -> None:
    """Against Korean days (the simulator's choice), paging that assumes neither zone."""
    book = random_book("BTC-KRW", now, gaps)
    span = span_of(now - max(ends), now - min(ends))
    got = walk(HISTORY, _NowAt(now), book, span, now)
    reach = day_start_ns(day_of(now, KST) - 7, KST)
    assert keys(got.trades) == keys(in_span(book, "BTC-KRW", span, since_ns=reach))
    if span.after_ns < reach:
        assert got.short is not None
    # (a span starting up to 9 hours after ``reach`` may be reported short too: from the
    # listings alone, a UTC day before the last one listed cannot be ruled out)


# -- against the simulator ----------------------------------------------------------------------
def test_fetch_a_span_in_the_middle_of_the_book() -> None:
    now = time.time_ns()
    book = filled_book("BTC-KRW", now)
    first = book.first_id_at("BTC-KRW", now - 3 * DAY - DAY // 2)
    last = book.first_id_at("BTC-KRW", now - DAY - DAY // 5)
    span = span_of(book.trade("BTC-KRW", first).ts_ns, book.trade("BTC-KRW", last).ts_ns)
    for faults in (0, 2):
        got = fetch(HISTORY, book, span, faults=faults)
        assert got.short is None and got.refused is None
        expected = in_span(book, "BTC-KRW", span)
        assert len(expected) > 3 * PAGE_SIZE
        assert keys(got.trades) == keys(expected)  # exactly the span's trades, each once
        assert all(t.exchange == "bithumb" and t.symbol == "BTC-KRW" for t in got.trades)


def test_fetch_beyond_seven_days_is_short() -> None:
    now = time.time_ns()
    book = filled_book("BTC-KRW", now, days=10, step_s=900)
    gone = span_of(now - 9 * DAY - DAY // 2, now - 8 * DAY - DAY // 4)
    got = fetch(HISTORY, book, gone)
    assert got.trades == [] and got.short is not None
    partly = span_of(now - 8 * DAY - DAY // 2, now - 6 * DAY - DAY // 2)
    got = fetch(HISTORY, book, partly)
    reachable = day_start_ns(day_of(time.time_ns(), KST) - 7, KST)  # the simulator's KST days
    assert got.short is not None
    assert keys(got.trades) == keys(in_span(book, "BTC-KRW", partly, since_ns=reachable))


def test_simulator_counts_days_ago_in_korean_days() -> None:
    dialect = _FixedNow()  # T0: 10:07 KST
    book = TradeBook()
    kst_midnight = TODAY * DAY - KST  # 15:00 UTC the day before
    for n, ts in enumerate((kst_midnight - S, kst_midnight, T0 - S), start=1):
        book.record("BTC-KRW", n, 1, ts)

    def ids(**query: str) -> list[int]:
        q = {"market": ["KRW-BTC"], "count": ["500"], **{k: [v] for k, v in query.items()}}
        reply = dialect.rest(PATH, q, {}, book)
        assert reply is not None and reply.status == 200
        return [row["sequential_id"] for row in json.loads(reply.body)]

    assert ids() == [3, 2]
    assert ids(daysAgo="1") == [1]
    assert ids(days_ago="1") == [3, 2]  # Upbit's name is not Bithumb's: ignored
    reply = get_dialect("bithumb").rest(PATH, {"market": ["KRW-BTC"], "daysAgo": ["9"]}, {}, book)
    assert reply is not None and reply.status == 400
