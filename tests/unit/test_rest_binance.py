"""Binance spot REST backfill (``common.rest.binance``) and the simulator's REST endpoints.

Fixtures, copied from the docs' response examples:
- ``rest_historical_trades.json``: "Old trade lookup", GET /api/v3/historicalTrades,
  https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints#old-trade-lookup
- ``rest_agg_trades.json``: "Compressed/Aggregate trades list", GET /api/v3/aggTrades (its
  ``//`` comments stripped), same page.
- ``rest_error.json``: the error payload of "Error Codes",
  https://developers.binance.com/docs/binance-spot-api-docs/rest-api/general-api-information
"""

from __future__ import annotations

import dataclasses
import json
from urllib.parse import parse_qs

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.records import Trade
from common.rest import BadAnswer, Page, Request, Span, all_histories
from common.rest.binance import HISTORY
from common.simulator.dialect import RestReply, SimSession
from common.simulator.dialects import get_dialect
from common.simulator.engine import TradeBook
from tests.rest_helpers import (
    FUZZ,
    bad_answer,
    fetch_from,
    fetch_whole,
    make_span,
    page_or_bad_answer,
    sim_get,
    simulated_page,
)
from tests.venue_helpers import RECV_NS, fixture, parse

SYMBOL = "BTC-USDT"
T0 = 1_700_000_000_000_000_000


def id_span(first: int, last: int, *, context: str = "", after: int = 0, before: int = 0) -> Span:
    return make_span(
        "binance", SYMBOL, after, before or 2**62, first_id=first, last_id=last, context=context
    )


def agg_span(first: int, last: int, *, context: str = "", after: int = 0, before: int = 0) -> Span:
    """A span of aggregate trade ids: the rows of ``@aggTrade`` (``agg-<a>``)."""
    return make_span(
        "binance", SYMBOL, after, before or 2**62, first_id=first, last_id=last, context=context,
        id_prefix="agg-",
    )  # fmt: skip


def time_span(after: int, before: int, *, context: str = "") -> Span:
    return make_span("binance", SYMBOL, after, before, context=context)


def rows(first: int, count: int, time: int = 1_700_000_000_000) -> bytes:
    """A historicalTrades answer with ids ``first .. first + count - 1``."""
    return json.dumps([row(i, time + i) for i in range(first, first + count)]).encode()


def row(trade_id: int, time: int) -> dict[str, object]:
    return {
        "id": trade_id,
        "price": "1.5",
        "qty": "2",
        "quoteQty": "3",
        "time": time,
        "isBuyerMaker": trade_id % 2 == 0,
        "isBestMatch": True,
    }


# -- the docs' examples -------------------------------------------------------------------------

DOC_TRADE = Trade(
    exchange="binance",
    symbol=SYMBOL,
    trade_id="28457",
    price="4.00000100",
    amount="12.00000000",
    side="sell",  # isBuyerMaker true: the seller took
    ts_ns=1_499_865_549_590_000_000,
    recv_ns=RECV_NS,
)


def test_registered() -> None:
    assert all_histories()["binance"] is HISTORY
    assert HISTORY.default_url == "https://api.binance.com"
    assert (HISTORY.limit.units, HISTORY.limit.per_s) == (3000, 60.0)  # half of 6,000/min


def test_docs_historical_trades_example() -> None:
    span = id_span(28457, 28457)
    page = HISTORY.page(
        span, HISTORY.first(span), fixture("binance", "rest_historical_trades.json"), RECV_NS
    )
    assert page == Page([DOC_TRADE], None)


def test_docs_example_in_microseconds() -> None:
    # A µs span asks for µs ("X-MBX-TIME-UNIT:MICROSECOND") and reads the answer as µs.
    span = id_span(28457, 28457, context="microsecond")
    request = HISTORY.first(span)
    assert request.headers == (("X-MBX-TIME-UNIT", "MICROSECOND"),)
    [trade] = HISTORY.page(
        span, request, fixture("binance", "rest_historical_trades.json"), RECV_NS
    ).trades
    assert trade.ts_ns == 1_499_865_549_590 * 1_000


def test_docs_agg_trades_example() -> None:
    span = agg_span(26129, 26129)
    request = HISTORY.first(span)
    assert request == Request(
        "/api/v3/aggTrades",
        (("symbol", "BTCUSDT"), ("fromId", "26129"), ("limit", "1000")),
        (),
        4,  # "Weight: 4" (historicalTrades: 25)
    )
    page = HISTORY.page(span, request, fixture("binance", "rest_agg_trades.json"), RECV_NS)
    assert page == Page(
        [
            Trade(
                exchange="binance",
                symbol=SYMBOL,
                trade_id="agg-26129",
                price="0.01633102",
                amount="4.70443515",
                side="sell",  # m true: the buyer was the maker
                ts_ns=1_498_793_709_153_000_000,
                recv_ns=RECV_NS,
            )
        ],
        None,
    )


# The docs' REST trade as the documented @trade event (fields t, p, q, T, m), and the docs' REST
# aggregate as the documented @aggTrade event (fields a, p, q, f, l, T, m).
TRADE_EVENT = (
    b'{"e":"trade","E":1499865549590,"s":"BTCUSDT","t":28457,"p":"4.00000100",'
    b'"q":"12.00000000","T":1499865549590,"m":true,"M":true}'
)
AGG_EVENT = (
    b'{"e":"aggTrade","E":1498793709153,"s":"BTCUSDT","a":26129,"p":"0.01633102",'
    b'"q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":true,"M":true}'
)


@pytest.mark.parametrize("context", ["", "microsecond"])
@pytest.mark.parametrize(
    ("frame", "span", "answer"),
    [
        (TRADE_EVENT, id_span(28457, 28457), "rest_historical_trades.json"),
        (AGG_EVENT, agg_span(26129, 26129), "rest_agg_trades.json"),
    ],
    ids=["trade", "aggTrade"],
)
def test_same_key_as_the_websocket_event(
    context: str, frame: bytes, span: Span, answer: str
) -> None:
    [ws] = parse("binance", frame, context=context).trades
    span = dataclasses.replace(span, context=context)
    request = HISTORY.first(span)
    assert request.headers == ((("X-MBX-TIME-UNIT", "MICROSECOND"),) if context else ())
    [rest] = HISTORY.page(span, request, fixture("binance", answer), RECV_NS).trades
    assert rest == ws  # every field, the receive time included (the same RECV_NS)


def test_an_id_space_answers_only_its_own_endpoint() -> None:
    trades, aggs = (
        fixture("binance", "rest_historical_trades.json"),
        fixture("binance", "rest_agg_trades.json"),
    )
    plain, agg = id_span(1, 5), agg_span(1, 5)
    with pytest.raises(BadAnswer):
        HISTORY.page(agg, Request("/api/v3/historicalTrades"), trades, RECV_NS)
    with pytest.raises(BadAnswer):
        HISTORY.page(plain, Request("/api/v3/aggTrades"), aggs, RECV_NS)
    other = make_span("binance", SYMBOL, 0, 2**62, first_id=1, last_id=5, id_prefix="x-")
    assert HISTORY.cannot(other) == "binance spot has no id space 'x-'"
    assert HISTORY.cannot(plain) is None and HISTORY.cannot(agg) is None


def test_a_span_holds_the_trades_of_its_id_space_only() -> None:
    def t(trade_id: str) -> Trade:
        return Trade("binance", SYMBOL, trade_id, "1", "1", "buy", T0, RECV_NS)

    plain, agg = id_span(5, 7), agg_span(5, 7)
    assert [plain.holds(t(i)) for i in ("4", "5", "7", "8", "agg-5")] == [
        False, True, True, False, False
    ]  # fmt: skip
    ids = ("agg-4", "agg-5", "agg-7", "agg-8", "5", "agg-", "agg-\u0665")  # (an Arabic-Indic 5)
    assert [agg.holds(t(i)) for i in ids] == [False, True, True, False, False, False, False]


def test_error_object_is_a_bad_answer_and_a_reasoned_refusal() -> None:
    span = id_span(1, 2)
    body = fixture("binance", "rest_error.json")
    bad_answer(HISTORY, span, body)
    assert HISTORY.refusal(400, body) == "HTTP 400: Binance error -1121: Invalid symbol."
    assert HISTORY.refusal(403, b"<html>WAF</html>") is None  # may be a rate limit: retry later
    assert HISTORY.refusal(404, b"not json") == "HTTP 404: not json"


# -- requests and the cursor (pure) -------------------------------------------------------------


def test_first_request_by_id() -> None:
    assert HISTORY.first(id_span(500, 2600)) == Request(
        "/api/v3/historicalTrades",
        (("symbol", "BTCUSDT"), ("fromId", "500"), ("limit", "1000")),
        (),
        25,
    )


def test_time_spans_are_refused() -> None:
    # The span's context is the time unit only: @trade (plain ids) and @aggTrade (agg- ids)
    # feeds look alike, so a time span cannot be given the rows' keys.
    span = time_span(1_700_000_000_123_456_789, 1_700_000_100_000_000_000)
    reason = HISTORY.cannot(span)
    assert reason is not None and "agg-" in reason
    assert HISTORY.cannot(id_span(1, 2)) is None
    with pytest.raises(ValueError):
        HISTORY.first(span)


def test_full_page_asks_from_the_next_id() -> None:
    span = id_span(500, 2600)
    page = HISTORY.page(span, HISTORY.first(span), rows(500, 1000), RECV_NS)
    assert [t.trade_id for t in page.trades] == [str(i) for i in range(500, 1500)]
    assert page.next == HISTORY.by_id(span, 1500) and page.short is None


def test_paging_stops_at_the_span_end_or_a_short_page() -> None:
    span = id_span(500, 1200)
    assert HISTORY.page(span, HISTORY.first(span), rows(500, 1000), RECV_NS).next is None
    span = id_span(500, 9000)
    assert HISTORY.page(span, HISTORY.first(span), rows(500, 10), RECV_NS).next is None
    assert HISTORY.page(span, HISTORY.first(span), b"[]", RECV_NS) == Page([], None)


def test_ids_the_venue_skips_make_the_span_short() -> None:
    span = id_span(500, 2600)
    page = HISTORY.page(span, HISTORY.first(span), rows(700, 1000), RECV_NS)
    assert page.short == "the venue has no trades 500..699 of BTC-USDT"
    assert page.next == HISTORY.by_id(span, 1700)


@pytest.mark.parametrize(
    "body",
    [
        rows(499, 3),  # before the id asked for
        json.dumps([row(510, 1), row(505, 2)]).encode(),  # not ascending
        b'[{"id":500,"price":4.1,"qty":"1","time":1,"isBuyerMaker":true}]',  # a float price
        b'[{"id":"500","price":"4.1","qty":"1","time":1,"isBuyerMaker":true}]',
        b'[{"id":500,"price":"4.1","qty":"1","time":1,"isBuyerMaker":1}]',
        b'[{"id":500,"price":"4.1","qty":"1","isBuyerMaker":true}]',
        b'{"code":-1003,"msg":"Too many requests."}',
        b"",
        b"not json",
        b"\xff",
    ],
)
def test_unreadable_answers_are_bad(body: bytes) -> None:
    bad_answer(HISTORY, id_span(500, 2600), body)


# answers shaped like historicalTrades' (any answer at all: test_rest_all.py)
ROW = st.fixed_dictionaries(
    {
        "id": st.integers(-1, 2**64) | st.text(max_size=3),
        "price": st.text(max_size=5) | st.integers(),
        "qty": st.text(max_size=5),
        "time": st.integers(-(2**63), 2**64),
        "isBuyerMaker": st.booleans() | st.none(),
    }
)


@FUZZ
@given(value=st.lists(ROW, max_size=4))
def test_answer_shaped_json_gives_a_page_or_bad_answer(value: object) -> None:
    span = id_span(0, 2600)
    page_or_bad_answer(HISTORY, span, value, later=[HISTORY.by_id(span, 2000)])


def agg_row(agg_id: int, time: int) -> dict[str, object]:
    return {"a": agg_id, "p": "1.5", "q": "2", "f": agg_id, "l": agg_id, "T": time, "m": False,
            "M": True}  # fmt: skip


@pytest.mark.parametrize(
    "body",
    [
        json.dumps([agg_row(499, 1)]).encode(),  # before the id asked for
        json.dumps([agg_row(510, 1), agg_row(505, 2)]).encode(),  # not ascending
        b'[{"a":500,"p":4.1,"q":"1","T":1,"m":true}]',  # a float price
        b'[{"a":"500","p":"4.1","q":"1","T":1,"m":true}]',
        b'[{"a":500,"p":"4.1","q":"1","m":true}]',  # no time
        b'[{"id":500,"price":"4.1","qty":"1","time":1,"isBuyerMaker":true}]',  # another endpoint's
        b'{"code":-1003,"msg":"Too many requests."}',
        b"",
        b"\xff",
    ],
)
def test_unreadable_aggregate_answers_are_bad(body: bytes) -> None:
    bad_answer(HISTORY, agg_span(500, 2600), body)


AGG_ROW = st.fixed_dictionaries(
    {
        "a": st.integers(-1, 2**64) | st.text(max_size=3),
        "p": st.text(max_size=5) | st.integers(),
        "q": st.text(max_size=5),
        "T": st.integers(-(2**63), 2**64),
        "m": st.booleans() | st.none(),
    }
)


@FUZZ
@given(value=st.lists(AGG_ROW, max_size=4))
def test_aggregate_shaped_json_gives_agg_rows_or_bad_answer(value: object) -> None:
    span = agg_span(0, 2600)
    body = json.dumps(value).encode()
    for request in (HISTORY.first(span), HISTORY.by_id(span, 2000)):
        try:
            page = HISTORY.page(span, request, body, RECV_NS)
        except BadAnswer as exc:
            assert exc.reason.startswith("binance: "), exc.reason
            continue
        assert all(t.trade_id.startswith("agg-") for t in page.trades)  # never a plain id


# -- the simulator ------------------------------------------------------------------------------


def book_of(count: int, *, step_ns: int = 1_234_567, symbol: str = SYMBOL) -> TradeBook:
    book = TradeBook()
    for i in range(1, count + 1):
        book.record(symbol, i, 1, T0 + i * step_ns)
    return book


def stored_ns(book: TradeBook, n: int, context: str) -> int:
    """Trade ``n``'s time as a stored WebSocket row has it (ms or µs precision)."""
    unit = 1_000 if context == "microsecond" else 1_000_000
    return book.trade(SYMBOL, n).ts_ns // unit * unit


def sim_rest(
    book: TradeBook, params: dict[str, str], headers: dict[str, str] | None = None
) -> RestReply:
    return sim_get(get_dialect("binance"), "/api/v3/historicalTrades", book, params, headers)


@FUZZ
@given(
    n=st.integers(1, 40),
    ts=st.integers(1_500_000_000_000_000_000, 4_000_000_000_000_000_000),
    context=st.sampled_from(["", "microsecond"]),
)
def test_same_key_for_simulated_trades(n: int, ts: int, context: str) -> None:
    book = TradeBook()
    book.record(SYMBOL, 1, n, ts)
    dialect = get_dialect("binance")
    path = "/stream?timeUnit=MICROSECOND" if context else "/stream"
    [frame] = dialect.trade_frames(SimSession(path=path), [book.trade(SYMBOL, n)])
    frame_bytes = frame.encode() if isinstance(frame, str) else frame
    [ws] = parse("binance", frame_bytes, context=context).trades
    [rest] = simulated_page(HISTORY, dialect, book, id_span(n, n, context=context)).trades
    assert rest == ws


def test_simulator_pages_and_errors() -> None:
    book = book_of(30)
    reply = sim_rest(book, {"symbol": "BTCUSDT", "limit": "2"})
    assert [r["id"] for r in json.loads(reply.body)] == [29, 30]  # no fromId: the newest
    reply = sim_rest(book, {"symbol": "BTCUSDT", "fromId": "5", "limit": "3"})
    assert [r["id"] for r in json.loads(reply.body)] == [5, 6, 7]
    assert len(json.loads(sim_rest(book, {"symbol": "BTCUSDT", "fromId": "1"}).body)) == 30
    for params, code in [
        ({}, -1102),
        ({"symbol": "ETHUSDT"}, -1121),
        ({"symbol": "btcusdt"}, -1121),
        ({"symbol": "BTCUSDT", "limit": "1001"}, -1130),
        ({"symbol": "BTCUSDT", "limit": "0"}, -1130),
        ({"symbol": "BTCUSDT", "fromId": "-1"}, -1100),
    ]:
        reply = sim_rest(book, params)
        assert (reply.status, json.loads(reply.body)["code"]) == (400, code), params
    reply = sim_rest(book, {"symbol": "BTCUSDT"}, {"x-mbx-time-unit": "NANOSECOND"})
    assert reply.status == 400
    agg = get_dialect("binance").rest(
        "/api/v3/aggTrades", parse_qs("symbol=BTCUSDT&fromId=3&startTime=1"), {}, book
    )
    assert agg is not None and json.loads(agg.body)["code"] == -1128
    assert get_dialect("binance").rest("/api/v3/trades", {}, {}, book) is None  # 404


def test_simulator_answers_in_the_docs_shape() -> None:
    book = book_of(3)
    [doc] = json.loads(fixture("binance", "rest_historical_trades.json"))
    [sim] = json.loads(sim_rest(book, {"symbol": "BTCUSDT", "limit": "1"}).body)
    assert sim.keys() == doc.keys()
    assert [type(sim[k]) for k in doc] == [type(doc[k]) for k in doc]
    [doc] = json.loads(fixture("binance", "rest_agg_trades.json"))
    agg = get_dialect("binance").rest("/api/v3/aggTrades", {"symbol": ["BTCUSDT"]}, {}, book)
    assert agg is not None
    sim = json.loads(agg.body)[0]
    assert sim.keys() == doc.keys()
    assert [type(sim[k]) for k in doc] == [type(doc[k]) for k in doc]


@pytest.mark.parametrize("context", ["", "microsecond"])
@pytest.mark.parametrize("faults", [0, 2])
@pytest.mark.parametrize("prefix", ["", "agg-"], ids=["trade", "aggTrade"])
def test_fetch_span_by_id_from_the_simulator(context: str, faults: int, prefix: str) -> None:
    # (the simulator's aggregates are one trade each: aggregate id = trade id)
    book = book_of(5000)
    span = (agg_span if prefix else id_span)(
        1234,
        3456,
        context=context,
        after=stored_ns(book, 1233, context),
        before=stored_ns(book, 3457, context),
    )
    trades = fetch_whole(HISTORY, book, span, requests=3, faults=faults)  # 1234.., 2234.., 3234..
    assert [t.trade_id for t in trades] == [f"{prefix}{i}" for i in range(1234, 3457)]
    for trade in trades:
        n = int(trade.trade_id.removeprefix(prefix))
        want = book.trade(SYMBOL, n)
        assert (trade.price, trade.amount, trade.side) == (want.price, want.amount, want.side)
        assert trade.ts_ns == stored_ns(book, n, context)


def test_fetch_time_span_is_refused_without_a_request() -> None:
    book = book_of(100)
    span = time_span(stored_ns(book, 10, ""), stored_ns(book, 20, ""))
    fetched, served = fetch_from(HISTORY, book, span)
    assert served == 0
    assert fetched.refused == HISTORY.cannot(span) and fetched.trades == []


def test_fetch_refused_for_an_unknown_symbol() -> None:
    span = Span(
        exchange="binance",
        symbol="ETH-USDT",
        context="",
        first_id=1,
        last_id=5,
        after_ns=0,
        before_ns=2**62,
    )
    fetched, _ = fetch_from(HISTORY, book_of(10), span)
    assert fetched.refused == "HTTP 400: Binance error -1121: Invalid symbol."
    assert fetched.trades == []
