"""OKX REST backfill (``common.rest.okx``) and the simulator's ``history-trades``.

The docs' example (``tests/fixtures/okx/rest_history_trades.json``) is the Response Example of
https://www.okx.com/docs-v5/en/#order-book-trading-market-data-get-trades-history, whitespace
removed, keys, order and values unchanged.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.records import Trade
from common.rest.base import Page, Request, Span
from common.rest.okx import HISTORY, PATH
from common.simulator.dialect import SimSession
from common.simulator.dialects.okx import DIALECT, REST_REACH_NS
from common.simulator.engine import TradeBook
from common.venues import Channel
from common.venues.okx import TRADES_ALL
from tests.rest_helpers import (
    ANY_JSON,
    FUZZ,
    bad_answer,
    book_of,
    by_id,
    fetch_from,
    fetch_whole,
    make_span,
    page_or_bad_answer,
    sim_get,
    trade_ids,
)
from tests.venue_helpers import RECV_NS, fixture, parse

MS = 1_000_000
T0 = 1_700_000_000_000 * MS  # a round ms


def span(
    symbol: str = "BTC-USDT",
    *,
    after_ns: int,
    before_ns: int,
    ids: tuple[int, int] | None = None,
    context: str = TRADES_ALL,
) -> Span:
    """A span of a ``trades-all`` feed (the only one okx's REST can fill) unless told."""
    first_id, last_id = ids or (None, None)
    return make_span(
        "okx", symbol, after_ns, before_ns, first_id=first_id, last_id=last_id, context=context
    )


def params(request: Request) -> dict[str, str]:
    return dict(request.params)


# -- the docs' example --------------------------------------------------------------------------

DOCS_TRADES = [
    Trade("okx", "BTC-USDT", "242720720", "29963.2", "0.00001", "sell",
          1_654_161_646_974_000_000, RECV_NS),
    Trade("okx", "BTC-USDT", "242720719", "29964.1", "0.00001", "sell",
          1_654_161_641_568_000_000, RECV_NS),
]  # fmt: skip


def test_docs_example_is_parsed_field_by_field() -> None:
    s = span(after_ns=1_654_161_642_000 * MS, before_ns=1_654_161_647_000 * MS)
    page = HISTORY.page(s, HISTORY.first(s), fixture("okx", "rest_history_trades.json"), RECV_NS)
    assert page == Page(DOCS_TRADES, None)  # reaches back past the span's start: done


@pytest.mark.parametrize("channel", ["trades-all", "trades"])
def test_docs_trade_has_the_same_key_as_the_websocket_row(channel: str) -> None:
    """The docs' REST trade 242720720 as the WebSocket would push it (``trades-all``, or
    ``trades`` with ``count`` 1: one fill) parses to the very same Trade."""
    row = {"instId": "BTC-USDT", "tradeId": "242720720", "px": "29963.2", "sz": "0.00001",
           "side": "sell", "ts": "1654161646974", "source": "0"}  # fmt: skip
    if channel == "trades":
        row["count"] = "1"
    frame = json.dumps({"arg": {"channel": channel, "instId": "BTC-USDT"}, "data": [row]})
    assert parse("okx", frame.encode()).trades == DOCS_TRADES[:1]


def test_an_aggregated_trades_row_is_not_the_rest_rows() -> None:
    """The documented mismatch: the ``trades`` channel pushes one row per taker order and price
    ("tradeId ... the last trade ID in the aggregation", ``count`` fills); history-trades
    returns the fills. Same last id and time, but its amount is one fill's, and the other fills
    are rows the WebSocket never had."""
    [ws] = parse("okx", fixture("okx", "trades.json")).trades  # tradeId 130639474, count 3
    fills = [("130639474", "0.1"), ("130639473", "0.02"), ("130639472", "0.00060306")]
    body = json.dumps({"code": "0", "msg": "", "data": [
        {"instId": "BTC-USDT", "side": "buy", "sz": sz, "source": "0", "px": "42219.9",
         "tradeId": trade_id, "ts": "1630048897897"} for trade_id, sz in fills]})  # fmt: skip
    s = span(after_ns=ws.ts_ns - MS, before_ns=ws.ts_ns + MS)
    rest = HISTORY.page(s, HISTORY.first(s), body.encode(), RECV_NS).trades
    assert [t.trade_id for t in rest] == ["130639474", "130639473", "130639472"]
    assert (rest[0].trade_id, rest[0].ts_ns) == (ws.trade_id, ws.ts_ns)
    assert rest[0].amount != ws.amount  # "0.1" against the aggregate's "0.12060306"
    assert sum(t.amount_decimal for t in rest) == ws.amount_decimal  # volume agrees


# -- requests and paging (pure) -----------------------------------------------------------------


def test_first_request_asks_by_time_before_the_span_end() -> None:
    s = span("BTC-USDT-PERP", after_ns=T0, before_ns=T0 + 5 * MS + 1)
    request = HISTORY.first(s)
    assert request.path == PATH == "/api/v5/market/history-trades"
    # ts is in ms and the span's end is included: trades up to T0 + 5 ms + 1 ns are those
    # before ms T0 + 6.
    assert request.params == (
        ("instId", "BTC-USDT-SWAP"), ("type", "2"), ("after", str(T0 // MS + 6)), ("limit", "100"),
    )  # fmt: skip
    # a span ending on a ms boundary: trades of that very ms are asked for too
    exact = span(after_ns=T0, before_ns=T0 + 5 * MS)
    assert params(HISTORY.first(exact))["after"] == str(T0 // MS + 6)
    before = span(after_ns=T0, before_ns=T0 + 5 * MS - 1)
    assert params(HISTORY.first(before))["after"] == str(T0 // MS + 5)


def test_first_request_of_an_id_span_asks_by_id() -> None:
    s = span(after_ns=0, before_ns=T0, ids=(1000, 1999))
    assert params(HISTORY.first(s)) == {
        "instId": "BTC-USDT", "type": "1", "after": "2000", "limit": "100",
    }  # fmt: skip


def answer(ids: range, ts_ms: int, inst: str = "BTC-USDT") -> bytes:
    rows = [
        {"instId": inst, "side": "buy", "sz": "1", "source": "0", "px": "10",
         "tradeId": str(i), "ts": str(ts_ms)} for i in reversed(ids)
    ]  # fmt: skip
    return json.dumps({"code": "0", "msg": "", "data": rows}, separators=(",", ":")).encode()


def test_a_full_page_not_reaching_the_span_start_asks_for_older_ids() -> None:
    s = span(after_ns=T0, before_ns=T0 + 10_000 * MS)
    page = HISTORY.page(s, HISTORY.first(s), answer(range(501, 601), T0 // MS + 5), RECV_NS)
    assert len(page.trades) == 100 and page.short is None
    assert page.next is not None and params(page.next) == {
        "instId": "BTC-USDT", "type": "1", "after": "501", "limit": "100",
    }  # fmt: skip


def test_a_page_reaching_before_the_span_start_ends_paging() -> None:
    s = span(after_ns=T0, before_ns=T0 + 10_000 * MS)
    page = HISTORY.page(s, HISTORY.first(s), answer(range(501, 601), T0 // MS - 1), RECV_NS)
    assert page.next is None and page.short is None


def test_a_page_ending_at_the_span_start_asks_for_older_ids() -> None:
    """The span's start is included: older trades of its millisecond may be on the next page."""
    s = span(after_ns=T0, before_ns=T0 + 10_000 * MS)
    page = HISTORY.page(s, HISTORY.first(s), answer(range(501, 601), T0 // MS), RECV_NS)
    assert page.short is None
    assert page.next is not None and params(page.next)["after"] == "501"


def test_an_id_span_ends_at_its_first_id() -> None:
    s = span(after_ns=0, before_ns=T0 * 2, ids=(550, 700))
    page = HISTORY.page(s, HISTORY.first(s), answer(range(501, 601), T0 // MS), RECV_NS)
    assert page.next is None and page.short is None
    s = span(after_ns=0, before_ns=T0 * 2, ids=(450, 700))
    assert HISTORY.page(s, HISTORY.first(s), answer(range(501, 601), T0 // MS), RECV_NS).next


@pytest.mark.parametrize("ids", [range(501, 551), range(0)])
def test_the_venue_running_out_first_is_short(ids: range) -> None:
    s = span(after_ns=T0, before_ns=T0 + 10_000 * MS)
    page = HISTORY.page(s, HISTORY.first(s), answer(ids, T0 // MS + 5), RECV_NS)
    assert page.next is None and len(page.trades) == len(ids)
    assert page.short is not None and "3 months" in page.short


def test_an_unknown_instrument_is_short_and_other_errors_are_bad_answers() -> None:
    s = span(after_ns=T0, before_ns=T0 + MS)
    body = b'{"code":"51001","msg":"Instrument ID doesn\'t exist.","data":[]}'
    page = HISTORY.page(s, HISTORY.first(s), body, RECV_NS)
    assert page.trades == [] and page.next is None and page.short and "51001" in page.short
    for bad in (
        b'{"code":"50011","msg":"Rate limit reached.","data":[]}',
        answer(range(1, 3), T0 // MS, inst="ETH-USDT"),  # another instrument's trades
        answer(range(1, 3), T0 // MS).replace(b'"tradeId":"1"', b'"tradeId":"x1"'),
        answer(range(1, 3), T0 // MS).replace(b'"ts":"', b'"ts":"-'),
        b'{"code":"0","msg":"","data":{}}',
    ):
        bad_answer(HISTORY, s, bad)


# -- the simulator ------------------------------------------------------------------------------


def ws_trade(book: TradeBook, symbol: str, n: int, channel: str = "trades-all") -> Trade:
    """Trade ``n`` of the book as the WebSocket parser makes it from the dialect's frame."""
    session = SimSession(path="/ws/v5/public")
    session.subscriptions[(Channel.TRADES, symbol)] = channel
    [frame] = DIALECT.trade_frames(session, [book.trade(symbol, n)])
    assert isinstance(frame, str)
    [trade] = parse("okx", frame.encode()).trades
    return trade


def rest_get(book: TradeBook, **query: str) -> tuple[int, bytes]:
    reply = sim_get(DIALECT, PATH, book, query)
    return reply.status, reply.body.encode()


@FUZZ
@given(
    symbol=st.sampled_from(["BTC-USDT", "ETH-USDT-PERP", "BTC-USD-250627"]),
    gaps=st.lists(st.integers(0, 3 * MS), min_size=1, max_size=40),
    channel=st.sampled_from(["trades", "trades-all"]),
    data=st.data(),
)
def test_simulated_trades_have_the_same_key_both_ways(
    symbol: str, gaps: list[int], channel: str, data: st.DataObject
) -> None:
    stamps = [T0 + 123 + sum(gaps[: i + 1]) for i in range(len(gaps))]  # not on a ms boundary
    book = book_of(symbol, stamps)
    n = data.draw(st.integers(1, len(stamps)))
    s = span(symbol, after_ns=0, before_ns=stamps[-1] + MS)
    inst = symbol.replace("-PERP", "-SWAP")
    status, body = rest_get(book, instId=inst, type="1", after=str(n + 1), limit="1")
    assert status == 200
    [rest] = HISTORY.page(s, HISTORY.first(s), body, RECV_NS).trades
    assert rest == ws_trade(book, symbol, n, channel)


def test_simulated_history_trades_pages_like_the_docs() -> None:
    stamps = [T0 + (n // 3) * MS for n in range(300)]  # three trades a ms
    book = book_of("BTC-USDT", stamps)

    def ids(**query: str) -> list[int]:
        status, body = rest_get(book, instId="BTC-USDT", **query)
        assert status == 200
        return [int(row["tradeId"]) for row in json.loads(body)["data"]]

    assert ids() == list(range(300, 200, -1))  # the newest 100, newest first
    assert ids(limit="5") == [300, 299, 298, 297, 296]
    assert ids(limit="500") == list(range(300, 200, -1))  # at most 100
    assert ids(after="10") == list(range(9, 0, -1))  # type 1 by default: ids before 10
    assert ids(after="10", before="6") == [9, 8, 7]
    assert ids(before="297") == [300, 299, 298]
    # type 2: trades whose ms is before ``after``: ms T0+3 holds trades 10, 11, 12
    assert ids(type="2", after=str(T0 // MS + 3), limit="4") == [9, 8, 7, 6]
    for bad in ({}, {"instId": ""}, {"type": "3"}, {"after": "-1"}, {"limit": "0"}):
        query = {"instId": "BTC-USDT", **bad} if bad else {"type": "1"}
        status, body = rest_get(book, **query)
        assert status == 400 and json.loads(body)["code"] == "51000"
    assert DIALECT.rest("/api/v5/market/trades", {}, {}, book) is None
    status, body = rest_get(TradeBook(), instId="BTC-USDT")
    assert (status, json.loads(body)) == (200, {"code": "0", "msg": "", "data": []})


def busy_book() -> tuple[TradeBook, list[int]]:
    # 450 trades, two or three per ms: pages end inside a millisecond
    stamps = [T0 + (n * 2 // 5) * MS for n in range(450)]
    return book_of("BTC-USDT-PERP", stamps), stamps


def test_fetch_span_gets_exactly_the_span_from_the_simulator() -> None:
    book, stamps = busy_book()
    s = span("BTC-USDT-PERP", after_ns=stamps[49], before_ns=stamps[400])
    expected = [ws_trade(book, "BTC-USDT-PERP", n) for n in range(1, 451)]
    expected = [t for t in expected if s.after_ns <= t.ts_ns <= s.before_ns]
    # ms 19 .. 160, both ends included: ms 19 holds trade 49 and the stored neighbour 50, ms 160
    # the stored neighbour 401 and trades 402, 403
    assert len(expected) == 355
    assert {"49", "403"} <= {t.trade_id for t in expected}
    assert by_id(fetch_whole(HISTORY, book, s, requests=4)) == by_id(expected)


def test_fetch_span_pages_on_when_a_page_ends_inside_the_start_ms() -> None:
    """Trades 199 .. 201 share ms 66; the first page (300 .. 201) ends at the stored neighbour
    201, so 199 and 200 (missed trades of the span's start ms) are on the second page."""
    stamps = [T0 + (n // 3) * MS for n in range(300)]
    book = book_of("BTC-USDT", stamps)
    s = span(after_ns=stamps[200], before_ns=stamps[299])
    trades = fetch_whole(HISTORY, book, s, requests=2)
    assert trade_ids(trades) == list(range(300, 198, -1))


def test_fetch_span_rides_out_rate_limit_answers() -> None:
    book, stamps = busy_book()
    s = span("BTC-USDT-PERP", after_ns=stamps[299], before_ns=stamps[350])
    trades = fetch_whole(HISTORY, book, s, requests=1, faults=2)
    assert trade_ids(trades) == [
        n for n in range(353, 298, -1) if s.after_ns <= stamps[n - 1] <= s.before_ns
    ]
    assert {"299", "353"} <= {t.trade_id for t in trades}  # the ends' ms share


def test_fetch_span_beyond_three_months_is_short() -> None:
    day = 86_400 * 10**9
    # one trade a day for 120 days: the first 30 are out of the 90-day reach
    stamps = [T0 + n * day for n in range(120)]
    book = book_of("BTC-USDT", stamps)
    s = span(after_ns=stamps[9], before_ns=stamps[40])
    fetched, _ = fetch_from(HISTORY, book, s)
    reachable = [n for n in range(10, 42) if stamps[n - 1] >= stamps[-1] - REST_REACH_NS]
    assert reachable[-1] == 41  # the span's end is included
    assert trade_ids(fetched.trades) == list(reversed(reachable))
    assert fetched.short is not None and "3 months" in fetched.short


def test_a_span_of_the_aggregated_trades_channel_is_refused_without_a_request() -> None:
    """Rows of the ``trades`` channel (context "") are aggregates REST does not serve."""
    book, stamps = busy_book()
    s = span("BTC-USDT-PERP", after_ns=stamps[49], before_ns=stamps[400], context="")
    reason = HISTORY.cannot(s)
    assert reason is not None and "trades-all" in reason
    assert HISTORY.cannot(span("BTC-USDT-PERP", after_ns=stamps[49], before_ns=stamps[400])) is None
    fetched, served = fetch_from(HISTORY, book, s)
    assert served == 0
    assert fetched.refused == reason and fetched.requests == 0 and fetched.trades == []
    assert fetched.short is None


# -- answers shaped like history-trades' (any answer at all: test_rest_all.py) ------------------

ROW = st.fixed_dictionaries(
    {
        "instId": st.sampled_from(["BTC-USDT", "ETH-USDT"]) | st.text(max_size=5),
        "tradeId": st.from_regex(r"[0-9]{1,25}", fullmatch=True) | st.text(max_size=5),
        "px": st.text(max_size=5),
        "sz": st.text(max_size=5),
        "side": st.sampled_from(["buy", "sell", "x"]),
        "ts": st.from_regex(r"[0-9]{1,25}", fullmatch=True) | ANY_JSON,
    }
)
ANSWERS = st.fixed_dictionaries(
    {
        "code": st.sampled_from(["0", "51001", "1"]) | ANY_JSON,
        "data": st.lists(ROW, max_size=3) | ANY_JSON,
    }
)


@FUZZ
@given(ANSWERS)
def test_answer_shaped_json_is_a_bad_answer_or_a_page(value: object) -> None:
    page_or_bad_answer(HISTORY, span(after_ns=T0, before_ns=T0 + MS), value)
