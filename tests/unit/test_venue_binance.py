"""Binance spot frames from the official docs, normalised field by field."""

from __future__ import annotations

from decimal import Decimal

import pytest

from common.errors import PoisonFrame
from common.records import Quote, Trade
from common.symbols import parse_symbol
from common.venues import Channel, get_venue
from tests.venue_helpers import RECV_NS, fixture, parse

TRADE = Trade(
    exchange="binance",
    symbol="BNB-BTC",
    trade_id="12345",
    price="0.001",
    amount="100",
    side="sell",  # m=true: the buyer was the maker, so the seller took
    ts_ns=1_672_515_782_136_000_000,
    recv_ns=RECV_NS,
)


@pytest.mark.parametrize("name", ["trade.json", "trade_combined.json"])
def test_trade_with_and_without_combined_wrapper(name: str) -> None:
    parsed = parse("binance", fixture("binance", name), symbols={"BNBBTC": "BNB-BTC"})
    assert parsed.trades == [TRADE]
    assert parsed.quotes == [] and parsed.control is None
    assert parsed.trades[0].price_decimal == Decimal("0.001")


def test_trade_symbol_without_map_is_split_by_known_quote() -> None:
    assert parse("binance", fixture("binance", "trade.json")).trades == [TRADE]


def test_microsecond_timestamps_keep_full_precision_and_buyer_taker() -> None:
    [trade] = parse("binance", fixture("binance", "trade_us.json")).trades
    assert trade == Trade(
        exchange="binance",
        symbol="BTC-USDT",
        trade_id="4000000001",
        price="16500.01000000",
        amount="0.00050000",
        side="buy",
        ts_ns=1_672_515_782_136_123_000,
        recv_ns=RECV_NS,
    )


def test_aggtrade_ids_are_kept_apart_from_trade_ids() -> None:
    [trade] = parse("binance", fixture("binance", "aggtrade.json")).trades
    assert trade.trade_id == "agg-12345"
    assert (trade.price, trade.amount, trade.side) == ("0.001", "100", "sell")
    assert trade.ts_ns == 1_672_515_782_136_000_000


@pytest.mark.parametrize("name", ["bookticker.json", "bookticker_combined.json"])
def test_book_ticker_uses_receive_time_and_update_id(name: str) -> None:
    parsed = parse("binance", fixture("binance", name))
    assert parsed.quotes == [
        Quote(
            exchange="binance",
            symbol="BNB-USDT",
            update_id="400900217",
            bid_price="25.35190000",
            bid_amount="31.21000000",
            ask_price="25.36520000",
            ask_amount="40.66000000",
            ts_ns=RECV_NS,
            recv_ns=RECV_NS,
        )
    ]


@pytest.mark.parametrize(
    ("name", "kind"),
    [("subscribe_ack.json", "ack"), ("error.json", "error"), ("kline.json", "unknown:kline")],
)
def test_control_and_unknown_events_are_counted_not_dead_lettered(name: str, kind: str) -> None:
    parsed = parse("binance", fixture("binance", name))
    assert parsed.control == kind and not parsed.trades and not parsed.quotes


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"not json",
        b"[1,2,3]",
        b'{"e":"trade","s":"BTCUSDT","t":1,"p":1.5,"q":"1","T":1,"m":true}',
        b'{"e":"trade","s":"BTCUSDT"}',
        b'{"stream":"x","data":{"e":"trade"}}',
        b'{"foo":1}',
        b"\xff\xfe",
    ],
)
def test_malformed_frames_are_poison(frame: bytes) -> None:
    with pytest.raises(PoisonFrame):
        parse("binance", frame)


def test_plan_subscribes_lowercase_streams_on_the_combined_path() -> None:
    venue = get_venue("binance")
    symbols = [parse_symbol("BTC-USDT"), parse_symbol("ETH-USDT")]
    [plan] = venue.plan(
        channels=[Channel.TRADES, Channel.QUOTES], symbols=symbols, url=None, options={}
    )
    assert plan.url == "wss://stream.binance.com:9443/stream"
    assert plan.subscribe == (
        '{"method":"SUBSCRIBE","params":["btcusdt@trade","btcusdt@bookTicker",'
        '"ethusdt@trade","ethusdt@bookTicker"],"id":1}',
    )
    assert plan.max_lifetime_s is not None and plan.max_lifetime_s < 24 * 3600


def test_plan_splits_streams_over_connections_and_messages() -> None:
    venue = get_venue("binance")
    symbols = [parse_symbol(f"C{i}-USDT") for i in range(1200)]
    plans = venue.plan(
        channels=[Channel.TRADES], symbols=symbols, url="ws://127.0.0.1:1", options={}
    )
    assert [len(p.symbols) for p in plans] == [1000, 200]
    assert len(plans[0].subscribe) == 5  # 200 params per SUBSCRIBE
    assert plans[0].url == "ws://127.0.0.1:1/stream"
    assert plans[0].subscribe_interval_s >= 0.2  # <= 5 incoming messages per second
