"""Bybit REST backfill (``common.rest.bybit``) and the simulator's ``recent-trade``.

The docs' example (``tests/fixtures/bybit/rest_recent_trade_spot.json``) is the Response Example
of https://bybit-exchange.github.io/docs/v5/market/recent-trade, whitespace removed, keys, order
and values unchanged.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.records import Trade
from common.rest.base import Page, Span
from common.rest.bybit import HISTORY, PATH
from common.simulator.dialect import SimSession
from common.simulator.dialects.bybit import DIALECT
from common.simulator.engine import TradeBook
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
    simulated_page,
    trade_ids,
)
from tests.venue_helpers import RECV_NS, fixture, parse

MS = 1_000_000
T0 = 1_700_000_000_000 * MS


def span(symbol: str = "BTC-USDT", *, after_ns: int, before_ns: int) -> Span:
    context = "linear" if symbol.endswith("-PERP") else "spot"
    return make_span("bybit", symbol, after_ns, before_ns, context=context)


# -- the docs' example --------------------------------------------------------------------------

DOCS_TRADE = Trade(
    exchange="bybit",
    symbol="BTC-USDT",
    trade_id="2100000000007764263",
    price="16618.49",
    amount="0.00012",
    side="buy",
    ts_ns=1_672_052_955_758_000_000,
    recv_ns=RECV_NS,
)


def test_docs_example_is_parsed_field_by_field() -> None:
    body = fixture("bybit", "rest_recent_trade_spot.json")
    s = span(after_ns=1_672_052_955_759 * MS, before_ns=1_672_052_956_000 * MS)
    assert HISTORY.page(s, HISTORY.first(s), body, RECV_NS) == Page([DOCS_TRADE], None)
    # a span starting at the trade's own ms: older trades of that ms may have been cut off
    s = span(after_ns=1_672_052_955_758 * MS, before_ns=1_672_052_956_000 * MS)
    page = HISTORY.page(s, HISTORY.first(s), body, RECV_NS)
    assert page.trades == [DOCS_TRADE] and page.next is None and page.short is not None


def test_docs_trade_has_the_same_key_as_the_websocket_row() -> None:
    """The docs' REST trade as ``publicTrade`` pushes it on spot (fields as in the trade page:
    ``i`` the trade id, ``T`` the fill time in ms, ``S`` the taker side)."""
    frame = json.dumps(
        {
            "topic": "publicTrade.BTCUSDT",
            "ts": 1672052955760,
            "type": "snapshot",
            "data": [
                {"i": "2100000000007764263", "T": 1672052955758, "p": "16618.49", "v": "0.00012",
                 "S": "Buy", "s": "BTCUSDT", "BT": False, "RPI": False, "seq": 7961638800}
            ],
        }
    )  # fmt: skip
    assert parse("bybit", frame.encode(), context="spot").trades == [DOCS_TRADE]


def test_a_linear_trade_has_the_same_key_as_the_docs_websocket_row() -> None:
    """The trade of the docs' linear ``publicTrade`` example as recent-trade would return it."""
    [ws] = parse("bybit", fixture("bybit", "trade_linear.json"), context="linear").trades
    row = {"execId": "20f43950-d8dd-5b31-9112-a178eb6023af", "symbol": "BTCUSDT",
           "price": "16578.50", "size": "0.001", "side": "Buy", "time": "1672304486865",
           "isBlockTrade": False, "isRPITrade": False}  # fmt: skip
    result = {"category": "linear", "list": [row]}
    body = json.dumps({"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}})
    s = span("BTC-USDT-PERP", after_ns=ws.ts_ns - MS, before_ns=ws.ts_ns + MS)
    assert HISTORY.page(s, HISTORY.first(s), body.encode(), RECV_NS).trades == [ws]


# -- requests and answers (pure) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "category", "limit"),
    [("BTC-USDT", "spot", "60"), ("ETH-USDT-PERP", "linear", "1000")],
)
def test_the_one_request_asks_for_the_deepest_page(symbol: str, category: str, limit: str) -> None:
    request = HISTORY.first(span(symbol, after_ns=T0, before_ns=T0 + MS))
    assert request.path == PATH == "/v5/market/recent-trade"
    name = symbol.removesuffix("-PERP").replace("-", "")
    assert request.params == (("category", category), ("symbol", name), ("limit", limit))
    assert request.weight == 1


def answer(ids: range, ts_ms: int, symbol: str = "BTCUSDT") -> bytes:
    rows = [
        {"execId": str(i), "symbol": symbol, "price": "10", "size": "1", "side": "Sell",
         "time": str(ts_ms + i), "isBlockTrade": False} for i in reversed(ids)
    ]  # fmt: skip
    result = {"category": "spot", "list": rows}
    body = {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}}
    return json.dumps(body, separators=(",", ":")).encode()


def test_an_answer_reaching_before_the_span_start_is_complete() -> None:
    s = span(after_ns=(T0 // MS + 5) * MS, before_ns=T0 + 100 * MS)
    page = HISTORY.page(s, HISTORY.first(s), answer(range(4, 64), T0 // MS), RECV_NS)
    assert len(page.trades) == 60 and page.next is None and page.short is None


# range(5, 65): the oldest trade is at the span's start, which is included: an older trade of
# the same ms may be past the 60 served
@pytest.mark.parametrize("ids", [range(5, 65), range(6, 66), range(0)])
def test_an_answer_not_reaching_before_the_span_start_is_short(ids: range) -> None:
    s = span(after_ns=(T0 // MS + 5) * MS, before_ns=T0 + 100 * MS)
    page = HISTORY.page(s, HISTORY.first(s), answer(ids, T0 // MS), RECV_NS)
    assert page.next is None and len(page.trades) == len(ids)
    assert page.short is not None and "last 60 trades" in page.short


def test_error_answers_are_bad_answers() -> None:
    s = span(after_ns=T0, before_ns=T0 + MS)
    for bad in (
        b'{"retCode":10001,"retMsg":"params error: symbol invalid","result":{},"retExtInfo":{}}',
        answer(range(1, 3), T0 // MS, symbol="ETHUSDT"),
        answer(range(1, 3), T0 // MS).replace(b'"time":"', b'"time":"x'),
        b'{"retCode":0,"retMsg":"OK","result":{"list":{}}}',
        b'{"retCode":0,"retMsg":"OK"}',
    ):
        bad_answer(HISTORY, s, bad)


def test_a_banned_ip_is_retried_later_and_other_refusals_are_final() -> None:
    assert HISTORY.refusal(403, b"<html>Access Denied</html>") is None
    assert HISTORY.refusal(404, b"not found") == "HTTP 404: not found"


# -- the simulator ------------------------------------------------------------------------------


def ws_trade(book: TradeBook, symbol: str, n: int) -> Trade:
    """Trade ``n`` of the book as the WebSocket parser makes it from the dialect's frame."""
    category = "linear" if symbol.endswith("-PERP") else "spot"
    [frame] = DIALECT.trade_frames(
        SimSession(path=f"/v5/public/{category}"), [book.trade(symbol, n)]
    )
    assert isinstance(frame, str)
    [trade] = parse("bybit", frame.encode(), context=category).trades
    return trade


def rest_get(book: TradeBook, **query: str) -> dict[str, object]:
    reply = sim_get(DIALECT, PATH, book, query)
    assert reply.status == 200
    answer: dict[str, object] = json.loads(reply.body)
    return answer


@FUZZ
@given(
    symbol=st.sampled_from(["BTC-USDT", "ETH-USDT-PERP"]),
    gaps=st.lists(st.integers(0, 3 * MS), min_size=1, max_size=40),
    data=st.data(),
)
def test_simulated_trades_have_the_same_key_both_ways(
    symbol: str, gaps: list[int], data: st.DataObject
) -> None:
    stamps = [T0 + 123 + sum(gaps[: i + 1]) for i in range(len(gaps))]  # not on a ms boundary
    book = book_of(symbol, stamps)
    n = data.draw(st.integers(1, len(stamps)))
    s = span(symbol, after_ns=0, before_ns=stamps[-1] + MS)
    rest = simulated_page(HISTORY, DIALECT, book, s).trades
    assert rest[len(stamps) - n] == ws_trade(book, symbol, n)  # newest first


def test_simulated_recent_trade_is_shallow_like_the_docs() -> None:
    book = book_of("BTC-USDT", [T0 + n * MS for n in range(2000)])
    book.record("BTC-USDT-PERP", 1, 2000, T0)

    def ids(**query: str) -> list[int]:
        result = rest_get(book, **query)["result"]
        assert isinstance(result, dict)
        return [int(row["execId"]) for row in result["list"]]

    assert ids(category="spot", symbol="BTCUSDT") == list(range(2000, 1940, -1))  # default 60
    assert ids(category="spot", symbol="BTCUSDT", limit="3") == [2000, 1999, 1998]
    assert len(ids(category="linear", symbol="BTCUSDT")) == 500  # default
    assert ids(category="linear", symbol="BTCUSDT", limit="1000")[-1] == 1001
    assert ids(category="linear", symbol="ETHUSDT") == []
    assert ids(category="inverse", symbol="BTCUSD") == []
    for bad in (
        {"symbol": "BTCUSDT"},
        {"category": "spot"},
        {"category": "futures", "symbol": "BTCUSDT"},
        {"category": "spot", "symbol": "BTCUSDT", "limit": "61"},
        {"category": "linear", "symbol": "BTCUSDT", "limit": "1001"},
        {"category": "linear", "symbol": "BTCUSDT", "limit": "0"},
    ):
        answer = rest_get(book, **bad)
        assert answer["retCode"] == 10001 and answer["result"] == {}
    assert DIALECT.rest("/v5/market/kline", {}, {}, book) is None


def test_fetch_span_gets_exactly_the_span_within_reach() -> None:
    stamps = [T0 + (n // 4) * MS for n in range(1500)]  # four trades a ms
    book = book_of("BTC-USDT-PERP", stamps)
    s = span("BTC-USDT-PERP", after_ns=stamps[899], before_ns=stamps[1400])
    expected = [ws_trade(book, "BTC-USDT-PERP", n) for n in range(1, 1501)]
    expected = [t for t in expected if s.after_ns <= t.ts_ns <= s.before_ns]
    assert len(expected) == 508  # ms 224 .. 350, both ends included (trades 897 .. 1404)
    assert by_id(fetch_whole(HISTORY, book, s, requests=1)) == by_id(expected)


def test_fetch_span_rides_out_rate_limit_answers() -> None:
    stamps = [T0 + n * MS for n in range(100)]
    book = book_of("BTC-USDT", stamps)
    s = span(after_ns=stamps[59], before_ns=stamps[80])
    trades = fetch_whole(HISTORY, book, s, requests=1, faults=2)
    # trades 60 and 81 are the stored neighbours: the span's ends are included
    assert trade_ids(trades) == list(range(81, 59, -1))


def test_fetch_span_beyond_the_last_60_spot_trades_is_short() -> None:
    stamps = [T0 + n * MS for n in range(200)]
    book = book_of("BTC-USDT", stamps)
    s = span(after_ns=stamps[99], before_ns=stamps[170])  # trades 100 .. 171; 141 .. 200 served
    fetched, _ = fetch_from(HISTORY, book, s)
    assert trade_ids(fetched.trades) == list(range(171, 140, -1))
    assert fetched.short is not None and "last 60 trades" in fetched.short


def test_fetch_span_cut_inside_its_start_ms_is_short() -> None:
    """Trades 141 .. 144 share ms 35 and the span starts at the stored 144: the last 60 spot
    trades (143 .. 202) reach that ms but not 141 and 142, so the span is not complete."""
    stamps = [T0 + (n // 4) * MS for n in range(202)]
    book = book_of("BTC-USDT", stamps)
    s = span(after_ns=stamps[143], before_ns=stamps[150])
    fetched, _ = fetch_from(HISTORY, book, s)
    # ms 35 .. 37 (trades 141 .. 152) is the span; 141 and 142 are beyond reach
    assert trade_ids(fetched.trades) == list(range(152, 142, -1))
    assert fetched.short is not None and "last 60 trades" in fetched.short


# -- answers shaped like recent-trade's (any answer at all: test_rest_all.py) -------------------

ROW = st.fixed_dictionaries(
    {
        "execId": st.text(max_size=5),
        "symbol": st.sampled_from(["BTCUSDT", "ETHUSDT"]),
        "price": st.text(max_size=5),
        "size": st.text(max_size=5),
        "side": st.sampled_from(["Buy", "Sell", "x"]),
        "time": st.from_regex(r"[0-9]{1,25}", fullmatch=True) | ANY_JSON,
        "isBlockTrade": st.booleans() | ANY_JSON,
    }
)
ANSWERS = st.fixed_dictionaries(
    {
        "retCode": st.sampled_from([0, 10001]) | ANY_JSON,
        "result": st.fixed_dictionaries({"list": st.lists(ROW, max_size=3) | ANY_JSON}) | ANY_JSON,
    }
)


@FUZZ
@given(ANSWERS)
def test_answer_shaped_json_is_a_bad_answer_or_a_page(value: object) -> None:
    page_or_bad_answer(HISTORY, span(after_ns=T0, before_ns=T0 + MS), value)
