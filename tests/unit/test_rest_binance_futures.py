"""Binance USD-M REST backfill (``common.rest.binance_futures``) and the simulator's endpoint.

Fixtures, copied from the docs:
- ``rest_agg_trades.json``: the response example of "Compressed/Aggregate Trades List",
  GET /fapi/v1/aggTrades (its ``//`` comments and trailing comma removed),
  https://developers.binance.com/docs/derivatives/usds-margined-futures/market-data/rest-api/Compressed-Aggregate-Trades-List
- ``rest_error.json``: Binance's error payload (``{"code": -1121, "msg": "Invalid symbol."}``),
  https://developers.binance.com/docs/derivatives/usds-margined-futures/general-info
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.records import Trade
from common.rest import Page, Request, Span, all_histories
from common.rest.binance_futures import HISTORY
from common.simulator.dialect import RestReply, SimSession
from common.simulator.dialects import get_dialect
from common.simulator.engine import TradeBook
from tests.rest_helpers import (
    FUZZ,
    bad_answer,
    fetch_whole,
    make_span,
    page_or_bad_answer,
    sim_get,
    simulated_page,
    trade_ids,
)
from tests.venue_helpers import RECV_NS, fixture, parse

SYMBOL = "BTC-USDT-PERP"
T0 = 1_700_000_000_000_000_000
HOUR_NS = 3_600_000_000_000


def id_span(
    first: int, last: int, *, symbol: str = SYMBOL, after: int = 0, before: int = 0
) -> Span:
    return make_span(
        "binance-futures", symbol, after, before or 2**62, first_id=first, last_id=last
    )


def time_span(after: int, before: int) -> Span:
    return make_span("binance-futures", SYMBOL, after, before)


def row(agg_id: int, time: int) -> dict[str, object]:
    return {"a": agg_id, "p": "1.5", "q": "2", "f": agg_id, "l": agg_id, "T": time, "m": False}


def rows(first: int, count: int, time: int = 1_700_000_000_000) -> bytes:
    """An aggTrades answer with ids ``first .. first + count - 1``, 1 ms apart."""
    return json.dumps([row(i, time + i) for i in range(first, first + count)]).encode()


# -- the docs' examples -------------------------------------------------------------------------


def test_registered() -> None:
    assert all_histories()["binance-futures"] is HISTORY
    assert HISTORY.default_url == "https://fapi.binance.com"
    assert (HISTORY.limit.units, HISTORY.limit.per_s) == (1200, 60.0)  # half of 2,400/min


def test_docs_agg_trades_example() -> None:
    span = id_span(26129, 26129)
    page = HISTORY.page(
        span, HISTORY.first(span), fixture("binance-futures", "rest_agg_trades.json"), RECV_NS
    )
    assert page == Page(
        [
            Trade(
                exchange="binance-futures",
                symbol=SYMBOL,
                trade_id="26129",  # the aggregate id "a", as the @aggTrade rows
                price="0.01633102",
                amount="4.70443515",
                side="sell",  # "m": true, the buyer was the maker
                ts_ns=1_498_793_709_153_000_000,
                recv_ns=RECV_NS,
            )
        ],
        None,
    )


def test_same_key_as_the_websocket_aggtrade_event() -> None:
    # The docs' REST aggregate as the documented @aggTrade event, and the docs' @aggTrade event
    # (tests/fixtures/binance-futures/aggtrade.json) as its REST aggregate.
    frame = (
        b'{"e":"aggTrade","E":1498793709200,"s":"BTCUSDT","a":26129,"p":"0.01633102",'
        b'"q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":true}'
    )
    rest_of_ws = b'[{"a":5933014,"p":"0.001","q":"100","f":100,"l":105,"T":123456785,"m":true}]'
    for ws_frame, body, agg_id in [
        (frame, fixture("binance-futures", "rest_agg_trades.json"), 26129),
        (fixture("binance-futures", "aggtrade.json"), rest_of_ws, 5933014),
    ]:
        [ws] = parse("binance-futures", ws_frame).trades
        span = id_span(agg_id, agg_id)
        [rest] = HISTORY.page(span, HISTORY.first(span), body, RECV_NS).trades
        assert rest == ws  # every field, the receive time included (the same RECV_NS)


def test_quarterly_contract_symbol() -> None:
    span = id_span(7, 7, symbol="BTC-USDT-250627")
    request = HISTORY.first(span)
    assert request.params[0] == ("symbol", "BTCUSDT_250627")
    [trade] = HISTORY.page(span, request, rows(7, 1), RECV_NS).trades
    assert trade.symbol == "BTC-USDT-250627"
    [ws] = parse(
        "binance-futures",
        b'{"e":"aggTrade","E":1,"s":"BTCUSDT_250627","a":7,"p":"1.5","q":"2","f":7,"l":7,'
        b'"T":1700000000007,"m":false}',
    ).trades
    assert trade == ws


def test_error_object_is_a_bad_answer_and_a_reasoned_refusal() -> None:
    span = id_span(1, 2)
    body = fixture("binance-futures", "rest_error.json")
    bad_answer(HISTORY, span, body)
    assert HISTORY.refusal(400, body) == "HTTP 400: Binance error -1121: Invalid symbol."
    assert HISTORY.refusal(403, b"") is None


# -- requests and the cursor (pure) -------------------------------------------------------------


def test_first_request_by_id() -> None:
    assert HISTORY.first(id_span(500, 2600)) == Request(
        "/fapi/v1/aggTrades",
        (("symbol", "BTCUSDT"), ("fromId", "500"), ("limit", "1000")),
        (),
        20,
    )


def test_first_request_of_a_time_span_is_an_hour_window() -> None:
    after = 1_700_000_000_123_456_789
    assert HISTORY.first(time_span(after, after + 5 * HOUR_NS)) == Request(
        "/fapi/v1/aggTrades",
        (
            ("symbol", "BTCUSDT"),
            ("startTime", "1700000000123"),
            ("endTime", str(1_700_000_000_123 + 3_599_999)),  # "less than 1 hour" apart
            ("limit", "1000"),
        ),
        (),
        20,
    )
    # A short span: the window ends with it.
    request = HISTORY.first(time_span(after, after + 10_000_000))
    assert ("endTime", "1700000000133") in request.params


def test_window_paging() -> None:
    start_ms = 1_700_000_000_000
    span = time_span(start_ms * 1_000_000, (start_ms + 3 * 3_600_000) * 1_000_000)
    first = HISTORY.first(span)
    end = start_ms + 3_599_999
    # A quiet hour: the next one.
    assert HISTORY.page(span, first, b"[]", RECV_NS) == Page([], HISTORY.window(span, end + 1))
    # Some trades, fewer than a page: the window is done, the next one.
    page = HISTORY.page(span, first, rows(10, 5, start_ms), RECV_NS)
    assert len(page.trades) == 5 and page.next == HISTORY.window(span, end + 1)
    # A full page: on by id, no time filter needed.
    page = HISTORY.page(span, first, rows(10, 1000, start_ms), RECV_NS)
    assert page.next == HISTORY.by_id(span, 1010)
    # The span's end is included: the window ending 1 ms before it is followed by its ms.
    third = HISTORY.window(span, start_ms + 2 * 3_600_000)
    last = HISTORY.window(span, start_ms + 3 * 3_600_000)
    assert ("endTime", str(start_ms + 3 * 3_600_000)) in last.params
    assert HISTORY.page(span, third, b"[]", RECV_NS) == Page([], last)
    assert HISTORY.page(span, last, b"[]", RECV_NS) == Page([], None)
    # Trades past the span's end: done.
    page = HISTORY.page(span, third, rows(10, 5, start_ms + 3 * 3_600_000 - 11), RECV_NS)
    assert page.next is None


def test_id_paging() -> None:
    span = id_span(500, 2600)
    page = HISTORY.page(span, HISTORY.first(span), rows(500, 1000), RECV_NS)
    assert page.next == HISTORY.by_id(span, 1500) and page.short is None
    assert HISTORY.page(span, HISTORY.by_id(span, 2500), rows(2500, 1000), RECV_NS).next is None
    assert HISTORY.page(span, HISTORY.first(span), rows(500, 7), RECV_NS).next is None
    page = HISTORY.page(span, HISTORY.first(span), rows(600, 1000), RECV_NS)
    assert page.short == "the venue has no trades 500..599 of BTC-USDT-PERP"


@pytest.mark.parametrize(
    "body",
    [
        rows(499, 2),
        json.dumps([row(9, 1), row(8, 2)]).encode(),
        b'[{"a":500,"p":"1","q":1,"f":1,"l":1,"T":1,"m":true}]',
        b'[{"a":500,"p":"1","q":"1","f":1,"l":1,"T":"1","m":true}]',
        b'[{"a":500,"p":"1","q":"1","f":1,"l":1,"T":1}]',
        b'{"code":-1003,"msg":"Too many requests."}',
        b"",
        b"[",
    ],
)
def test_unreadable_answers_are_bad(body: bytes) -> None:
    bad_answer(HISTORY, id_span(500, 2600), body)


# answers shaped like aggTrades' (any answer at all: test_rest_all.py)
ROW = st.fixed_dictionaries(
    {
        "a": st.integers(-1, 2**64) | st.text(max_size=3),
        "p": st.text(max_size=5) | st.floats(),
        "q": st.text(max_size=5),
        "f": st.integers(),
        "T": st.integers(-(2**63), 2**64),
        "m": st.booleans() | st.none(),
    }
)


@FUZZ
@given(value=st.lists(ROW, max_size=4))
def test_answer_shaped_json_gives_a_page_or_bad_answer(value: object) -> None:
    for span in (id_span(0, 2600), time_span(0, 2**62)):
        page_or_bad_answer(HISTORY, span, value, later=[HISTORY.by_id(span, 0)])


# -- the simulator ------------------------------------------------------------------------------


def sim_rest(book: TradeBook, params: dict[str, str]) -> RestReply:
    return sim_get(get_dialect("binance-futures"), "/fapi/v1/aggTrades", book, params)


def stored_ns(book: TradeBook, n: int) -> int:
    return book.trade(SYMBOL, n).ts_ns // 1_000_000 * 1_000_000


@FUZZ
@given(n=st.integers(1, 40), ts=st.integers(1_500_000_000_000_000_000, 4_000_000_000_000_000_000))
def test_same_key_for_simulated_trades(n: int, ts: int) -> None:
    book = TradeBook()
    book.record(SYMBOL, 1, n, ts)
    dialect = get_dialect("binance-futures")
    [frame] = dialect.trade_frames(SimSession(path="/market/stream"), [book.trade(SYMBOL, n)])
    [ws] = parse("binance-futures", frame.encode() if isinstance(frame, str) else frame).trades
    [rest] = simulated_page(HISTORY, dialect, book, id_span(n, n)).trades
    assert rest == ws


def test_simulator_answers_and_errors() -> None:
    book = TradeBook()
    for i in range(1, 31):
        book.record(SYMBOL, i, 1, T0 + i * 1_000_000)  # 1 ms apart
    ids = [r["a"] for r in json.loads(sim_rest(book, {"symbol": "BTCUSDT", "limit": "2"}).body)]
    assert ids == [29, 30]
    start = T0 // 1_000_000 + 5
    reply = sim_rest(
        book, {"symbol": "BTCUSDT", "startTime": str(start), "endTime": str(start + 2)}
    )
    assert [r["a"] for r in json.loads(reply.body)] == [5, 6, 7]  # both ends inclusive
    assert "M" not in json.loads(reply.body)[0]  # USD-M aggregates have no "M"
    for params, code in [
        ({"symbol": "BTCUSDT", "startTime": "0", "endTime": "3600000"}, -1127),
        ({"symbol": "BTCUSDT", "fromId": "1", "endTime": "5"}, -1128),
        ({"symbol": "BTCUSDT", "limit": "1001"}, -1130),
        ({"symbol": "BTCUSDT_2506"}, -1121),
        ({"limit": "5"}, -1102),
    ]:
        reply = sim_rest(book, params)
        assert (reply.status, json.loads(reply.body)["code"]) == (400, code), params
    assert get_dialect("binance-futures").rest("/api/v3/historicalTrades", {}, {}, book) is None
    # The spot dialect still answers spot paths only.
    assert get_dialect("binance").rest("/fapi/v1/aggTrades", {}, {}, book) is None


def test_simulator_answers_in_the_docs_shape() -> None:
    book = TradeBook()
    book.record(SYMBOL, 1, 3, T0)
    [doc] = json.loads(fixture("binance-futures", "rest_agg_trades.json"))
    [sim] = json.loads(sim_rest(book, {"symbol": "BTCUSDT", "limit": "1"}).body)
    assert sim.keys() == doc.keys()
    assert [type(sim[k]) for k in doc] == [type(doc[k]) for k in doc]


@pytest.mark.parametrize("faults", [0, 2])
def test_fetch_span_by_id_from_the_simulator(faults: int) -> None:
    book = TradeBook()
    for i in range(1, 5001):
        book.record(SYMBOL, i, 1, T0 + i * 1_234_567)
    span = id_span(1234, 3456, after=stored_ns(book, 1233), before=stored_ns(book, 3457))
    trades = fetch_whole(HISTORY, book, span, requests=3, faults=faults)
    assert trade_ids(trades) == list(range(1234, 3457))
    for trade in trades:
        want = book.trade(SYMBOL, int(trade.trade_id))
        assert (trade.price, trade.amount, trade.side) == (want.price, want.amount, want.side)
        assert trade.ts_ns == stored_ns(book, int(trade.trade_id))


def test_fetch_time_span_across_quiet_hours() -> None:
    # Trades 1..2000 1 ms apart, three quiet hours, trades 2001..4000: a span from trade 1499 to
    # trade 3501 walks one window with trades, quiet windows, then pages by id.
    book = TradeBook()
    for i in range(1, 4001):
        book.record(SYMBOL, i, 1, T0 + i * 1_000_000 + (3 * HOUR_NS if i > 2000 else 0))
    span = time_span(stored_ns(book, 1499), stored_ns(book, 3501))
    # window 1 (1499..2000, short), windows 2-3 (quiet), window 4 (full), by id from 3001.
    trades = fetch_whole(HISTORY, book, span, requests=5)
    # Both ends included (a missed trade may share a stored neighbour's ms).
    assert trade_ids(trades) == list(range(1499, 3502))
