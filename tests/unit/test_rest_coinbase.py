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

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.records import Trade
from common.rest import all_histories
from common.rest.base import BadAnswer, Page, Request, Span
from common.rest.coinbase import HISTORY, LIMIT, trades_path
from common.rest.fetch import Bucket, fetch_span
from common.simulator.dialect import SimSession
from common.simulator.dialects.coinbase import DIALECT
from common.simulator.engine import TradeBook, make_trade
from tests.rest_helpers import serving_rest
from tests.venue_helpers import RECV_NS, fixture, parse

NS = 1_000_000_000
T0 = 1_700_000_000 * NS  # a whole second
PATH = "/api/v3/brokerage/market/products/BTC-USD/ticker"
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _epoch_ns(y: int, mo: int, d: int, h: int, mi: int, sec: int) -> int:
    """A UTC date-time as int ns, computed independently of the parsers."""
    return int(datetime(y, mo, d, h, mi, sec, tzinfo=UTC).timestamp()) * NS


def _span(first_id: int | None, last_id: int | None, after_ns: int, before_ns: int) -> Span:
    return Span(
        exchange="coinbase",
        symbol="BTC-USD",
        context="",
        first_id=first_id,
        last_id=last_id,
        after_ns=after_ns,
        before_ns=before_ns,
    )


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
    book = TradeBook()
    ts = start_us * 1_000
    for i, gap in enumerate(gaps_us, start=1):
        ts += gap * 1_000  # the simulator's book holds µs times for Coinbase
        book.record(symbol, i, 1, ts)
    n = pick % len(gaps_us) + 1
    trade = book.trade(symbol, n)
    frames = DIALECT.trade_frames(SimSession(path="/"), [trade])
    ws = parse("coinbase", str(frames[0]).encode()).trades
    span = Span(exchange="coinbase", symbol=symbol, context="", first_id=n, last_id=n,
                after_ns=trade.ts_ns - 1, before_ns=trade.ts_ns + 1)  # fmt: skip
    request = HISTORY.first(span)
    reply = DIALECT.rest(request.path, {k: [v] for k, v in request.params}, {}, book)
    assert reply is not None and reply.status == 200
    page = HISTORY.page(span, request, reply.body.encode(), RECV_NS)
    rest = [t for t in page.trades if t.trade_id == str(n)]
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
    request = HISTORY.first(span)
    with pytest.raises(BadAnswer, match="limit must be"):
        HISTORY.page(span, request, fixture("coinbase", "rest_error.json"), RECV_NS)
    other = fixture("coinbase", "rest_market_trades.json").replace(b"BTC-USD", b"ETH-USD")
    with pytest.raises(BadAnswer, match="ETH-USD"):
        HISTORY.page(span, request, other, RECV_NS)
    bad_time = fixture("coinbase", "rest_market_trades.json").replace(b"23:05:35", b"25:05:35")
    with pytest.raises(BadAnswer, match="518078015"):
        HISTORY.page(span, request, bad_time, RECV_NS)


# -- the simulator's endpoint -------------------------------------------------------------------


def _book(times: list[int], symbol: str = "BTC-USD") -> TradeBook:
    book = TradeBook()
    for i, ts in enumerate(times, start=1):
        book.record(symbol, i, 1, ts)
    return book


def test_simulator_answer_format_and_errors() -> None:
    book = _book([T0 + i * 10_000_000 for i in range(1, 301)])  # 100 a second
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


def _fast() -> Bucket:
    return Bucket(units=1_000, per_s=1.0)


@pytest.mark.parametrize("faults", [0, 2])
def test_fetch_span_from_the_simulator(faults: int) -> None:
    """A span in the middle of a 5000-trade book (100 trades a second): three pages, exactly the
    span's trades, each once; two 429s first change nothing."""
    times = [T0 + i * 10_000_000 for i in range(1, 5001)]
    book = _book(times)
    span = _span(1234, 3456, times[1233 - 1], times[3457 - 1])
    with serving_rest("coinbase", book, rest_faults=faults) as (url, sim):
        with httpx.Client(timeout=10) as client:
            fetched = fetch_span(client, url, HISTORY, span, bucket=_fast(), sleep=lambda s: None)
    assert fetched.short is None and fetched.refused is None
    assert sorted(int(t.trade_id) for t in fetched.trades) == list(range(1234, 3457))
    assert fetched.requests == 3
    assert sim.rest_requests == 3 + faults
    by_id = {t.trade_id: t for t in fetched.trades}
    assert by_id["1234"].ts_ns == times[1233] and by_id["3456"].ts_ns == times[3455]


def test_fetch_span_short_where_a_second_holds_more_than_a_page() -> None:
    times = [T0 + i * 10_000_000 for i in range(1, 101)]  # ids 1..100 in the first second
    times += [T0 + 5 * NS] * 1500  # ids 101..1600 in one instant
    times += [T0 + 6 * NS + i * 1_000_000 for i in range(1, 101)]  # ids 1601..1700
    span = _span(50, 1650, times[49 - 1], times[1651 - 1])
    with serving_rest("coinbase", _book(times)) as (url, _sim):
        with httpx.Client(timeout=10) as client:
            fetched = fetch_span(client, url, HISTORY, span, bucket=_fast(), sleep=lambda s: None)
    assert fetched.short is not None and "more than 1000 trades" in fetched.short
    assert sorted(int(t.trade_id) for t in fetched.trades) == list(range(601, 1651))


# -- anything in, BadAnswer or a Page out -------------------------------------------------------

_SPAN = _span(5, 10, T0, T0 + 10 * NS)
_SCALAR = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
)
_JSON = st.recursive(
    _SCALAR,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_TEXT = st.text(max_size=30) | st.sampled_from(
    ["BUY", "SELL", "BTC-USD", "7", "2023-04-04T23:05:34.492746Z"]
)
_TRADE = st.fixed_dictionaries(
    {},
    optional={
        k: _TEXT | _JSON for k in ("trade_id", "product_id", "price", "size", "side", "time")
    },
)


def _check(body: bytes) -> None:
    try:
        page = HISTORY.page(_SPAN, HISTORY.first(_SPAN), body, RECV_NS)
    except BadAnswer as exc:
        assert exc.reason.startswith("coinbase: ")
        return
    assert isinstance(page, Page)
    assert all(isinstance(t, Trade) for t in page.trades)


@FUZZ
@given(st.binary(max_size=200))
def test_page_on_arbitrary_bytes(body: bytes) -> None:
    _check(body)


@FUZZ
@given(_JSON)
def test_page_on_arbitrary_json(value: object) -> None:
    _check(json.dumps(value).encode())


@FUZZ
@given(st.lists(_TRADE, max_size=4), st.booleans())
def test_page_on_answer_shaped_json(trades: list[dict[str, object]], wrap: bool) -> None:
    _check(json.dumps({"trades": trades} if wrap else trades).encode())
