"""Bybit v5 frames from the official docs (and schema-built ones, see the fixtures README),
normalised field by field."""

from __future__ import annotations

import json

import pytest

from common.errors import PoisonFrame
from common.records import Quote, Trade
from common.simulator.dialect import SimSession
from common.simulator.dialects.bybit import DIALECT
from common.symbols import parse_symbol
from common.venues import Channel, Keepalive, get_venue
from tests.venue_helpers import RECV_NS, fixture, parse


def test_linear_trade_from_the_docs_is_a_usdt_perpetual() -> None:
    parsed = parse("bybit", fixture("bybit", "trade_linear.json"), context="linear")
    assert parsed.trades == [
        Trade(
            exchange="bybit",
            symbol="BTC-USDT-PERP",
            trade_id="20f43950-d8dd-5b31-9112-a178eb6023af",
            price="16578.50",
            amount="0.001",
            side="buy",  # "S: Side of taker"
            ts_ns=1_672_304_486_865_000_000,
            recv_ns=RECV_NS,
        )
    ]
    assert parsed.quotes == [] and parsed.control is None


def test_the_connection_context_tells_spot_from_linear() -> None:
    frame = fixture("bybit", "trade_linear.json")
    [spot] = parse("bybit", frame, context="spot").trades
    assert spot.symbol == "BTC-USDT"
    # The subscribed map wins over the context's guess.
    [mapped] = parse("bybit", frame, context="", symbols={"BTCUSDT": "BTC-USDT-PERP"}).trades
    assert mapped.symbol == "BTC-USDT-PERP"


def test_several_spot_trades_in_one_frame_keep_order_side_and_text() -> None:
    parsed = parse(
        "bybit",
        fixture("bybit", "trade_spot_multi.json"),
        context="spot",
        symbols={"BTCUSDT": "BTC-USDT"},
    )
    assert parsed.trades == [
        Trade("bybit", "BTC-USDT", "2290000000061666327", "16578.50", "0.000123", "buy",
              1_672_304_486_865_000_000, RECV_NS),
        Trade("bybit", "BTC-USDT", "2290000000061666328", "16578.49", "0.5", "sell",
              1_672_304_486_865_000_000, RECV_NS),
        Trade("bybit", "BTC-USDT", "2290000000061666329", "16580", "1.25", "buy",
              1_672_304_486_869_000_000, RECV_NS),
    ]  # fmt: skip


def test_unknown_side_is_stored_as_none() -> None:
    frame = (
        b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":[{"T":1672304486865,'
        b'"s":"BTCUSDT","S":"None","v":"1","p":"2","i":"7","BT":false}]}'
    )
    [trade] = parse("bybit", frame, context="spot").trades
    assert trade.side is None


def test_level1_spot_snapshot_is_a_quote_at_matching_engine_time() -> None:
    parsed = parse("bybit", fixture("bybit", "orderbook_1_spot.json"), context="spot")
    assert parsed.quotes == [
        Quote(
            exchange="bybit",
            symbol="BTC-USDT",
            update_id="18521288-7961638724",  # u, then the cross sequence (u restarts at 1)
            bid_price="16493.50",
            bid_amount="0.006",
            ask_price="16493.51",
            ask_amount="0.029",
            ts_ns=1_672_304_484_976_000_000,  # cts
            recv_ns=RECV_NS,
        )
    ]
    assert parsed.trades == [] and parsed.control is None


def test_level1_linear_snapshot() -> None:
    parsed = parse(
        "bybit",
        fixture("bybit", "orderbook_1_linear.json"),
        context="linear",
        symbols={"ETHUSDT": "ETH-USDT-PERP"},
    )
    assert parsed.quotes == [
        Quote(
            exchange="bybit",
            symbol="ETH-USDT-PERP",
            update_id="177400507-66544703342",
            bid_price="1864.25",
            bid_amount="30.028",
            ask_price="1864.26",
            ask_amount="0.892",
            ts_ns=1_687_940_967_464_000_000,
            recv_ns=RECV_NS,
        )
    ]


def test_quote_without_cts_or_seq_uses_ts_and_u() -> None:
    frame = (
        b'{"topic":"orderbook.1.BTCUSDT","ts":1672304484978,"type":"snapshot","data":'
        b'{"s":"BTCUSDT","b":[["1.5","2"]],"a":[["1.6","3"]],"u":42}}'
    )
    [quote] = parse("bybit", frame, context="spot").quotes
    assert quote == Quote("bybit", "BTC-USDT", "42", "1.5", "2", "1.6", "3",
                          1_672_304_484_978_000_000, RECV_NS)  # fmt: skip


def test_redelivered_quote_has_the_same_update_id() -> None:
    frame = fixture("bybit", "orderbook_1_spot.json")
    assert parse("bybit", frame, context="spot") == parse("bybit", frame, context="spot")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("orderbook_50_snapshot.json", "unknown:orderbook.50"),  # deeper books are not a BBO
        ("orderbook_50_delta.json", "unknown:orderbook.50"),
        ("orderbook_1_one_sided.json", "one-sided"),
        ("tickers_spot.json", "unknown:tickers"),
        ("subscribe_ack_spot.json", "ack"),
        ("subscribe_ack_linear.json", "ack"),
        ("subscribe_ack_option.json", "ack"),
        ("subscribe_error.json", "error"),
        ("pong_spot.json", "pong"),
        ("pong_linear.json", "pong"),
        ("pong_option.json", "pong"),
    ],
)
def test_control_and_unknown_frames(name: str, kind: str) -> None:
    parsed = parse("bybit", fixture("bybit", name), context="spot")
    assert parsed.control == kind
    assert parsed.trades == [] and parsed.quotes == []


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (b'{"topic":"orderbook.1.BTCUSDT","ts":1,"type":"delta","data":{"s":"BTCUSDT","b":[],'
         b'"a":[],"u":2}}', "unknown:orderbook.1:delta"),
        (b'{"topic":"orderbook.rpi.BTCUSDT","ts":1,"type":"snapshot","data":{}}',
         "unknown:orderbook.rpi"),
        (b'{"topic":"kline.5.BTCUSDT","ts":1,"type":"snapshot","data":[]}', "unknown:kline"),
        (b'{"success":true,"ret_msg":"","conn_id":"x","op":"unsubscribe"}', "ack"),
        (b'{"success":true,"ret_msg":"","conn_id":"x","op":"frobnicate"}', "unknown:frobnicate"),
        (b'{"success":false,"ret_msg":"boom","conn_id":"x","op":"ping"}', "error"),
    ],
)  # fmt: skip
def test_inline_control_frames(frame: bytes, kind: str) -> None:
    assert parse("bybit", frame, context="linear").control == kind


@pytest.mark.parametrize(
    "frame",
    [
        b"pong",  # not JSON
        b'{"topic":"publicTrade.BTCUSDT"',  # truncated
        b"[]",  # not an object
        b'{"conn_id":"x"}',  # neither topic nor op
        b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1}',  # no data
        b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":{"T":1}}',
        b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":[{"T":1,"s":"BTCUSDT",'
        b'"S":"Buy","v":"1","i":"1"}]}',  # no price
        b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":[{"T":"soon",'
        b'"s":"BTCUSDT","S":"Buy","v":"1","p":"1","i":"1"}]}',  # time not a number
        b'{"topic":"orderbook.1.BTCUSDT","ts":1,"type":"snapshot","data":{"s":"BTCUSDT",'
        b'"b":[["1","2"]],"a":[["3","4"]]}}',  # no update id
        b'{"topic":"orderbook.1.BTCUSDT","ts":1,"type":"snapshot","data":{"s":"BTCUSDT",'
        b'"b":[["1"]],"a":[["3","4"]],"u":1}}',  # level without a size
        b'{"topic":"orderbook.1.BTCUSDT","ts":"later","type":"snapshot","data":{"s":"BTCUSDT",'
        b'"b":[["1","2"]],"a":[["3","4"]],"u":1}}',  # bad time text
        b'{"topic":"orderbook.1.BTCUSDT","ts":"1_000","type":"snapshot","data":{"s":"BTCUSDT",'
        b'"b":[["1","2"]],"a":[["3","4"]],"u":1}}',  # int() would take it; not a time text
        b'{"topic":"orderbook.1.BTCUSDT","type":"snapshot","data":{"s":"BTCUSDT",'
        b'"b":[["1","2"]],"a":[["3","4"]],"u":1}}',  # no time at all
    ],
)
def test_malformed_frames_are_poison(frame: bytes) -> None:
    with pytest.raises(PoisonFrame):
        parse("bybit", frame, context="spot")


def test_data_without_context_or_subscription_is_poison() -> None:
    with pytest.raises(PoisonFrame, match="context"):
        parse("bybit", fixture("bybit", "trade_linear.json"), context="")


def test_symbols_map_both_ways() -> None:
    venue = get_venue("bybit")
    assert venue.venue_symbol(parse_symbol("BTC-USDT")) == "BTCUSDT"
    assert venue.venue_symbol(parse_symbol("BTC-USDT-PERP")) == "BTCUSDT"
    assert venue.venue_symbol(parse_symbol("ETH-BTC")) == "ETHBTC"
    frame = (
        b'{"topic":"publicTrade.ETHBTC","type":"snapshot","ts":1,"data":[{"T":1,"s":"ETHBTC",'
        b'"S":"Sell","v":"1","p":"0.05","i":"9","BT":false}]}'
    )
    assert parse("bybit", frame, context="spot").trades[0].symbol == "ETH-BTC"
    assert parse("bybit", frame, context="linear").trades[0].symbol == "ETH-BTC-PERP"


@pytest.mark.parametrize("text", ["BTC-USD-251226", "BTC-USDC-PERP", "BTC-USD-PERP"])
def test_unconfirmed_instrument_kinds_are_refused(text: str) -> None:
    venue = get_venue("bybit")
    with pytest.raises(ValueError, match="bybit"):
        venue.check_symbol(parse_symbol(text))


def test_plan_routes_spot_and_linear_and_pings_with_op_ping() -> None:
    venue = get_venue("bybit")
    plans = venue.plan(
        channels=[Channel.TRADES, Channel.QUOTES],
        symbols=[parse_symbol("BTC-USDT"), parse_symbol("ETH-USDT-PERP")],
        url="ws://127.0.0.1:9/",
        options={},
    )
    assert [(p.url, p.context, p.symbols, p.name) for p in plans] == [
        ("ws://127.0.0.1:9/v5/public/spot", "spot", ("BTC-USDT",), "bybit/spot/0"),
        ("ws://127.0.0.1:9/v5/public/linear", "linear", ("ETH-USDT-PERP",), "bybit/linear/0"),
    ]
    assert plans[0].subscribe == (
        '{"req_id":"1","op":"subscribe","args":["publicTrade.BTCUSDT","orderbook.1.BTCUSDT"]}',
    )
    assert plans[1].subscribe == (
        '{"req_id":"1","op":"subscribe","args":["publicTrade.ETHUSDT","orderbook.1.ETHUSDT"]}',
    )
    for plan in plans:
        assert plan.channels == (Channel.TRADES, Channel.QUOTES)
        assert plan.keepalive == Keepalive(
            protocol_ping_s=None, app_ping='{"op":"ping"}', app_ping_s=20.0, silence_s=45.0
        )
        assert plan.max_lifetime_s is None
        assert plan.subscribe_interval_s > 0


def test_default_url_is_the_mainnet_stream() -> None:
    [plan] = get_venue("bybit").plan(
        channels=[Channel.TRADES], symbols=[parse_symbol("BTC-USDT")], url=None, options={}
    )
    assert plan.url == "wss://stream.bybit.com/v5/public/spot"
    assert plan.subscribe == ('{"req_id":"1","op":"subscribe","args":["publicTrade.BTCUSDT"]}',)


def test_spot_requests_carry_at_most_ten_args_linear_more() -> None:
    venue = get_venue("bybit")
    bases = [f"C{i:02d}" for i in range(12)]
    spot = venue.plan(
        channels=[Channel.TRADES, Channel.QUOTES],
        symbols=[parse_symbol(f"{b}-USDT") for b in bases],
        url=None,
        options={},
    )
    [plan] = spot
    args = [json.loads(m)["args"] for m in plan.subscribe]
    assert [len(a) for a in args] == [10, 10, 4]
    assert [json.loads(m)["req_id"] for m in plan.subscribe] == ["1", "2", "3"]
    assert args[0][:2] == ["publicTrade.C00USDT", "orderbook.1.C00USDT"]
    [linear] = venue.plan(
        channels=[Channel.TRADES, Channel.QUOTES],
        symbols=[parse_symbol(f"{b}-USDT-PERP") for b in bases],
        url=None,
        options={},
    )
    assert [len(json.loads(m)["args"]) for m in linear.subscribe] == [24]


def test_connections_split_under_the_args_length_budget() -> None:
    venue = get_venue("bybit")
    symbols = [parse_symbol(f"COIN{i:04d}-USDT-PERP") for i in range(1_000)]
    plans = venue.plan(
        channels=[Channel.TRADES, Channel.QUOTES], symbols=symbols, url=None, options={}
    )
    assert len(plans) > 1
    assert [p.name for p in plans] == [f"bybit/linear/{n}" for n in range(len(plans))]
    served = [s for p in plans for s in p.symbols]
    assert served == [str(s) for s in symbols]  # each once, in order
    for plan in plans:
        args = [a for m in plan.subscribe for a in json.loads(m)["args"]]
        assert len(json.dumps(args)) <= 21_000
        assert len(args) == 2 * len(plan.symbols)


def test_no_reply_needed() -> None:
    venue = get_venue("bybit")
    assert venue.reply(b'{"success":true,"ret_msg":"pong","op":"ping"}') is None


@pytest.mark.parametrize("path", ["/v5/public/spot", "/v5/public/linear"])
def test_simulator_control_frames_parse_as_the_venue_does(path: str) -> None:
    session = SimSession(path=path)
    venue = get_venue("bybit")
    context = path.rsplit("/", 1)[-1]
    name = "BTC-USDT" if context == "spot" else "BTC-USDT-PERP"
    [ack] = DIALECT.on_message(
        session, '{"req_id":"1","op":"subscribe","args":["publicTrade.BTCUSDT"]}'
    )
    assert (Channel.TRADES, name) in session.subscriptions
    assert parse("bybit", str(ack).encode(), context=context).control == "ack"
    [pong] = DIALECT.on_message(
        session,
        venue.plan(channels=[Channel.TRADES], symbols=[parse_symbol(name)], url=None, options={})[
            0
        ].keepalive.app_ping
        or "",
    )
    assert parse("bybit", str(pong).encode(), context=context).control == "pong"
    [bad] = DIALECT.on_message(session, '{"op":"subscribe","args":["publicTrade.X"]}')
    assert parse("bybit", str(bad).encode(), context=context).control == "error"


def test_simulator_refuses_more_than_ten_spot_args() -> None:
    session = SimSession(path="/v5/public/spot")
    args = [f"publicTrade.C{i:02d}USDT" for i in range(11)]
    [reply] = DIALECT.on_message(session, json.dumps({"op": "subscribe", "args": args}))
    assert parse("bybit", str(reply).encode(), context="spot").control == "error"
    assert session.subscriptions == {}
