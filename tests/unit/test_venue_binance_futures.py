"""Binance USD-M futures frames from the official docs, normalised field by field."""

from __future__ import annotations

import json

import pytest

from common.errors import PoisonFrame
from common.records import Quote, Trade
from common.simulator.dialect import SimSession
from common.simulator.dialects import get_dialect
from common.simulator.engine import make_trade
from common.symbols import parse_symbol
from common.venues import Channel, get_venue
from tests.venue_helpers import RECV_NS, fixture, parse

EX = "binance-futures"

AGG_TRADE = Trade(
    exchange=EX,
    symbol="BTC-USDT-PERP",
    trade_id="5933014",  # the plain aggregate id: no "agg-" prefix on futures
    price="0.001",
    amount="100",
    side="sell",  # m=true: the buyer was the maker, so the seller took
    ts_ns=123_456_785_000_000,  # the doc's placeholder T=123456785, read as ms (never guessed)
    recv_ns=RECV_NS,
)

BOOK = Quote(
    exchange=EX,
    symbol="BNB-USDT-PERP",
    update_id="400900217",
    bid_price="25.35190000",
    bid_amount="31.21000000",
    ask_price="25.36520000",
    ask_amount="40.66000000",
    ts_ns=1_568_014_460_891_000_000,  # T, the transaction time (E is 1568014460893)
    recv_ns=RECV_NS,
)


@pytest.mark.parametrize("name", ["aggtrade.json", "aggtrade_combined.json"])
def test_aggtrade_raw_and_combined(name: str) -> None:
    parsed = parse(EX, fixture(EX, name), symbols={"BTCUSDT": "BTC-USDT-PERP"})
    assert parsed.trades == [AGG_TRADE]
    assert parsed.quotes == [] and parsed.control is None


def test_aggtrade_symbol_without_map_is_the_perpetual() -> None:
    assert parse(EX, fixture(EX, "aggtrade.json")).trades == [AGG_TRADE]


def test_quarterly_contract_and_buyer_taker() -> None:
    assert parse(EX, fixture(EX, "aggtrade_quarterly.json")).trades == [
        Trade(
            exchange=EX,
            symbol="BTC-USDT-240628",
            trade_id="2188912",
            price="61234.5",
            amount="0.004",
            side="buy",  # m=false: the buyer took
            ts_ns=1_719_475_200_120_000_000,
            recv_ns=RECV_NS,
        )
    ]


@pytest.mark.parametrize("name", ["bookticker.json", "bookticker_combined.json"])
def test_book_ticker_uses_transaction_time_and_update_id(name: str) -> None:
    parsed = parse(EX, fixture(EX, name))
    assert parsed.quotes == [BOOK]
    assert parsed.trades == [] and parsed.control is None


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("subscribe_ack.json", "ack"),
        ("list_subscriptions.json", "ack"),
        ("error.json", "error"),
        ("markprice.json", "unknown:markPriceUpdate"),
    ],
)
def test_control_and_unknown_events_are_counted_not_dead_lettered(name: str, kind: str) -> None:
    parsed = parse(EX, fixture(EX, name))
    assert parsed.control == kind and not parsed.trades and not parsed.quotes


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"not json",
        b"[1,2,3]",
        b"\xff\xfe",
        b'{"foo":1}',
        b'{"e":"aggTrade","s":"BTCUSDT"}',
        b'{"e":"aggTrade","s":"BTCUSDT","a":1,"p":1.5,"q":"1","T":1,"m":true}',
        b'{"e":"aggTrade","s":"BTCUSDT","a":"x","p":"1","q":"1","T":1,"m":true}',
        b'{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","s":"BTCUSDT"}}',
        b'{"stream":"btcusdt@aggTrade","data":[1]}',
    ],
)
def test_malformed_frames_are_poison(frame: bytes) -> None:
    with pytest.raises(PoisonFrame):
        parse(EX, frame)


def test_symbols_map_both_ways() -> None:
    venue = get_venue(EX)
    for canonical, venue_name in [
        ("BTC-USDT-PERP", "BTCUSDT"),
        ("ETH-USDC-PERP", "ETHUSDC"),
        ("BTC-USDT-250627", "BTCUSDT_250627"),
    ]:
        assert venue.venue_symbol(parse_symbol(canonical)) == venue_name
        frame = json.dumps(
            {"e": "aggTrade", "s": venue_name, "a": 1, "p": "1", "q": "1", "T": 1, "m": False}
        ).encode()
        assert parse(EX, frame).trades[0].symbol == canonical  # back, without a symbol map
    odd = b'{"e":"aggTrade","s":"BTCUSDT_XYZ","a":1,"p":"1","q":"1","T":1,"m":false}'
    assert parse(EX, odd).trades[0].symbol == "BTCUSDT_XYZ"  # left as is: not subscribed


def test_spot_symbols_are_refused() -> None:
    with pytest.raises(ValueError, match="perp"):
        get_venue(EX).check_symbol(parse_symbol("BTC-USDT"))


def test_plan_routes_trades_to_market_and_quotes_to_public() -> None:
    venue = get_venue(EX)
    symbols = [parse_symbol("BTC-USDT-PERP"), parse_symbol("BTC-USDT-250627")]
    trades, quotes = venue.plan(
        channels=[Channel.TRADES, Channel.QUOTES], symbols=symbols, url=None, options={}
    )
    assert trades.url == "wss://fstream.binance.com/market/stream"
    assert trades.subscribe == (
        '{"method":"SUBSCRIBE","params":["btcusdt@aggTrade","btcusdt_250627@aggTrade"],"id":1}',
    )
    assert trades.channels == (Channel.TRADES,)
    assert trades.symbols == ("BTC-USDT-PERP", "BTC-USDT-250627")
    assert quotes.url == "wss://fstream.binance.com/public/stream"
    assert quotes.subscribe == (
        '{"method":"SUBSCRIBE","params":["btcusdt@bookTicker","btcusdt_250627@bookTicker"],"id":1}',
    )
    assert quotes.channels == (Channel.QUOTES,)
    for plan in (trades, quotes):
        assert plan.keepalive.protocol_ping_s is not None and plan.keepalive.app_ping is None
        assert plan.keepalive.silence_s is None
        assert plan.max_lifetime_s is not None and plan.max_lifetime_s < 24 * 3600
        assert 0.1 <= plan.subscribe_interval_s  # at most 10 incoming messages per second
    assert [trades.name, quotes.name] == ["binance-futures/market/0", "binance-futures/public/0"]


def test_plan_splits_at_200_streams_per_connection() -> None:
    venue = get_venue(EX)
    symbols = [parse_symbol(f"C{i}-USDT-PERP") for i in range(450)]
    plans = venue.plan(channels=[Channel.TRADES], symbols=symbols, url="ws://h:1", options={})
    assert [len(p.symbols) for p in plans] == [200, 200, 50]
    assert {p.url for p in plans} == {"ws://h:1/market/stream"}
    assert all(len(p.subscribe) == 1 for p in plans)
    assert len(json.loads(plans[0].subscribe[0])["params"]) == 200


def test_simulator_only_delivers_streams_on_their_route() -> None:
    dialect = get_dialect(EX)
    wrong = SimSession(path="/public/stream")
    ack = dialect.on_message(wrong, '{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"],"id":7}')
    assert ack == ['{"result": null, "id": 7}']  # acked, like Binance ...
    assert wrong.subscriptions == {}  # ... and then silent
    right = SimSession(path="/market/stream")
    dialect.on_message(right, '{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"],"id":1}')
    assert right.subscriptions == {(Channel.TRADES, "BTC-USDT-PERP"): "aggTrade"}
    [frame] = dialect.trade_frames(
        right, [make_trade("BTC-USDT-PERP", 3, 1_700_000_000_000_000_000)]
    )
    [trade] = parse(EX, frame.encode() if isinstance(frame, str) else frame).trades
    assert (trade.trade_id, trade.side, trade.ts_ns) == ("3", "sell", 1_700_000_000_000_000_000)
