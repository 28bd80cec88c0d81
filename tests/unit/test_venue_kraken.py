"""Kraken spot WebSocket v2 frames (official doc examples and schema-built ones), field by field."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from hashlib import blake2b

import pytest

from common.envelope import Envelope, encode_entry
from common.errors import PoisonFrame
from common.records import Quote, Trade
from common.simulator.dialect import SimSession
from common.simulator.dialects.kraken import DIALECT
from common.simulator.engine import make_quote, make_trade
from common.symbols import parse_symbol
from common.venues import Channel, FrameContext, get_venue
from common.venues.base import rfc3339_ns
from consumer.process import Processor
from tests.venue_helpers import ENTRY_ID, RECV_NS, fixture, parse

# 2023-09-25T07:48:36Z and 2023-09-25T09:04:31Z as epoch seconds, computed independently.
T_074836 = int(datetime(2023, 9, 25, 7, 48, 36, tzinfo=UTC).timestamp())
assert T_074836 == 1_695_628_116


def _bbo_id(ts_ns: int, bid: str, bid_qty: str, ask: str, ask_qty: str) -> str:
    digest = blake2b(f"{bid}|{bid_qty}|{ask}|{ask_qty}".encode(), digest_size=6).hexdigest()
    return f"{ts_ns}-{digest}"


# -- trades -------------------------------------------------------------------------------------


def test_trade_snapshot_from_the_docs() -> None:
    parsed = parse("kraken", fixture("kraken", "trade_snapshot.json"))
    assert parsed.control is None and parsed.quotes == []
    assert parsed.trades == [
        Trade(
            exchange="kraken",
            symbol="MATIC-USD",
            trade_id="4665846",
            price="0.5147",
            amount="6423.46326",
            side="buy",  # "side: The side of the taker order."
            ts_ns=1_695_628_116_925_533_000,
            recv_ns=RECV_NS,
        ),
        Trade(
            exchange="kraken",
            symbol="MATIC-USD",
            trade_id="4665847",
            price="0.5147",
            amount="1136.19677815",
            side="buy",
            ts_ns=1_695_628_176_925_603_000,
            recv_ns=RECV_NS,
        ),
    ]
    assert parsed.trades[0].ts_ns == T_074836 * 1_000_000_000 + 925_533_000
    assert parsed.trades[1].amount_decimal == Decimal("1136.19677815")


def test_several_trades_in_one_update_keep_exact_number_text() -> None:
    parsed = parse("kraken", fixture("kraken", "trade_update_multi.json"))
    assert parsed.trades == [
        Trade("kraken", "BTC-USD", "62113340", "26515.4", "0.005", "sell",
              1_695_632_712_118_603_000, RECV_NS),
        Trade("kraken", "BTC-USD", "62113341", "26515.3", "0.01234567", "sell",
              1_695_632_712_118_603_000, RECV_NS),
        Trade("kraken", "BTC-USD", "62113342", "26516.0", "1.5", "buy",
              1_695_632_712_250_007_000, RECV_NS),
    ]  # fmt: skip


def test_xbt_is_mapped_to_btc() -> None:
    assert parse("kraken", fixture("kraken", "trade_update_xbt.json")).trades == [
        Trade(
            exchange="kraken",
            symbol="BTC-EUR",
            trade_id="1200001",
            price="24310.1",
            amount="0.0002",
            side="buy",
            ts_ns=1_695_632_713_000_001_000,
            recv_ns=RECV_NS,
        )
    ]


def test_subscribed_symbol_map_is_used_first() -> None:
    frame = fixture("kraken", "trade_update_multi.json")
    trades = parse("kraken", frame, symbols={"BTC/USD": "BTC-USD"}).trades
    assert [t.symbol for t in trades] == ["BTC-USD"] * 3


def test_unknown_side_is_stored_as_none() -> None:
    frame = (
        b'{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"?","price":1.5,'
        b'"qty":2,"ord_type":"limit","trade_id":7,"timestamp":"2023-09-25T09:05:12Z"}]}'
    )
    assert parse("kraken", frame).trades == [
        Trade("kraken", "BTC-USD", "7", "1.5", "2", None, 1_695_632_712_000_000_000, RECV_NS)
    ]


def test_redelivered_frames_parse_identically() -> None:
    for name in ("trade_update_multi.json", "ticker_bbo_update.json", "ticker_no_timestamp.json"):
        frame = fixture("kraken", name)
        assert parse("kraken", frame) == parse("kraken", frame)


# -- quotes -------------------------------------------------------------------------------------


def test_ticker_snapshot_from_the_docs() -> None:
    ts = 1_695_632_671_742_648_000
    assert parse("kraken", fixture("kraken", "ticker_snapshot.json")).quotes == [
        Quote(
            exchange="kraken",
            symbol="ALGO-USD",
            update_id=_bbo_id(ts, "0.10025", "740.0", "0.10036", "1361.44813783"),
            bid_price="0.10025",
            bid_amount="740.0",
            ask_price="0.10036",
            ask_amount="1361.44813783",
            ts_ns=ts,
            recv_ns=RECV_NS,
        )
    ]


def test_bbo_update_with_timestamp() -> None:
    ts = 1_695_632_712_118_655_000
    [quote] = parse("kraken", fixture("kraken", "ticker_bbo_update.json")).quotes
    assert quote == Quote(
        exchange="kraken",
        symbol="BTC-USD",
        update_id=_bbo_id(ts, "26515.3", "0.48212", "26515.4", "2.1"),
        bid_price="26515.3",
        bid_amount="0.48212",
        ask_price="26515.4",
        ask_amount="2.1",
        ts_ns=ts,
        recv_ns=RECV_NS,
    )
    assert quote.update_id == "1695632712118655000-8e9cfbed2e31"


def test_same_timestamp_different_bbo_gives_different_update_ids() -> None:
    frame = fixture("kraken", "ticker_bbo_update.json")
    other = frame.replace(b'"ask_qty":2.1', b'"ask_qty":2.2')
    [a] = parse("kraken", frame).quotes
    [b] = parse("kraken", other).quotes
    assert a.ts_ns == b.ts_ns and a.update_id != b.update_id


def test_ticker_without_timestamp_uses_receive_time_and_bbo_hash() -> None:
    assert parse("kraken", fixture("kraken", "ticker_no_timestamp.json")).quotes == [
        Quote(
            exchange="kraken",
            symbol="BTC-USD",
            update_id=_bbo_id(RECV_NS, "26515.3", "0.48212", "26515.4", "2.1"),
            bid_price="26515.3",
            bid_amount="0.48212",
            ask_price="26515.4",
            ask_amount="2.1",
            ts_ns=RECV_NS,
            recv_ns=RECV_NS,
        )
    ]


def _entry(frame: bytes, entry_id: str) -> tuple[str, dict[bytes, bytes]]:
    return entry_id, Envelope(frame, False, "kraken", "", "kraken-1", 7, RECV_NS).fields()


@pytest.mark.parametrize("name", ["ticker_no_timestamp.json", "ticker_bbo_update.json"])
def test_a_quote_keeps_its_key_under_another_entry_id(name: str) -> None:
    """A dead letter requeued (``tickvault dlq requeue``: a new entry id, the same fields) or a
    frame replayed, alone or inside a run, gives the same natural key: no duplicate row."""
    frame = fixture("kraken", name)
    proc = Processor(
        subscribed={"kraken": frozenset({"BTC-USD"})}, symbol_maps={}, max_future_skew_ns=10**10
    )
    first = proc.process(*_entry(frame, ENTRY_ID))
    requeued = proc.process(*_entry(frame, "1800000000000-3"))
    run = encode_entry([
        Envelope(frame, False, "kraken", "", "kraken-1", 7, RECV_NS),
        Envelope(frame, False, "kraken", "", "kraken-1", 8, RECV_NS + 1),
    ])  # fmt: skip
    in_run = proc.process("1800000000001-0", run)
    assert first.dead is None and len(first.quotes) == 1
    assert requeued.quotes == first.quotes
    assert in_run.frames is not None and in_run.frames[0].quotes == first.quotes
    ctx = FrameContext("kraken", "", RECV_NS, "1800000000001-0/5")
    assert get_venue("kraken").parse(frame, ctx) == parse("kraken", frame)


def test_ticker_with_an_empty_side_records_no_quote() -> None:
    frame = (
        b'{"channel":"ticker","type":"update","data":[{"symbol":"BTC/USD","bid":null,'
        b'"bid_qty":null,"ask":26515.4,"ask_qty":2.1}]}'
    )
    parsed = parse("kraken", frame)
    assert parsed.quotes == [] and parsed.trades == [] and parsed.control is None


# -- control and unknown frames ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("heartbeat.json", "heartbeat"),
        ("pong.json", "pong"),
        ("status.json", "status"),
        ("subscribe_ack.json", "ack"),
        ("subscribe_error.json", "error"),
        ("book_update.json", "unknown:book"),
    ],
)
def test_control_frames(name: str, kind: str) -> None:
    parsed = parse("kraken", fixture("kraken", name))
    assert parsed.control == kind and parsed.trades == [] and parsed.quotes == []


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (b'{"Error":"Exceeded msg rate"}', "error"),
        (b'{"error":"Malformed request","success":false}', "error"),
        (b'{"method":"unsubscribe","result":{"channel":"trade","symbol":"BTC/USD"},'
         b'"success":true}', "ack"),
        (b'{"method":"add_order","success":false,"error":"EGeneral:Invalid arguments"}',
         "unknown:add_order"),
        (b'{"channel":"ohlc","type":"snapshot","data":[]}', "unknown:ohlc"),
    ],
)  # fmt: skip
def test_other_control_frames(frame: bytes, kind: str) -> None:
    assert parse("kraken", frame).control == kind


# -- malformed frames ----------------------------------------------------------------------------

_GOOD_TRADE = (
    '{"symbol":"BTC/USD","side":"buy","price":1.5,"qty":2,"ord_type":"limit","trade_id":7,'
    '"timestamp":"2023-09-25T09:05:12.118603Z"}'
)


def _trade_frame(**changes: object) -> bytes:
    trade = json.loads(_GOOD_TRADE)
    trade.update(changes)
    for key in [k for k, v in changes.items() if v is ...]:
        del trade[key]
    return json.dumps({"channel": "trade", "type": "update", "data": [trade]}).encode()


@pytest.mark.parametrize(
    "frame",
    [
        b"not json",
        b"\xff\xfe",
        b'[0,[["5541.2","0.15","1534614057.321597","s","l",""]],"trade","XBT/USD"]',  # v1 array
        b'{"event":"heartbeat"}',  # v1 object: neither channel nor method
        b'{"channel":"trade","type":"update"}',  # no data
        b'{"channel":"trade","type":"update","data":{"symbol":"BTC/USD"}}',  # data not a list
        b'{"channel":7}',
        _trade_frame(price="abc"),
        _trade_frame(price=None),
        _trade_frame(qty=[1]),
        _trade_frame(trade_id="x7"),
        _trade_frame(timestamp="2023-09-25 09:05"),
        _trade_frame(timestamp="2023-02-30T00:00:00Z"),  # no such day
        _trade_frame(timestamp=...),
        _trade_frame(symbol="BTCUSD"),
        b'{"channel":"ticker","type":"update","data":[{"symbol":"BTC/USD","bid":1}]}',
        b'{"channel":"ticker","type":"update","data":[{"symbol":"BTC/USD","bid":"x",'
        b'"bid_qty":1,"ask":2,"ask_qty":3}]}',
    ],
)
def test_malformed_frames_are_poison(frame: bytes) -> None:
    with pytest.raises(PoisonFrame):
        parse("kraken", frame)


def test_the_good_trade_used_above_parses() -> None:
    assert parse("kraken", _trade_frame()).trades == [
        Trade("kraken", "BTC-USD", "7", "1.5", "2", "buy", 1_695_632_712_118_603_000, RECV_NS)
    ]


# -- timestamps ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2023-09-25T07:48:36.925533Z", 1_695_628_116_925_533_000),
        ("2023-09-25T07:48:36Z", 1_695_628_116_000_000_000),
        ("2023-09-25T07:48:36.1z", 1_695_628_116_100_000_000),
        ("2023-09-25T07:48:36.123456789Z", 1_695_628_116_123_456_789),
        ("2023-09-25T09:48:36.925533+02:00", 1_695_628_116_925_533_000),
        ("2023-09-25T02:18:36.925533-05:30", 1_695_628_116_925_533_000),
        ("1970-01-01T00:00:00.000001Z", 1_000),
    ],
)
def test_rfc3339_is_exact(text: str, ns: int) -> None:
    assert rfc3339_ns(text) == ns


@pytest.mark.parametrize(
    "text",
    ["2023-09-25T07:48:36", "2023-09-25", "2023-13-01T00:00:00Z", "x",
     "2023-09-25T07:48:36.1234567890Z"],
)  # fmt: skip
def test_rfc3339_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError):
        rfc3339_ns(text)


# -- symbols and plan ----------------------------------------------------------------------------


def test_symbols_map_both_ways() -> None:
    venue = get_venue("kraken")
    for canonical, name in [("BTC-USD", "BTC/USD"), ("XBT-EUR", "BTC/EUR"), ("ETH-BTC", "ETH/BTC")]:
        assert venue.venue_symbol(parse_symbol(canonical)) == name
    frame = fixture("kraken", "trade_update_xbt.json").replace(b"XBT/EUR", b"BTC/EUR")
    assert parse("kraken", frame).trades[0].symbol == "BTC-EUR"


def test_only_spot_symbols() -> None:
    venue = get_venue("kraken")
    venue.check_symbol(parse_symbol("BTC-USD"))
    with pytest.raises(ValueError):
        venue.check_symbol(parse_symbol("BTC-USD-PERP"))


def test_plan_subscribes_trades_with_snapshot_and_bbo_ticker() -> None:
    venue = get_venue("kraken")
    [plan] = venue.plan(
        channels=[Channel.TRADES, Channel.QUOTES],
        symbols=[parse_symbol("BTC-USD"), parse_symbol("ETH-USD")],
        url=None,
        options={},
    )
    assert plan.url == "wss://ws.kraken.com/v2"
    assert plan.subscribe == (
        '{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/USD","ETH/USD"],'
        '"snapshot":true},"req_id":1}',
        '{"method":"subscribe","params":{"channel":"ticker","symbol":["BTC/USD","ETH/USD"],'
        '"event_trigger":"bbo","snapshot":true},"req_id":2}',
    )
    assert plan.symbols == ("BTC-USD", "ETH-USD")
    assert plan.channels == (Channel.TRADES, Channel.QUOTES)
    assert plan.context == "" and plan.max_lifetime_s is None and plan.name == "kraken/0"
    keep = plan.keepalive
    assert keep.protocol_ping_s is None
    assert keep.app_ping == '{"method":"ping"}' and keep.app_ping_s == 10.0
    assert keep.silence_s == 15.0  # heartbeats arrive about every second
    assert venue.reply(b'{"channel":"heartbeat"}') is None


def test_plan_with_the_brief_subscribe_message_and_custom_url() -> None:
    venue = get_venue("kraken")
    [plan] = venue.plan(
        channels=[Channel.TRADES],
        symbols=[parse_symbol("XBT-USD")],
        url="ws://127.0.0.1:9/",
        options={},
    )
    assert plan.url == "ws://127.0.0.1:9/v2"
    assert plan.subscribe == (
        '{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/USD"],'
        '"snapshot":true},"req_id":1}',
    )
    assert plan.channels == (Channel.TRADES,)


def test_plan_splits_connections_and_subscribe_messages() -> None:
    venue = get_venue("kraken")
    symbols = [parse_symbol(f"A{i:03d}-USD") for i in range(250)]
    plans = venue.plan(channels=[Channel.QUOTES], symbols=symbols, url=None, options={})
    assert [len(p.symbols) for p in plans] == [200, 50]
    assert [p.name for p in plans] == ["kraken/0", "kraken/1"]
    first = [json.loads(m) for m in plans[0].subscribe]
    assert [len(m["params"]["symbol"]) for m in first] == [100, 100]
    assert [m["req_id"] for m in first] == [1, 2]
    assert first[1]["params"]["symbol"][0] == "A100/USD"
    assert all(m["params"]["channel"] == "ticker" for m in first)
    assert plans[1].symbols[0] == "A200-USD"
    assert all(p.subscribe_interval_s > 0 for p in plans)


# -- the simulator dialect -----------------------------------------------------------------------


def test_dialect_handshake_ping_and_rejects_xbt() -> None:
    session = SimSession(path="/v2")
    assert DIALECT.accepts("/v2") and not DIALECT.accepts("/")
    [status] = DIALECT.greeting(session)
    assert parse("kraken", str(status).encode()).control == "status"
    [pong] = DIALECT.on_message(session, '{"method":"ping","req_id":5}')
    assert json.loads(pong)["req_id"] == 5
    assert parse("kraken", str(pong).encode()).control == "pong"
    replies = DIALECT.on_message(
        session,
        '{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/USD","XBT/USD"],'
        '"snapshot":true},"req_id":1}',
    )
    assert [parse("kraken", str(r).encode()).control for r in replies] == ["ack", "error"]
    assert session.subscriptions == {(Channel.TRADES, "BTC-USD"): "trade"}
    [bad] = DIALECT.on_message(session, "{")
    assert parse("kraken", str(bad).encode()).control == "error"


def test_dialect_sends_a_snapshot_first_then_updates_with_exact_numbers() -> None:
    session = SimSession(path="/v2")
    DIALECT.on_message(
        session,
        '{"method":"subscribe","params":{"channel":"ticker","symbol":["BTC/USD"],'
        '"event_trigger":"bbo","snapshot":true},"req_id":2}',
    )
    DIALECT.on_message(
        session,
        '{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/USD"],'
        '"snapshot":true},"req_id":1}',
    )
    trades = [make_trade("BTC-USD", i, 1_700_000_000_123_456_000) for i in (10, 11)]
    [first] = DIALECT.trade_frames(session, trades)
    [second] = DIALECT.trade_frames(session, trades)
    assert json.loads(first)["type"] == "snapshot" and json.loads(second)["type"] == "update"
    assert '"price":100.10,' in str(first)  # a JSON number, digit for digit
    parsed = parse("kraken", str(first).encode())
    assert [(t.trade_id, t.price, t.amount, t.side, t.ts_ns) for t in parsed.trades] == [
        ("10", "100.10", "0.00011", "buy", 1_700_000_000_123_456_000),
        ("11", "100.11", "0.00012", "buy", 1_700_000_000_123_456_000),
    ]
    quote = make_quote("BTC-USD", 3, 1_700_000_000_123_456_000)
    [q1] = DIALECT.quote_frames(session, quote)
    [q2] = DIALECT.quote_frames(session, quote)
    assert json.loads(q1)["type"] == "snapshot" and json.loads(q2)["type"] == "update"
    assert parse("kraken", str(q1).encode()).quotes == [
        Quote("kraken", "BTC-USD",
              _bbo_id(1_700_000_000_123_456_000, "100.02", "4.5", "100.04", "4.25"),
              "100.02", "4.5", "100.04", "4.25", 1_700_000_000_123_456_000, RECV_NS)
    ]  # fmt: skip
