"""Upbit's REST trade history (``GET /v1/trades/ticks``): the docs' rows, the same keys as the
WebSocket rows, the paging by UTC day, ``cursor`` and ``to``, and a fetch against the simulator.

Fixtures:
- ``rest_ticks.json``: the response example of Upbit's "최근 체결 내역" page
  (https://docs.upbit.com/reference/최근-체결-내역, the ``KRW-BTC`` trade of 2018-04-18 10:19:58
  UTC), as reproduced by the docs' later copies and by client libraries; our searches did not
  return the current page's (https://docs.upbit.com/kr/reference/list-pair-trades) example.
- ``rest_ticks_of_ws_example.json``: constructed: the trade of ``trade.json`` (the WebSocket docs'
  example) written as the REST row the "페어 체결 이력 조회" page documents (``timestamp`` =
  ``trade_timestamp``, same ``sequential_id`` and number text, UTC date and time).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.records import Trade
from common.rest import all_histories
from common.rest.base import Page, Request, Span, TradeHistory
from common.rest.bithumb import HISTORY as BITHUMB
from common.rest.fetch import Fetched
from common.rest.upbit import HISTORY, PAGE_SIZE, PATH, UpbitHistory, day_of, day_start_ns
from common.simulator.dialect import SimSession
from common.simulator.dialects import get_dialect
from common.simulator.dialects.upbit import FORMATS, UpbitDialect, encode
from common.simulator.engine import TradeBook, make_trade
from common.venues import FrameContext, get_venue
from tests.rest_helpers import (
    ANY_JSON,
    FUZZ,
    book_of,
    fetch_from,
    make_span,
    page_or_bad_answer,
    sim_get,
    simulated_page,
)
from tests.venue_helpers import RECV_NS, fixture, parse

MS = 1_000_000
S = 1_000_000_000
DAY = 86_400 * S
# 2024-10-31 01:07:42.047 UTC (the WebSocket docs' trade_2024.json): a fixed "now" for pure tests.
T0 = 1_730_336_862_047 * MS
TODAY = T0 // DAY


def span_of(after_ns: int, before_ns: int, *, symbol: str = "BTC-KRW") -> Span:
    return make_span("upbit", symbol, after_ns, before_ns)


def rows(dialect: UpbitDialect, symbol: str, stamps: list[tuple[int, int]]) -> bytes:
    """A ``/v1/trades/ticks`` answer of the trades ``(id, ts_ns)``, in the order given."""
    return encode([dialect.tick_object(make_trade(symbol, i, ts)) for i, ts in stamps]).encode()


def params(request: Request | None) -> dict[str, str]:
    assert request is not None
    assert request.path == PATH
    return dict(request.params)


# -- the docs' rows -----------------------------------------------------------------------------
def test_docs_example_row() -> None:
    page = HISTORY.page(
        span_of(0, 2**62), HISTORY.first(span_of(0, 2**62)), fixture("upbit", "rest_ticks.json"),
        RECV_NS,
    )  # fmt: skip
    assert page.trades == [
        Trade(
            exchange="upbit",
            symbol="BTC-KRW",
            trade_id="1524046798000000",
            price="8616000",
            amount="0.03060688",
            side="sell",  # ASK
            ts_ns=1_524_046_798_000_000_000,
            recv_ns=RECV_NS,
        )
    ]


def test_same_key_as_the_websocket_docs_example() -> None:
    [ws] = parse("upbit", fixture("upbit", "trade.json")).trades
    span = span_of(0, ws.ts_ns + 1)
    body = fixture("upbit", "rest_ticks_of_ws_example.json")
    [rest] = HISTORY.page(span, HISTORY.first(span), body, RECV_NS).trades
    assert rest == ws  # every field: exchange, symbol, trade_id, ts_ns, price, amount, side
    assert (rest.trade_id, rest.ts_ns) == ("17877285547970000", 1_787_728_554_797_000_000)


def test_registered() -> None:
    assert all_histories()["upbit"] is HISTORY
    assert HISTORY.default_url == "https://api.upbit.com"
    assert HISTORY.limit.units / HISTORY.limit.per_s <= 10  # "초당 최대 10회"


def clocked(dialect: UpbitDialect, now: int = T0) -> UpbitDialect:
    """``dialect`` with its REST clock (``rest_now_ns``) stopped at ``now``."""
    dialect.rest_now_ns = lambda: now  # type: ignore[method-assign]
    return dialect


def ws_and_rest(
    history: UpbitHistory, dialect: UpbitDialect, symbol: str, trade_id: int, ts_ns: int, fmt: str
) -> tuple[Trade, Trade]:
    """The trade as the venue module parses the dialect's WebSocket frame in format ``fmt``, and
    as ``history`` parses the dialect's ticks row of it."""
    trade = make_trade(symbol, trade_id, ts_ns)
    session = SimSession(path="/websocket/v1", state={"format": fmt})
    [frame] = dialect.trade_frames(session, [trade])
    ctx = FrameContext(history.exchange, "", RECV_NS, "1-0", {dialect.code(symbol): symbol})
    venue = get_venue(history.exchange)
    [ws] = venue.parse(frame if isinstance(frame, bytes) else frame.encode(), ctx).trades
    span = make_span(history.exchange, symbol, 0, 2**62)
    body = rows(dialect, symbol, [(trade_id, ts_ns)])
    [rest] = history.page(span, history.first(span), body, RECV_NS).trades
    return ws, rest


TRADE_IDS = st.integers(1, 2**62)
TIMES = st.integers(MS, 4_000_000_000 * S)


@settings(max_examples=200)
@given(trade_id=TRADE_IDS, ts_ns=TIMES, fmt=st.sampled_from(FORMATS))
def test_simulated_trade_has_the_same_key_both_ways(trade_id: int, ts_ns: int, fmt: str) -> None:
    ws, rest = ws_and_rest(HISTORY, clocked(UpbitDialect()), "ETH-KRW", trade_id, ts_ns, fmt)
    assert rest == ws
    assert (rest.trade_id, rest.ts_ns) == (str(trade_id), ts_ns // MS * MS)


# -- requests and paging (pure) -----------------------------------------------------------------
def test_first_asks_for_today_up_to_the_span_end_in_whole_seconds() -> None:
    span = span_of(T0 - 3_600 * S, T0 - 600 * S + 1)  # ends 00:57:42.047000001 UTC
    assert params(HISTORY.first(span)) == {"market": "KRW-BTC", "count": "500", "to": "005743"}
    midnight = span_of(T0 - DAY, TODAY * DAY)  # ends at midnight, included
    assert params(HISTORY.first(midnight))["to"] == "000001"
    on_second = span_of(0, TODAY * DAY + 7 * S)
    assert params(HISTORY.first(on_second))["to"] == "000008"
    last_second = span_of(T0 - DAY, TODAY * DAY - 1)  # 23:59:59.999999999: the whole day
    assert params(HISTORY.first(last_second)) == {"market": "KRW-BTC", "count": "500"}


def test_a_full_page_goes_on_from_the_oldest_rows_cursor() -> None:
    dialect = clocked(UpbitDialect())
    span = span_of(T0 - 3_600 * S, T0)
    stamps = [(900 - i, T0 - 1_000 * MS - i * MS) for i in range(PAGE_SIZE)]
    page = HISTORY.page(span, HISTORY.first(span), rows(dialect, "BTC-KRW", stamps), T0)
    assert len(page.trades) == PAGE_SIZE and page.short is None
    # the cursor of the listing's last row; no ``to`` (the cursor places the page), same day
    assert params(page.next) == {"market": "KRW-BTC", "count": "500", "cursor": "401"}


def test_paging_stops_at_a_row_before_the_span_start() -> None:
    dialect = clocked(UpbitDialect())
    span = span_of(T0 - 10 * S, T0)
    body = rows(dialect, "BTC-KRW", [(3, T0 - 5 * S), (2, T0 - 10 * S), (1, T0 - 11 * S)])
    page = HISTORY.page(span, HISTORY.first(span), body, T0)
    assert page.next is None and page.short is None
    assert [t.trade_id for t in page.trades] == ["3", "2", "1"]  # the shell keeps "3" and "2"
    at_start = rows(dialect, "BTC-KRW", [(3, T0 - 5 * S), (2, T0 - 10 * S)])
    page = HISTORY.page(span, HISTORY.first(span), at_start, T0)  # more may share its ms
    assert params(page.next) == {"market": "KRW-BTC", "count": "500", "cursor": "2"}


def test_an_answer_from_a_later_day_jumps_to_the_span_day_and_time() -> None:
    dialect = clocked(UpbitDialect())
    before = (TODAY - 2) * DAY + 13 * 3_600 * S + 500 * MS  # two days ago, 13:00:00.5 UTC
    span = span_of(before - 3_600 * S, before)
    first = HISTORY.first(span)
    assert params(first)["to"] == "130001"  # applied to today: wrong day, harmless
    body = rows(dialect, "BTC-KRW", [(99, T0 - 5 * S), (98, T0 - 6 * S)])
    page = HISTORY.page(span, first, body, T0)
    assert params(page.next) == {
        "market": "KRW-BTC", "count": "500", "to": "130001", "days_ago": "2",
    }  # fmt: skip
    # days_ago is counted from the day the answer came from, not from our clock
    page = HISTORY.page(span, first, body, T0 + 3 * DAY)
    assert params(page.next)["days_ago"] == "2"


def test_an_empty_day_steps_back_a_day_until_the_span_start() -> None:
    span = span_of((TODAY - 3) * DAY + 5 * S, (TODAY - 2) * DAY + 5 * S)
    jump = HISTORY.request(span, 2, to="000005")
    page = HISTORY.page(span, jump, b"[]", T0)  # nothing that day before 00:00:05
    assert page == Page([], HISTORY.request(span, 3))
    page = HISTORY.page(span, HISTORY.request(span, 3, cursor="17"), b"[]", T0)
    assert page == Page([], None)  # day -3 starts before the span: done


def test_a_span_older_than_seven_days_is_short() -> None:
    span = span_of((TODAY - 9) * DAY, (TODAY - 8) * DAY + 3_600 * S)
    body = rows(clocked(UpbitDialect()), "BTC-KRW", [(5, T0 - S)])
    page = HISTORY.page(span, HISTORY.first(span), body, T0)
    assert page.next is None and page.short is not None and "days_ago 1..7" in page.short
    partly = span_of((TODAY - 9) * DAY, (TODAY - 6) * DAY)
    page = HISTORY.page(partly, HISTORY.request(partly, 7, cursor="3"), b"[]", T0)
    assert page.next is None and page.short is not None


def test_a_to_meant_for_a_later_day_is_dropped() -> None:
    """The span ends after the venue's today (our clock ahead of it): all of today is asked."""
    span = span_of(T0 - 600 * S, (TODAY + 1) * DAY + 3_600 * S)
    first = HISTORY.first(span)
    assert params(first)["to"] == "010001"
    body = rows(clocked(UpbitDialect()), "BTC-KRW", [(2, T0 - 60 * S)])
    page = HISTORY.page(span, first, body, T0)
    assert page == Page(page.trades, HISTORY.request(span, 0))
    assert HISTORY.page(span, HISTORY.request(span, 0), body, T0).next == HISTORY.request(
        span, 0, cursor="2"
    )


def test_day_helpers() -> None:
    assert day_of(TODAY * DAY, 0) == TODAY and day_of(TODAY * DAY - 1, 0) == TODAY - 1
    assert day_start_ns(TODAY, 0) == TODAY * DAY
    kst = 9 * 3_600 * S
    assert day_start_ns(day_of(T0, kst), kst) == TODAY * DAY - kst  # 00:00 KST = 15:00 UTC


# -- robustness ---------------------------------------------------------------------------------
# answers shaped like ticks' (any answer at all: test_rest_all.py)
ROW = st.fixed_dictionaries(
    {
        "market": st.sampled_from(["KRW-BTC", "KRW-ETH", ""]) | ANY_JSON,
        "timestamp": st.integers(-5, 2**70) | st.text(max_size=20) | ANY_JSON,
        "trade_price": st.sampled_from([1, "1.5", 1e-7, "x"]) | ANY_JSON,
        "trade_volume": st.sampled_from([0.5, "2", 5.485e-05]) | ANY_JSON,
        "ask_bid": st.sampled_from(["ASK", "BID", "?"]) | ANY_JSON,
        "sequential_id": st.integers(-1, 2**70) | st.text(max_size=20) | ANY_JSON,
    },
    optional={"trade_date_utc": ANY_JSON},
)


@pytest.mark.parametrize("history", [HISTORY, BITHUMB], ids=["upbit", "bithumb"])
@FUZZ
@given(value=st.lists(ROW, max_size=4))
def test_page_on_answer_shaped_json(history: UpbitHistory, value: Any) -> None:
    """Bithumb's endpoint is Upbit's: the same rows."""
    span = make_span(history.exchange, "BTC-KRW", T0 - DAY, T0)
    later = [history.request(span, 0, cursor="7")]
    page_or_bad_answer(history, span, value, later=later, now=T0)


# -- paging against the simulated endpoint, without sockets ------------------------------------
def walk(
    history: TradeHistory, dialect: UpbitDialect, book: TradeBook, span: Span, now: int
) -> Fetched:
    """What ``fetch_span`` does, with the dialect answering in-process at the time ``now``."""
    out, seen, asked = Fetched(), set(), set()
    request: Request | None = history.first(span)
    while request is not None:
        assert request not in asked, request  # paging never repeats itself
        assert len(asked) < 200
        asked.add(request)
        page = simulated_page(history, dialect, book, span, request, now=now)
        out.trades += [t for t in page.trades if span.holds(t) and t.trade_id not in seen]
        seen.update(t.trade_id for t in page.trades)
        out.short = page.short or out.short
        request = page.next
    out.requests = len(asked)
    return out


def random_book(symbol: str, now: int, gaps: list[int]) -> TradeBook:
    """Trades back from ``now`` separated by ``gaps`` (ms; 0: the same ms), oldest first."""
    stamps, ts = [], now // MS * MS
    for gap in gaps:
        ts -= gap * MS
        stamps.append(ts)
    return book_of(symbol, reversed(stamps))


# a time ``now`` of the venue, the gaps of a ``random_book`` back from it, and the ends of a span
# back from it
RANDOM_SPANS = given(
    now=st.integers(T0 - DAY, T0),
    gaps=st.lists(
        st.sampled_from([0, 0, 1, 7, 999, 60_000, 3_600_000, 20 * 3_600_000, 2 * 86_400_000]),
        min_size=1,
        max_size=1_200,
    ),
    ends=st.tuples(st.integers(0, 10 * DAY), st.integers(0, 10 * DAY)),
)


def walk_a_random_span(
    history: UpbitHistory,
    dialect: UpbitDialect,
    now: int,
    gaps: list[int],
    ends: tuple[int, int],
    day_offset_ns: int,
) -> tuple[Fetched, bool]:
    """``walk`` at the time ``now`` through the span ``ends`` back from it in a ``random_book``
    served by ``dialect`` (its days starting ``day_offset_ns`` east of UTC): exactly the span's
    trades since the reach, the start of the 7th day before today. What it got, and whether the
    span starts before the reach."""
    book = random_book("BTC-KRW", now, gaps)
    span = make_span(history.exchange, "BTC-KRW", now - max(ends), now - min(ends))
    got = walk(history, clocked(dialect, now), book, span, now)
    reach = day_start_ns(day_of(now, day_offset_ns) - 7, day_offset_ns)
    assert keys(got.trades) == keys(in_span(book, "BTC-KRW", span, since_ns=reach))
    return got, span.after_ns < reach


@settings(max_examples=60, deadline=None)
@RANDOM_SPANS
def test_paging_gets_every_reachable_trade_of_any_span(
    now: int, gaps: list[int], ends: tuple[int, int]
) -> None:
    got, before_reach = walk_a_random_span(
        HISTORY, UpbitDialect(), now, gaps, ends, day_offset_ns=0
    )
    assert (got.short is not None) == before_reach


# -- against the simulator ----------------------------------------------------------------------
def filled_book(symbol: str, now_ns: int, *, days: int = 9, step_s: int = 120) -> TradeBook:
    """Trades from ``days`` days before ``now_ns`` up to it, 1 to 3 in the same ms every
    ``step_s`` seconds (times in whole ms, as both APIs give them)."""
    book = TradeBook()
    ts, n, k = (now_ns - days * DAY) // MS * MS, 1, 0
    while ts < now_ns:
        count = 1 + k % 3
        book.record(symbol, n, count, ts)
        n, k, ts = n + count, k + 1, ts + step_s * S
    return book


def keys(trades: Iterator[Any] | list[Any]) -> list[tuple[str, int, str, str, str | None]]:
    return sorted((str(t.trade_id), t.ts_ns, t.price, t.amount, t.side) for t in trades)


def in_span(book: TradeBook, symbol: str, span: Span, *, since_ns: int = 0) -> list[Any]:
    return [
        t
        for t in book.trades(symbol, 1, book.last_id(symbol))
        if span.after_ns <= t.ts_ns <= span.before_ns and t.ts_ns >= since_ns
    ]


def fetch_the_middle_of_a_book(history: UpbitHistory, faults: int) -> Fetched:
    """A span from 3.5 to 1.2 days back in a 9-day book of BTC-KRW, fetched from the simulator
    (``faults`` 429s first): whole, exactly the span's trades, each once."""
    now = time.time_ns()
    book = filled_book("BTC-KRW", now)
    first = book.first_id_at("BTC-KRW", now - 3 * DAY - DAY // 2)
    last = book.first_id_at("BTC-KRW", now - DAY - DAY // 5)
    span = make_span(
        history.exchange,
        "BTC-KRW",
        book.trade("BTC-KRW", first).ts_ns,
        book.trade("BTC-KRW", last).ts_ns,
    )
    got, _ = fetch_from(history, book, span, faults=faults)
    assert got.short is None and got.refused is None
    expected = in_span(book, "BTC-KRW", span)
    assert len(expected) > 3 * PAGE_SIZE  # several pages, several days
    assert keys(got.trades) == keys(expected)  # exactly the span's trades, each once
    assert all(t.exchange == history.exchange and t.symbol == "BTC-KRW" for t in got.trades)
    return got


@pytest.mark.parametrize("faults", [0, 2])
def test_fetch_a_span_in_the_middle_of_the_book(faults: int) -> None:
    got = fetch_the_middle_of_a_book(HISTORY, faults)
    assert got.requests < 4 * 6  # jumps to the span's last day, ~4 requests a day


def test_fetch_a_recent_span_of_today() -> None:
    now = time.time_ns()
    book = filled_book("BTC-KRW", now, days=1, step_s=5)
    span = span_of(now - 20 * 60 * S, now - 2 * 60 * S)
    got, _ = fetch_from(HISTORY, book, span)
    assert got.short is None and keys(got.trades) == keys(in_span(book, "BTC-KRW", span))


def fetch_beyond_seven_days(history: UpbitHistory, *, step_s: int, day_offset_ns: int) -> Fetched:
    """From the simulator (its days start ``day_offset_ns`` east of UTC): a span 9.5 to 8.25
    days back is short and empty (its fetch is returned); one 8.5 to 6.5 days back is short
    with exactly its trades since the start of the 7th day before today."""
    now = time.time_ns()
    book = filled_book("BTC-KRW", now, days=10, step_s=step_s)
    gone = make_span(
        history.exchange, "BTC-KRW", now - 9 * DAY - DAY // 2, now - 8 * DAY - DAY // 4
    )
    got_gone, _ = fetch_from(history, book, gone)
    assert got_gone.trades == [] and got_gone.short is not None
    partly = make_span(
        history.exchange, "BTC-KRW", now - 8 * DAY - DAY // 2, now - 6 * DAY - DAY // 2
    )
    got, _ = fetch_from(history, book, partly)
    reachable = day_start_ns(day_of(time.time_ns(), day_offset_ns) - 7, day_offset_ns)
    assert got.short is not None
    assert keys(got.trades) == keys(in_span(book, "BTC-KRW", partly, since_ns=reachable))
    return got_gone


def test_fetch_beyond_seven_days_is_short() -> None:
    assert fetch_beyond_seven_days(HISTORY, step_s=600, day_offset_ns=0).requests <= 2


def test_fetch_unknown_market_is_refused() -> None:
    now = time.time_ns()
    book = filled_book("BTC-KRW", now, days=1, step_s=3_600)
    got, _ = fetch_from(HISTORY, book, span_of(now - DAY, now, symbol="DOGE-KRW"))
    assert got.trades == [] and got.refused is not None and "404" in got.refused


def listed(dialect: UpbitDialect, book: TradeBook, **query: str) -> list[int]:
    """The ``sequential_id``s of the dialect's in-process answer (a 200) about KRW-BTC."""
    reply = sim_get(dialect, PATH, book, {"market": "KRW-BTC", **query})
    assert reply.status == 200
    return [row["sequential_id"] for row in json.loads(reply.body)]


def test_simulator_refuses_bad_parameters() -> None:
    dialect = get_dialect("upbit")
    book = filled_book("BTC-KRW", T0, days=1, step_s=3_600)
    assert dialect.rest("/v1/nope", {}, {}, book) is None
    for query in (
        {},
        {"market": ["KRW-BTC"], "count": ["501"]},
        {"market": ["KRW-BTC"], "count": ["0"]},
        {"market": ["KRW-BTC"], "days_ago": ["8"]},
        {"market": ["KRW-BTC"], "to": ["24:00:00"]},
        {"market": ["KRW-BTC"], "cursor": ["x"]},
    ):
        reply = dialect.rest(PATH, query, {}, book)
        assert reply is not None and reply.status == 400, query
        assert set(json.loads(reply.body)["error"]) == {"name", "message"}
    reply = dialect.rest(PATH, {"market": ["KRW-NOPE"]}, {}, book)
    assert reply is not None and reply.status == 404


def test_simulator_lists_a_day_newest_first_before_to_and_cursor() -> None:
    dialect = clocked(UpbitDialect())
    book = TradeBook()
    for n in range(1, 7):  # yesterday 23:59:59, then today 00:00:01 .. 00:00:05
        book.record("BTC-KRW", n, 1, TODAY * DAY + (n - 1) * S if n > 1 else TODAY * DAY - S)

    ids = partial(listed, dialect, book)
    assert ids() == [6]  # count defaults to 1
    assert ids(count="500") == [6, 5, 4, 3, 2]  # today only
    assert ids(count="2", cursor="5") == [4, 3]
    assert ids(count="500", to="00:00:03") == [3, 2]  # before 00:00:03 (trade 4 is at 00:00:03)
    assert ids(count="500", days_ago="1") == [1]
    assert ids(count="500", days_ago="2") == []
