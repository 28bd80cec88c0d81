"""Bithumb frames (current v2 stream and legacy stream) from the official docs, field by field."""

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
from common.venues.bithumb import VENUE as BITHUMB
from common.venues.bithumb import kst_ns
from tests.venue_helpers import RECV_NS, fixture, parse

V2_TRADE = Trade(
    exchange="bithumb",
    symbol="BTC-KRW",
    trade_id="17259299343730000",
    price="489700",
    amount="1.4825",
    side="buy",  # ask_bid BID
    ts_ns=1_725_929_934_373_000_000,  # trade_timestamp ms; trade_time "09:58:54" is KST
    recv_ns=RECV_NS,
)


# -- v2 -----------------------------------------------------------------------------------------
def test_v2_trade() -> None:
    parsed = parse("bithumb", fixture("bithumb", "v2_trade.json"))
    assert parsed.trades == [V2_TRADE]
    assert parsed.quotes == [] and parsed.control is None


def test_v2_trade_simple_keys() -> None:
    assert parse("bithumb", fixture("bithumb", "v2_trade_simple.json")).trades == [V2_TRADE]


def test_v2_string_sequential_id_and_ask_side() -> None:
    [trade] = parse("bithumb", fixture("bithumb", "v2_trade_string_id.json")).trades
    assert trade == Trade("bithumb", "BTC-KRW", "17259299343730000", "489700", "1.4825", "sell",
                          1_725_929_934_373_000_000, RECV_NS)  # fmt: skip


def test_v2_orderbook_best_level() -> None:
    assert parse("bithumb", fixture("bithumb", "v2_orderbook.json")).quotes == [
        Quote(
            exchange="bithumb",
            symbol="BTC-KRW",
            update_id="1725930007672-9285e3a13a0c",
            bid_price="478300",
            bid_amount="5.6370",  # trailing zero kept
            ask_price="478800",
            ask_amount="4.3478",
            ts_ns=1_725_930_007_672_000_000,
            recv_ns=RECV_NS,
        )
    ]


def test_v2_orderbook_microsecond_string_timestamp() -> None:
    [quote] = parse("bithumb", fixture("bithumb", "v2_orderbook_us_string.json")).quotes
    assert quote == Quote(
        "bithumb", "BTC-KRW", "1725930007672123-9285e3a13a0c", "478300", "5.6370", "478800",
        "4.3478", 1_725_930_007_672_123_000, RECV_NS,
    )  # fmt: skip


# -- legacy -------------------------------------------------------------------------------------
def test_legacy_transaction_kst_to_utc_with_microseconds() -> None:
    parsed = parse("bithumb", fixture("bithumb", "legacy_transaction.json"), context="legacy")
    assert parsed.trades == [
        Trade(
            exchange="bithumb",
            symbol="BTC-KRW",
            trade_id="4d842adeb6ebaf6481ab",  # derived: hash of the fields + occurrence 0
            price="10579000",
            amount="0.01",
            side="sell",  # buySellGb 1: 매도체결
            ts_ns=1_580_268_258_830_039_000,  # 2020-01-29 12:24:18.830039 KST = 03:24:18 UTC
            recv_ns=RECV_NS,
        )
    ]


def test_legacy_several_trades_with_identical_items_get_distinct_stable_ids() -> None:
    frame = fixture("bithumb", "legacy_transaction_multi.json")
    parsed = parse("bithumb", frame, context="legacy")
    assert parsed.trades == [
        Trade("bithumb", "BTC-KRW", "f9496ec6f14d34e80e23", "10580000", "0.5", "buy",
              1_580_309_999_999_999_000, RECV_NS),
        Trade("bithumb", "BTC-KRW", "032b0504bfc39c867e36", "10579000", "0.01", "sell",
              1_580_310_000_000_001_000, RECV_NS),
        Trade("bithumb", "BTC-KRW", "25bd8f2833b713b5bb32", "10579000", "0.01", "sell",
              1_580_310_000_000_001_000, RECV_NS),
    ]  # fmt: skip
    assert parse("bithumb", frame, context="legacy").trades == parsed.trades  # redelivery


def test_legacy_id_does_not_depend_on_batching() -> None:
    single = parse("bithumb", fixture("bithumb", "legacy_transaction.json")).trades
    doubled = json.loads(fixture("bithumb", "legacy_transaction.json"))
    other = dict(doubled["content"]["list"][0], contDtm="2020-01-29 12:24:18.000001")
    doubled["content"]["list"].insert(0, other)
    batched = parse("bithumb", json.dumps(doubled).encode()).trades
    assert batched[1] == single[0]


def test_kst_parsing_precision() -> None:
    assert kst_ns("2020-01-29 09:00:00") == 1_580_256_000_000_000_000
    assert kst_ns("2020-01-29 09:00:00.5") == 1_580_256_000_500_000_000
    assert kst_ns("2020-01-29 09:00:00.123456789") == 1_580_256_000_123_456_789


def test_kst_at_the_ends_of_the_calendar_is_exact_not_an_overflow() -> None:
    # datetime's UTC conversion raised OverflowError for 0001-01-01 in KST (before year 1 in UTC).
    assert kst_ns("0001-01-01 00:00:00") == -62_135_596_800_000_000_000 - 9 * 3_600 * 10**9
    assert kst_ns("9999-12-31 23:59:59.999999") == 253_402_268_399_999_999_000
    [trade] = parse("bithumb", _transaction(contDtm="0001-01-01 00:00:00")).trades
    assert trade.ts_ns < 0  # the validator rejects it as "before 2009"


def test_orderbook_unit_follows_the_json_type_not_the_size() -> None:
    # A JSON number is the documented ms, even when as large as a µs time; a string is µs.
    book = '{"type":"orderbook","code":"KRW-BTC","timestamp":%s,"orderbook_units":['
    book += '{"ask_price":2,"bid_price":1,"ask_size":1,"bid_size":1}]}'
    [as_number] = parse("bithumb", (book % "1725930007672123").encode()).quotes
    assert as_number.ts_ns == 1_725_930_007_672_123 * 1_000_000
    [as_string] = parse("bithumb", (book % '"1725930007672"').encode()).quotes
    assert as_string.ts_ns == 1_725_930_007_672 * 1_000


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("v2_status_up.json", "pong"),
        ("v2_ticker.json", "unknown:ticker"),
        ("legacy_connected.json", "connected"),
        ("legacy_registered.json", "ack"),
        ("legacy_invalid_filter.json", "error"),
        ("legacy_ticker.json", "unknown:ticker"),
        ("legacy_orderbookdepth.json", "unknown:orderbookdepth"),
    ],
)
def test_control_and_unknown_frames(name: str, kind: str) -> None:
    parsed = parse("bithumb", fixture("bithumb", name))
    assert parsed.control == kind and parsed.trades == [] and parsed.quotes == []


def test_upbit_style_error_frame() -> None:
    frame = b'{"error":{"name":"WRONG_FORMAT","message":"bad"}}'
    assert parse("bithumb", frame).control == "error"


def _transaction(**item: object) -> bytes:
    base: dict[str, object] = {"symbol": "BTC_KRW", "buySellGb": "1", "contPrice": "1",
                               "contQty": "1", "contDtm": "2020-01-29 12:24:18.830039"}  # fmt: skip
    base.update(item)
    return json.dumps({"type": "transaction", "content": {"list": [base]}}).encode()


@pytest.mark.parametrize(
    "frame",
    [
        b"nope",
        b'{"status":1}',
        b'{"type":"transaction"}',
        b'{"type":"transaction","content":{"list":[{"symbol":"BTC_KRW"}]}}',
        _transaction(contDtm="2020-01-29T12:24:18Z"),
        _transaction(contDtm="2020-02-30 12:24:18"),
        _transaction(contPrice="1e5x"),
        _transaction(contQty=0.01),
        b'{"type":"trade","code":"KRW-BTC","trade_price":1,"trade_volume":1,"ask_bid":"BID",'
        b'"trade_timestamp":"12x","sequential_id":"1"}',
        b'{"status":"0000","resmsg":"Connected \xffSuccessfully"}',  # not UTF-8 where head skips
        _transaction(contDtm="2020-01-29 24:00:00"),
        _transaction(contDtm="\uff12\uff10\uff12\uff10-01-29 12:24:18"),  # fullwidth digits
        b'{"type":"transaction","content":{"list":' + b"[" * 100_000 + b"}}",
    ],
)
def test_malformed_frames_are_poison(frame: bytes) -> None:
    with pytest.raises(PoisonFrame):
        parse("bithumb", frame)


def test_symbols_map_both_ways() -> None:
    symbol = parse_symbol("BTC-KRW")
    assert BITHUMB.venue_symbol(symbol) == "KRW-BTC"
    assert BITHUMB.legacy_symbol(symbol) == "BTC_KRW"
    ctx = FrameContext("bithumb", "", RECV_NS, "1-0")
    assert BITHUMB.canonical("KRW-BTC", ctx) == "BTC-KRW"
    assert BITHUMB.canonical("BTC_KRW", ctx) == "BTC-KRW"
    assert get_venue("bithumb") is BITHUMB


# -- plan ---------------------------------------------------------------------------------------
def test_plan_v2_is_the_default_and_upbit_shaped() -> None:
    [plan] = BITHUMB.plan(
        channels=[Channel.TRADES, Channel.QUOTES], symbols=[parse_symbol("BTC-KRW")], url=None,
        options={},
    )  # fmt: skip
    assert plan.url == "wss://ws-api.bithumb.com/websocket/v1"
    assert plan.subscribe == (
        '[{"ticket":"tickvault-bithumb-0"},{"type":"trade","codes":["KRW-BTC"]},'
        '{"type":"orderbook","codes":["KRW-BTC"]},{"format":"DEFAULT"}]',
    )
    assert plan.context == "" and plan.name == "bithumb/0"
    assert plan.keepalive.app_ping == "PING" and plan.keepalive.silence_s is not None


def test_plan_legacy_trades() -> None:
    symbols = [parse_symbol("BTC-KRW"), parse_symbol("ETH-KRW")]
    [plan] = BITHUMB.plan(
        channels=[Channel.TRADES], symbols=symbols, url=None, options={"api": "legacy"}
    )
    assert plan.url == "wss://pubwss.bithumb.com/pub/ws"
    assert plan.subscribe == ('{"type":"transaction","symbols":["BTC_KRW","ETH_KRW"]}',)
    assert plan.symbols == ("BTC-KRW", "ETH-KRW") and plan.channels == (Channel.TRADES,)
    assert plan.context == "legacy" and plan.name == "bithumb/legacy/0"
    assert plan.keepalive.protocol_ping_s is not None and plan.keepalive.app_ping is None
    assert plan.keepalive.silence_s is None


def test_plan_legacy_url_override_and_split() -> None:
    symbols = [parse_symbol(f"C{i}-KRW") for i in range(101)]
    plans = BITHUMB.plan(
        channels=[Channel.TRADES],
        symbols=symbols,
        url="ws://127.0.0.1:5",
        options={"api": "legacy"},
    )
    assert [p.url for p in plans] == ["ws://127.0.0.1:5/pub/ws"] * 2
    assert [len(p.symbols) for p in plans] == [100, 1]


def test_plan_legacy_refuses_quotes() -> None:
    with pytest.raises(ValueError, match="v2"):
        BITHUMB.plan(
            channels=[Channel.TRADES, Channel.QUOTES], symbols=[parse_symbol("BTC-KRW")],
            url=None, options={"api": "legacy"},
        )  # fmt: skip


# -- simulator ----------------------------------------------------------------------------------
def test_simulator_legacy_round_trip() -> None:
    dialect = get_dialect("bithumb")
    [plan] = BITHUMB.plan(
        channels=[Channel.TRADES], symbols=[parse_symbol("BTC-KRW")], url="ws://h",
        options={"api": "legacy"},
    )  # fmt: skip
    session = SimSession(path="/pub/ws")
    assert dialect.accepts("/pub/ws") and dialect.accepts("/websocket/v1")
    ctx = FrameContext("bithumb", plan.context, RECV_NS, "1-0")
    [hello] = dialect.greeting(session)
    assert BITHUMB.parse(_b(hello), ctx).control == "connected"
    [ack] = dialect.on_message(session, plan.subscribe[0])
    assert BITHUMB.parse(_b(ack), ctx).control == "ack"
    [bad] = dialect.on_message(session, '{"type":"nope","symbols":["BTC_KRW"]}')
    assert BITHUMB.parse(_b(bad), ctx).control == "error"
    trades = [make_trade("BTC-KRW", i, 1_700_000_000_123_456_000 + i) for i in range(1, 6)]
    [frame] = dialect.trade_frames(session, trades)
    assert isinstance(frame, str)  # legacy frames are text
    got = BITHUMB.parse(_b(frame), ctx).trades
    assert [(t.symbol, t.price, t.amount, t.side, t.ts_ns) for t in got] == [
        ("BTC-KRW", t.price, t.amount, t.side, t.ts_ns - t.ts_ns % 1_000) for t in trades
    ]
    assert len({t.trade_id for t in got}) == 5
    assert dialect.quote_frames(session, make_quote("BTC-KRW", 1, 1_700_000_000_000_000_000)) == []


def test_simulator_v2_frames_are_binary_and_simple_format_parses() -> None:
    dialect = get_dialect("bithumb")
    [plan] = BITHUMB.plan(
        channels=[Channel.TRADES], symbols=[parse_symbol("BTC-KRW")], url="ws://h",
        options={"format": "SIMPLE"},
    )  # fmt: skip
    session = SimSession(path="/websocket/v1")
    assert dialect.on_message(session, plan.subscribe[0]) == []
    trade = make_trade("BTC-KRW", 3, 1_700_000_000_123_000_000)
    [frame] = dialect.trade_frames(session, [trade])
    assert isinstance(frame, bytes)  # sent as a binary frame
    assert b'"tdt"' in frame
    [got] = BITHUMB.parse(frame, FrameContext("bithumb", "", RECV_NS, "1-0")).trades
    assert (got.trade_id, got.price, got.amount, got.side, got.ts_ns) == (
        "3",
        trade.price,
        trade.amount,
        "sell",
        trade.ts_ns,
    )
    [err] = dialect.on_message(session, '[{"ticket":"t"},{"type":"trade","codes":["KRW-BTC"]},'
                                        '{"format":"JSON_LIST"}]')  # fmt: skip
    assert BITHUMB.parse(_b(err), FrameContext("bithumb", "", RECV_NS, "1-0")).control == "error"
    [up] = dialect.on_message(session, "PING")
    assert up == b'{"status":"UP"}'


def _b(frame: str | bytes) -> bytes:
    return frame.encode() if isinstance(frame, str) else frame
