"""Upbit frames from the official docs, normalised field by field."""

from __future__ import annotations

import json

import pytest

from common.errors import PoisonFrame
from common.records import Quote, Trade
from common.simulator.dialect import SimSession
from common.simulator.dialects import get_dialect
from common.simulator.engine import make_quote, make_trade
from common.symbols import parse_symbol
from common.venues import Channel, FrameContext, get_venue
from common.venues.upbit import VENUE as UPBIT
from tests.venue_helpers import RECV_NS, fixture, parse

BTC = Trade(
    exchange="upbit",
    symbol="BTC-KRW",
    trade_id="17877285547970000",
    price="109847000.0",
    amount="0.00509799",
    side="sell",  # ASK, printed at best_bid_price 109847000: the seller took
    ts_ns=1_787_728_554_797_000_000,
    recv_ns=RECV_NS,
)
BTC_2024 = Trade(
    exchange="upbit",
    symbol="BTC-KRW",
    trade_id="17303368620470000",
    price="100473000.00000000",
    amount="0.00014208",
    side="buy",  # BID, printed at best_ask_price 100473000: the buyer took
    ts_ns=1_730_336_862_047_000_000,
    recv_ns=RECV_NS,
)
ETH_2024 = Trade(
    exchange="upbit",
    symbol="ETH-KRW",
    trade_id="17303368620800006",
    price="3700000.00000000",
    amount="0.02207517",
    side="buy",
    ts_ns=1_730_336_862_080_000_000,
    recv_ns=RECV_NS,
)


def test_trade_snapshot_is_stored_with_exact_number_text() -> None:
    parsed = parse("upbit", fixture("upbit", "trade.json"))
    assert parsed.trades == [BTC]
    assert parsed.quotes == [] and parsed.control is None


def test_second_doc_trade_maps_krw_eth() -> None:
    assert parse("upbit", fixture("upbit", "trade_eth.json")).trades == [
        Trade("upbit", "ETH-KRW", "17877285516960000", "3427000.0", "0.00883869", "buy",
              1_787_728_551_696_000_000, RECV_NS)
    ]  # fmt: skip


def test_trailing_zeros_are_kept() -> None:
    assert parse("upbit", fixture("upbit", "trade_2024.json")).trades == [BTC_2024]


def test_json_list_frame_carries_several_trades() -> None:
    parsed = parse("upbit", fixture("upbit", "trade_json_list.json"))
    assert parsed.trades == [BTC_2024, ETH_2024]
    assert parsed.control is None


def test_simple_format_short_keys() -> None:
    assert parse("upbit", fixture("upbit", "trade_simple.json")).trades == [BTC_2024]


def test_simple_list_format() -> None:
    assert parse("upbit", fixture("upbit", "trade_simple_list.json")).trades == [BTC]


def test_symbol_map_from_context_wins() -> None:
    frame = fixture("upbit", "trade.json")
    [trade] = parse("upbit", frame, symbols={"KRW-BTC": "BTC-KRW"}).trades
    assert trade == BTC


def test_orderbook_top_level_is_the_quote() -> None:
    assert parse("upbit", fixture("upbit", "orderbook.json")).quotes == [
        Quote(
            exchange="upbit",
            symbol="BTC-KRW",
            update_id="1746601573804-9b7cd55215dd",  # timestamp + hash of the best level
            bid_price="137001000",
            bid_amount="0.03656812",
            ask_price="137002000",
            ask_amount="0.10623869",
            ts_ns=1_746_601_573_804_000_000,
            recv_ns=RECV_NS,
        )
    ]


def test_orderbook_simple_list() -> None:
    assert parse("upbit", fixture("upbit", "orderbook_simple_list.json")).quotes == [
        Quote("upbit", "BTC-KRW", "1751855921432-6d5b55f1ed39", "148830000", "0.34809059",
              "148880000", "0.37765316", 1_751_855_921_432_000_000, RECV_NS)
    ]  # fmt: skip


def test_quote_update_id_is_deterministic_and_tracks_the_best_level() -> None:
    frame = fixture("upbit", "orderbook.json")
    first = parse("upbit", frame).quotes[0].update_id
    assert parse("upbit", frame).quotes[0].update_id == first
    moved = frame.replace(b'"bid_size": 0.03656812', b'"bid_size": 0.5', 1)
    assert parse("upbit", moved).quotes[0].update_id != first


def test_empty_book_is_counted_not_poison() -> None:
    frame = b'{"type":"orderbook","code":"KRW-BTC","timestamp":1,"orderbook_units":[]}'
    assert parse("upbit", frame).control == "empty:orderbook"


@pytest.mark.parametrize(
    ("name", "kind"),
    [("error.json", "error"), ("status_up.json", "pong"), ("list_subscriptions.json", "ack")],
)
def test_control_frames(name: str, kind: str) -> None:
    parsed = parse("upbit", fixture("upbit", name))
    assert parsed.control == kind and parsed.trades == [] and parsed.quotes == []


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (b'{"type":"ticker","code":"KRW-BTC","trade_price":1}', "unknown:ticker"),
        (b'{"ty":"candle.1s","cd":"KRW-BTC"}', "unknown:candle.1s"),
        (b"[]", "unknown:empty-list"),
        (b'[{"type":"ticker","code":"KRW-BTC"}]', "unknown:ticker"),
    ],
)
def test_unknown_types_are_counted(frame: bytes, kind: str) -> None:
    assert parse("upbit", frame).control == kind


@pytest.mark.parametrize(
    "frame",
    [
        b"PONG?",
        b"\xff\xfe",
        b'{"code":"KRW-BTC"}',  # no type, no error
        b'{"type":"trade","code":"KRW-BTC"}',  # fields missing
        b'{"type":"trade","code":"KRW-BTC","trade_price":"abc","trade_volume":1,"ask_bid":"BID",'
        b'"trade_timestamp":1730336862047,"sequential_id":1}',
        b'{"type":"trade","code":"KRW-BTC","trade_price":1,"trade_volume":null,"ask_bid":"BID",'
        b'"trade_timestamp":1730336862047,"sequential_id":1}',
        b'{"type":"trade","code":"KRW-BTC","trade_price":1,"trade_volume":1,"ask_bid":"BID",'
        b'"trade_timestamp":"soon","sequential_id":1}',
        b'{"type":"trade","code":"KRW-BTC","trade_price":1,"trade_volume":1,"ask_bid":"BID",'
        b'"trade_timestamp":1730336862047,"sequential_id":true}',
        b'{"type":"orderbook","code":"KRW-BTC","timestamp":1,"orderbook_units":[{"ask_price":1}]}',
        b'[{"type":"trade"}]',
        b"[1, 2",
    ],
)
def test_malformed_frames_are_poison(frame: bytes) -> None:
    with pytest.raises(PoisonFrame):
        parse("upbit", frame)


@pytest.mark.parametrize("stamp", ['"1_730_336_862_047"', '"-1"', "0", '"\u0661"', "9" * 5000])
def test_bad_trade_timestamps_are_poison(stamp: str) -> None:
    frame = (
        '{"type":"trade","code":"KRW-BTC","trade_price":1,"trade_volume":1,"ask_bid":"BID",'
        f'"trade_timestamp":{stamp},"sequential_id":1}}'
    )
    with pytest.raises(PoisonFrame, match=r"^upbit: "):
        parse("upbit", frame.encode())


@pytest.mark.parametrize("stamp", ["253402300799999", '"253402300799999"'])
def test_timestamps_are_ms_whatever_their_size(stamp: str) -> None:
    # "trade_timestamp 체결 타임스탬프(ms)": a ms time in year 9999 stays ms (the validator then
    # says "in the future"); it is not taken for µs because of its size.
    frame = (
        '{"type":"trade","code":"KRW-BTC","trade_price":1,"trade_volume":1,"ask_bid":"BID",'
        f'"trade_timestamp":{stamp},"sequential_id":1}}'
    )
    [trade] = parse("upbit", frame.encode()).trades
    assert trade.ts_ns == 253_402_300_799_999_000_000
    book = f'{{"type":"orderbook","code":"KRW-BTC","timestamp":{stamp},"orderbook_units":['
    book += '{"ask_price":2,"bid_price":1,"ask_size":1,"bid_size":1}]}'
    [quote] = parse("upbit", book.encode()).quotes
    assert quote.ts_ns == 253_402_300_799_999_000_000


def test_symbols_map_both_ways() -> None:
    venue = get_venue("upbit")
    assert venue.venue_symbol(parse_symbol("BTC-KRW")) == "KRW-BTC"
    assert venue.venue_symbol(parse_symbol("ETH-BTC")) == "BTC-ETH"
    ctx = FrameContext("upbit", "", RECV_NS, "1-0")
    assert UPBIT.canonical("KRW-BTC", ctx) == "BTC-KRW"
    assert UPBIT.canonical("USDT-XBT", ctx) == "BTC-USDT"
    assert venue is UPBIT


def test_plan_is_one_request_array_with_keepalive() -> None:
    [plan] = get_venue("upbit").plan(
        channels=[Channel.TRADES, Channel.QUOTES],
        symbols=[parse_symbol("BTC-KRW"), parse_symbol("ETH-KRW")],
        url=None,
        options={},
    )
    assert plan.url == "wss://api.upbit.com/websocket/v1"
    assert plan.subscribe == (
        '[{"ticket":"tickvault-upbit-0"},{"type":"trade","codes":["KRW-BTC","KRW-ETH"]},'
        '{"type":"orderbook","codes":["KRW-BTC","KRW-ETH"]},{"format":"DEFAULT"}]',
    )
    assert plan.symbols == ("BTC-KRW", "ETH-KRW")
    assert plan.context == "" and plan.name == "upbit/0"
    keepalive = plan.keepalive
    assert keepalive.protocol_ping_s is not None and keepalive.protocol_ping_s < 120
    assert keepalive.app_ping == "PING" and keepalive.app_ping_s < 120
    assert keepalive.silence_s is not None and keepalive.silence_s < 120


def test_plan_with_url_format_and_split() -> None:
    symbols = [parse_symbol(f"C{i}-KRW") for i in range(150)]
    plans = get_venue("upbit").plan(
        channels=[Channel.TRADES],
        symbols=symbols,
        url="ws://127.0.0.1:9/",
        options={"format": "SIMPLE"},
    )
    assert [p.url for p in plans] == ["ws://127.0.0.1:9/websocket/v1"] * 2
    assert [len(p.symbols) for p in plans] == [100, 50]
    request = json.loads(plans[1].subscribe[0])
    assert request[0] == {"ticket": "tickvault-upbit-1"}
    assert request[1] == {"type": "trade", "codes": [f"KRW-C{i}" for i in range(100, 150)]}
    assert request[2] == {"format": "SIMPLE"} and len(request) == 3


@pytest.mark.parametrize("fmt", ["DEFAULT", "SIMPLE", "JSON_LIST", "SIMPLE_LIST"])
def test_simulator_round_trip_in_every_format(fmt: str) -> None:
    venue, dialect = get_venue("upbit"), get_dialect("upbit")
    [plan] = venue.plan(
        channels=[Channel.TRADES, Channel.QUOTES], symbols=[parse_symbol("BTC-KRW")],
        url="ws://x", options={"format": fmt},
    )  # fmt: skip
    session = SimSession(path="/websocket/v1")
    assert dialect.on_message(session, plan.subscribe[0]) == []  # no ack
    ctx = FrameContext("upbit", "", RECV_NS, "1-0")
    trades = [make_trade("BTC-KRW", i, 1_700_000_000_123_000_000) for i in (1, 3)]
    got = [t for f in dialect.trade_frames(session, trades) for t in venue.parse(_b(f), ctx).trades]
    assert [(t.trade_id, t.price, t.amount, t.side, t.ts_ns) for t in got] == [
        (str(t.trade_id), t.price, t.amount, t.side, t.ts_ns) for t in trades
    ]
    quote = make_quote("BTC-KRW", 7, 1_700_000_000_123_000_000)
    [frame] = dialect.quote_frames(session, quote)
    [q] = venue.parse(_b(frame), ctx).quotes
    assert (q.bid_price, q.bid_amount, q.ask_price, q.ask_amount, q.ts_ns) == (
        quote.bid_price, quote.bid_amount, quote.ask_price, quote.ask_amount, quote.ts_ns
    )  # fmt: skip


def test_simulator_ping_and_errors_parse_as_control() -> None:
    venue, dialect = get_venue("upbit"), get_dialect("upbit")
    session = SimSession(path="/websocket/v1")
    assert dialect.binary
    [up] = dialect.on_message(session, "PING")
    assert venue.parse(_b(up), FrameContext("upbit", "", RECV_NS, "1-0")).control == "pong"
    for bad in ("{", '[{"type":"trade","codes":["KRW-BTC"]}]', '[{"ticket":"t"}]'):
        [err] = dialect.on_message(session, bad)
        assert venue.parse(_b(err), FrameContext("upbit", "", RECV_NS, "1-0")).control == "error"


def _b(frame: str | bytes) -> bytes:
    return frame.encode() if isinstance(frame, str) else frame
