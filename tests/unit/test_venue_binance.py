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
    # A connection opened with options.time_unit = "microsecond" carries context "microsecond".
    [trade] = parse("binance", fixture("binance", "trade_us.json"), context="microsecond").trades
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


def test_time_unit_comes_from_the_context_never_from_the_size() -> None:
    # The default context "" is milliseconds: a µs value read there is a time far in the future
    # (not guessed into µs), and a ms value for year 9999 stays ms (not guessed into µs, which
    # would put it in 1978), so the consumer's validator says "in the future", not "before 2009".
    [as_ms] = parse("binance", fixture("binance", "trade_us.json")).trades
    assert as_ms.ts_ns == 1_672_515_782_136_123 * 1_000_000
    year_9999_ms = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
    frame = (
        b'{"e":"trade","E":253402300799999,"s":"BTCUSDT","t":1,"p":"1.0","q":"1.0",'
        b'"T":253402300799999,"m":false,"M":true}'
    )
    [trade] = parse("binance", frame).trades
    assert trade.ts_ns == year_9999_ms * 1_000_000
    [in_us] = parse("binance", frame, context="microsecond").trades
    assert in_us.ts_ns == year_9999_ms * 1_000  # the same digits in a µs connection


@pytest.mark.parametrize("context", ["", "microsecond"])
def test_aggtrade_time_follows_the_context(context: str) -> None:
    [trade] = parse("binance", fixture("binance", "aggtrade.json"), context=context).trades
    assert trade.ts_ns == 1_672_515_782_136 * (1_000 if context else 1_000_000)


def test_plan_time_unit_option_sets_url_and_context() -> None:
    venue = get_venue("binance")
    symbols = [parse_symbol("BTC-USDT")]
    [default] = venue.plan(channels=[Channel.TRADES], symbols=symbols, url=None, options={})
    [ms] = venue.plan(
        channels=[Channel.TRADES], symbols=symbols, url=None, options={"time_unit": "millisecond"}
    )
    [us] = venue.plan(
        channels=[Channel.TRADES], symbols=symbols, url=None, options={"time_unit": "microsecond"}
    )
    assert (default.url, default.context) == (ms.url, ms.context)
    assert (ms.url, ms.context) == ("wss://stream.binance.com:9443/stream", "")
    assert us.url == "wss://stream.binance.com:9443/stream?timeUnit=MICROSECOND"
    assert us.context == "microsecond"
    assert us.subscribe == ms.subscribe
    assert venue.options["time_unit"] == ("millisecond", "microsecond")
    assert "time_unit" not in get_venue("binance-futures").options  # USD-M: always ms


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


@pytest.mark.parametrize("trades", ["trade", "aggTrade"])
@pytest.mark.parametrize("time_unit", ["millisecond", "microsecond"])
def test_simulator_speaks_the_planned_time_unit(time_unit: str, trades: str) -> None:
    from common.simulator.dialect import SimSession
    from common.simulator.dialects import all_dialects
    from common.simulator.engine import make_trade
    from common.venues import FrameContext

    venue, dialect = get_venue("binance"), all_dialects()["binance"]
    options = {"time_unit": time_unit, "trades": trades}
    [plan] = venue.plan(
        channels=[Channel.TRADES],
        symbols=[parse_symbol("BTC-USDT")],
        url="ws://h:1",
        options=options,
    )
    session = SimSession(path=plan.url.removeprefix("ws://h:1"))
    dialect.greeting(session)
    for message in plan.subscribe:
        dialect.on_message(session, message)
    ts_ns = 1_700_000_000_123_456_789
    [frame] = dialect.trade_frames(session, [make_trade("BTC-USDT", 1, ts_ns)])
    ctx = FrameContext("binance", plan.context, RECV_NS, "1-0", {"BTCUSDT": "BTC-USDT"})
    [trade] = venue.parse(frame.encode() if isinstance(frame, str) else frame, ctx).trades
    kept = 1_000 if time_unit == "microsecond" else 1_000_000
    assert trade.ts_ns == ts_ns - ts_ns % kept
