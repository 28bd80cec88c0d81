"""Coinbase Advanced Trade REST backfill (``common.rest.coinbase``): the docs' answer parsed field
by field, the same key as the WebSocket parser's, the time-window paging, and the simulator's
endpoint over real HTTP on 127.0.0.1.

Fixtures:
- ``rest_market_trades_docs.json``: the response example of Get Public Market Trades / Get Market
  Trades, copied from
  https://docs.cdp.coinbase.com/api-reference/advanced-trade-api/rest-api/products/get-market-trades
  (a schema example: a UUID ``trade_id`` and ``side`` ``"<any>"``).
- ``rest_market_trades.json``: constructed from the documented schema as the venue fills it (numeric
  ``trade_id``, µs ``time``, ``side`` BUY/SELL, newest first, ``bid``/``ask`` empty).
- ``rest_error.json``: constructed, the Advanced Trade error shape ``{error, error_details,
  message}``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from itertools import accumulate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.records import Trade
from common.rest import all_histories
from common.rest.base import Page, Request, Span
from common.rest.coinbase import HISTORY, LIMIT, trades_path
from common.simulator.dialect import SimSession
from common.simulator.dialects.coinbase import DIALECT
from common.simulator.engine import make_trade
from tests.rest_helpers import (
    ANY_JSON,
    FUZZ,
    bad_answer,
    book_of,
    fetch_by_id,
    fetch_from,
    make_span,
    page_or_bad_answer,
    simulated_page,
    trade_ids,
)
from tests.venue_helpers import RECV_NS, fixture, parse

NS = 1_000_000_000
T0 = 1_700_000_000 * NS  # a whole second
PATH = "/api/v3/brokerage/market/products/BTC-USD/ticker"


def _epoch_ns(y: int, mo: int, d: int, h: int, mi: int, sec: int) -> int:
    """A UTC date-time as int ns, computed independently of the parsers."""
    return int(datetime(y, mo, d, h, mi, sec, tzinfo=UTC).timestamp()) * NS


def _span(first_id: int | None, last_id: int | None, after_ns: int, before_ns: int) -> Span:
    return make_span("coinbase", "BTC-USD", after_ns, before_ns, first_id=first_id, last_id=last_id)


def _cb_trade(trade_id: str, ts_ns: int, *, side: str = "sell") -> Trade:
    return Trade(
        exchange="coinbase",
        symbol="BTC-USD",
        trade_id=trade_id,
        price="1.5",
        amount="2",
        side=side,
        ts_ns=ts_ns,
        recv_ns=RECV_NS,
    )


# -- the docs' answer ---------------------------------------------------------------------------


def test_registered() -> None:
    assert all_histories()["coinbase"] is HISTORY
    assert HISTORY.default_url == "https://api.coinbase.com"
    assert (HISTORY.limit.units, HISTORY.limit.per_s) == (5, 1.0)  # half of 10/s per IP


def test_docs_example_parsed() -> None:
    span = _span(1, 2, T0, T0 + NS)
    request = HISTORY.first(span)
    page = HISTORY.page(span, request, fixture("coinbase", "rest_market_trades_docs.json"), RECV_NS)
    assert page.trades == [
        Trade(
            exchange="coinbase",
            symbol="BTC-USD",
            trade_id="34b080bf-fcfd-445a-832b-46b5ddc65601",
            price="140.91",
            amount="4",
            side=None,  # the schema example's "<any>" is neither BUY nor SELL
            ts_ns=_epoch_ns(2021, 5, 31, 9, 59, 59),
            recv_ns=RECV_NS,
        )
    ]
    assert page.next is None  # one trade: the window is exhausted
    assert page.short is not None and "no ids" in page.short  # no numeric id reaches id 1


def test_answer_as_the_venue_fills_it() -> None:
    span = _span(518_078_013, 518_078_015, T0, T0 + NS)
    body = fixture("coinbase", "rest_market_trades.json")
    page = HISTORY.page(span, HISTORY.first(span), body, RECV_NS)
    base = _epoch_ns(2023, 4, 4, 23, 5, 34)
    assert page.trades == [
        Trade(
            exchange="coinbase",
            symbol="BTC-USD",
            trade_id="518078015",
            price="28208.12",
            amount="0.0012",
            side="buy",  # SELL is the maker's side: the taker bought
            ts_ns=base + NS + 102_000,
            recv_ns=RECV_NS,
        ),
        Trade(
            exchange="coinbase",
            symbol="BTC-USD",
            trade_id="518078014",
            price="28208.1",
            amount="0.00659179",
            side="sell",
            ts_ns=base + 492_746_000,
            recv_ns=RECV_NS,
        ),
        Trade(
            exchange="coinbase",
            symbol="BTC-USD",
            trade_id="518078013",
            price="28208.09",
            amount="0.5",
            side="sell",
            ts_ns=base + 492_746_000,
            recv_ns=RECV_NS,
        ),
    ]
    assert page == Page(page.trades, None)  # the span's first id is in it: done


def test_same_key_as_the_websocket() -> None:
    """The REST trades of the answer, sent as the documented ``market_trades`` WebSocket update
    (https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-channels),
    parse into equal rows: key, price, amount and side."""
    answer = json.loads(fixture("coinbase", "rest_market_trades.json"))
    ws_trades = [{k: t[k] for k in ("trade_id", "product_id", "price", "size", "side", "time")}
                 for t in answer["trades"]]  # fmt: skip
    frame = {"channel": "market_trades", "client_id": "", "timestamp": "2023-04-04T23:05:35.2Z",
             "sequence_num": 7, "events": [{"type": "update", "trades": ws_trades}]}  # fmt: skip
    ws = parse("coinbase", json.dumps(frame).encode()).trades
    span = _span(518_078_013, 518_078_015, T0, T0 + NS)
    rest = HISTORY.page(
        span, HISTORY.first(span), fixture("coinbase", "rest_market_trades.json"), RECV_NS
    ).trades
    assert rest == ws
    assert [(t.exchange, t.symbol, t.trade_id, t.ts_ns) for t in rest] == [
        (t.exchange, t.symbol, t.trade_id, t.ts_ns) for t in ws
    ]


@FUZZ
@given(
    symbol=st.sampled_from(["BTC-USD", "ETH-EUR", "USDT-USDC", "SOL-USDT"]),
    gaps_us=st.lists(st.integers(0, 3_000_000), min_size=1, max_size=40),
    start_us=st.integers(1_400_000_000_000_000, 4_000_000_000_000_000),
    pick=st.integers(0, 10_000),
)
def test_same_key_for_simulated_trades(
    symbol: str, gaps_us: list[int], start_us: int, pick: int
) -> None:
    """The dialect's WebSocket frame of book trade n, parsed by the venue module, equals the
    dialect's REST answer holding trade n, parsed by HISTORY.page."""
    times_us = list(accumulate(gaps_us, initial=start_us))[1:]
    book = book_of(symbol, [us * 1_000 for us in times_us])  # the book holds µs times for Coinbase
    n = pick % len(gaps_us) + 1
    trade = book.trade(symbol, n)
    frames = DIALECT.trade_frames(SimSession(path="/"), [trade])
    ws = parse("coinbase", str(frames[0]).encode()).trades
    span = Span(exchange="coinbase", symbol=symbol, context="", first_id=n, last_id=n,
                after_ns=trade.ts_ns - 1, before_ns=trade.ts_ns + 1)  # fmt: skip
    rest = [t for t in simulated_page(HISTORY, DIALECT, book, span).trades if t.trade_id == str(n)]
    assert rest == ws  # every field: key, price, amount, side (recv_ns is the test's)


# -- requests and paging (pure) -----------------------------------------------------------------


def test_first_request() -> None:
    span = _span(1234, 3456, T0 + 12_330_000_000, T0 + 34_570_000_000)
    assert HISTORY.first(span) == Request(
        trades_path("BTC-USD"),
        (("limit", "1000"), ("start", "1700000012"), ("end", "1700000035")),
    )
    assert trades_path("BTC-USD") == PATH
    assert LIMIT == 1000


def _answer(trades: list[tuple[int, int]]) -> bytes:
    """A venue answer holding (trade_id, ts_ns) trades, newest first."""
    rows = [
        {"trade_id": str(i), "product_id": "BTC-USD", "price": "1.5", "size": "2", "side": "BUY",
         "time": datetime.fromtimestamp(ts // NS, UTC).strftime("%Y-%m-%dT%H:%M:%S")
         + f".{ts % NS // 1_000:06d}Z", "bid": "", "ask": ""}
        for i, ts in sorted(trades, reverse=True)
    ]  # fmt: skip
    return json.dumps({"trades": rows, "best_bid": "1", "best_ask": "2"}).encode()


def test_full_page_moves_end_back_to_the_oldest_trades_second() -> None:
    span = _span(100, 5000, T0, T0 + 100 * NS)
    request = HISTORY.first(span)  # start=T0 s, end=T0 s + 101
    trades = [(4000 + i, T0 + 50 * NS + 400_000_000 + i * 1_000_000) for i in range(LIMIT)]
    page = HISTORY.page(span, request, _answer(trades), RECV_NS)
    assert len(page.trades) == LIMIT and page.short is None
    assert page.next == Request(
        PATH, (("limit", "1000"), ("start", "1700000000"), ("end", "1700000051"))
    )


def test_paging_stops_at_the_spans_first_id() -> None:
    span = _span(4000, 5000, T0, T0 + 100 * NS)
    trades = [(3999 + i, T0 + 50 * NS + i * 1_000_000) for i in range(LIMIT)]
    page = HISTORY.page(span, HISTORY.first(span), _answer(trades), RECV_NS)
    assert page.next is None and page.short is None


def test_a_short_page_ends_the_window() -> None:
    span = _span(10, 20, T0, T0 + 100 * NS)
    page = HISTORY.page(span, HISTORY.first(span), _answer([(12, T0 + NS), (11, T0 + NS)]), 1)
    assert page.next is None
    assert page.short is not None and "trade 10" in page.short and "11" in page.short
    time_span = _span(None, None, T0, T0 + 100 * NS)
    page = HISTORY.page(time_span, HISTORY.first(time_span), _answer([(12, T0 + NS)]), 1)
    assert page == Page(page.trades, None)  # a time span: nothing more in it, not short
    assert HISTORY.page(span, HISTORY.first(span), _answer([]), 1).next is None


def test_a_second_with_more_than_a_page_cannot_be_paged() -> None:
    span = _span(1, 5000, T0, T0 + 100 * NS)
    request = Request(PATH, (("limit", "1000"), ("start", "1700000000"), ("end", "1700000051")))
    trades = [(4000 + i, T0 + 50 * NS + i * 1_000) for i in range(LIMIT)]  # all in second 50
    page = HISTORY.page(span, request, _answer(trades), RECV_NS)
    assert page.next is None
    assert page.short is not None and "more than 1000 trades" in page.short


def test_error_and_foreign_answers_are_bad() -> None:
    span = _span(1, 2, T0, T0 + NS)
    assert "limit must be" in bad_answer(HISTORY, span, fixture("coinbase", "rest_error.json"))
    other = fixture("coinbase", "rest_market_trades.json").replace(b"BTC-USD", b"ETH-USD")
    assert "ETH-USD" in bad_answer(HISTORY, span, other)
    bad_time = fixture("coinbase", "rest_market_trades.json").replace(b"23:05:35", b"25:05:35")
    assert "518078015" in bad_answer(HISTORY, span, bad_time)


# -- the simulator's endpoint -------------------------------------------------------------------


def test_simulator_answer_format_and_errors() -> None:
    book = book_of("BTC-USD", [T0 + i * 10_000_000 for i in range(1, 301)])  # 100 a second
    reply = DIALECT.rest(PATH, {"limit": ["2"], "start": ["1700000001"], "end": ["1700000002"]},
                         {}, book)  # fmt: skip
    assert reply is not None and reply.status == 200
    body = json.loads(reply.body)
    t199, t198 = make_trade("BTC-USD", 199, T0 + 1_990_000_000), make_trade("BTC-USD", 198, 0)
    assert [t["trade_id"] for t in body["trades"]] == ["199", "198"]  # newest first, end excluded
    assert body["trades"][0] == {
        "trade_id": "199", "product_id": "BTC-USD", "price": t199.price, "size": t199.amount,
        "side": "BUY" if t199.side == "sell" else "SELL", "time": "2023-11-14T22:13:21.990000Z",
        "bid": "", "ask": "",
    }  # fmt: skip
    assert body["trades"][1]["size"] == t198.amount
    for query in ({}, {"limit": ["0"]}, {"limit": ["1001"]}, {"limit": ["5"], "end": ["x"]}):
        reply = DIALECT.rest(PATH, query, {}, book)
        assert reply is not None and reply.status == 400
        assert json.loads(reply.body)["error"] == "INVALID_ARGUMENT"
    assert DIALECT.rest("/api/v3/brokerage/market/products/BTC-USD", {}, {}, book) is None
    empty = DIALECT.rest(PATH.replace("BTC-USD", "ETH-USD"), {"limit": ["5"]}, {}, book)
    assert empty is not None and json.loads(empty.body)["trades"] == []


@pytest.mark.parametrize("faults", [0, 2])
def test_fetch_span_from_the_simulator(faults: int) -> None:
    """A span in the middle of a 5000-trade book (100 trades a second): three pages, exactly the
    span's trades, each once; two 429s first change nothing."""
    times = [T0 + i * 10_000_000 for i in range(1, 5001)]
    by_id = fetch_by_id(HISTORY, "BTC-USD", times, 1234, 3456, requests=3, faults=faults)
    assert by_id["1234"].ts_ns == times[1233] and by_id["3456"].ts_ns == times[3455]


def test_fetch_span_short_where_a_second_holds_more_than_a_page() -> None:
    times = [T0 + i * 10_000_000 for i in range(1, 101)]  # ids 1..100 in the first second
    times += [T0 + 5 * NS] * 1500  # ids 101..1600 in one instant
    times += [T0 + 6 * NS + i * 1_000_000 for i in range(1, 101)]  # ids 1601..1700
    span = _span(50, 1650, times[49 - 1], times[1651 - 1])
    fetched, _ = fetch_from(HISTORY, book_of("BTC-USD", times), span)
    assert fetched.short is not None and "more than 1000 trades" in fetched.short
    assert sorted(trade_ids(fetched.trades)) == list(range(601, 1651))


# -- answers shaped like market trades' (any answer at all: test_rest_all.py) -------------------

_TEXT = st.text(max_size=30) | st.sampled_from(
    ["BUY", "SELL", "BTC-USD", "7", "2023-04-04T23:05:34.492746Z"]
)
_TRADE = st.fixed_dictionaries(
    {},
    optional={
        k: _TEXT | ANY_JSON for k in ("trade_id", "product_id", "price", "size", "side", "time")
    },
)


@FUZZ
@given(st.lists(_TRADE, max_size=4), st.booleans())
def test_page_on_answer_shaped_json(trades: list[dict[str, object]], wrap: bool) -> None:
    answer = {"trades": trades} if wrap else trades
    page_or_bad_answer(HISTORY, _span(5, 10, T0, T0 + 10 * NS), answer)
