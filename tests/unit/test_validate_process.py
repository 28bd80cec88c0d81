"""Validation and the per-entry outcome: rows, control kinds, dead letters."""

from __future__ import annotations

import pytest

from common.envelope import Envelope
from common.records import Quote, Trade
from consumer.process import Processor
from consumer.validate import Validator, decimal_problem, id_problem

NOW = 1_700_000_000_000_000_000
V = Validator({"binance": frozenset({"BTC-USDT"})}, max_future_skew_ns=5 * 10**9)


def trade(**kw: object) -> Trade:
    base: dict[str, object] = dict(
        exchange="binance", symbol="BTC-USDT", trade_id="1", price="100.5", amount="0.001",
        side="buy", ts_ns=NOW - 10**6, recv_ns=NOW,
    )  # fmt: skip
    base.update(kw)
    return Trade(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"price": "1e-8"},
        {"price": "0.00000001"},
        {"amount": "12"},
        {"side": None},
        {"ts_ns": 1_300_000_000 * 10**9},  # old is fine (replays, backfills)
        {"ts_ns": NOW + 4 * 10**9},
    ],
)
def test_valid_trades(kw: dict[str, object]) -> None:
    assert V.trade(trade(**kw)) is None


@pytest.mark.parametrize(
    ("kw", "word"),
    [
        ({"price": "0"}, "price"),
        ({"price": "0.000"}, "price"),
        ({"price": "-1"}, "price"),
        ({"price": "NaN"}, "price"),
        ({"price": "Infinity"}, "price"),
        ({"price": "inf"}, "price"),
        ({"price": "1,5"}, "price"),
        ({"price": ""}, "price"),
        ({"amount": "0"}, "amount"),
        ({"amount": "-0.1"}, "amount"),
        ({"side": "BUY"}, "side"),
        ({"ts_ns": 1_000_000_000 * 10**9}, "before 2009"),
        ({"ts_ns": NOW + 6 * 10**9}, "after its receive time"),
        ({"symbol": "ETH-USDT"}, "not subscribed"),
        ({"exchange": "okx"}, "not subscribed"),
    ],
)
def test_invalid_trades_say_why(kw: dict[str, object], word: str) -> None:
    reason = V.trade(trade(**kw))
    assert reason is not None and word in reason


def test_quotes_need_positive_prices_and_decimal_amounts() -> None:
    q = Quote("binance", "BTC-USDT", "9", "1.0", "0", "1.1", "2", NOW, NOW)
    assert V.quote(q) is None
    bad = Quote("binance", "BTC-USDT", "9", "0", "1", "1.1", "2", NOW, NOW)
    assert "bid_price" in (V.quote(bad) or "")
    neg = Quote("binance", "BTC-USDT", "9", "1", "-1", "1.1", "2", NOW, NOW)
    assert "bid_amount" in (V.quote(neg) or "")


def _fields(frame: bytes, exchange: str = "binance") -> dict[bytes, bytes]:
    return Envelope(frame, False, exchange, "", "c1", 1, NOW).fields()


P = Processor(
    subscribed={"binance": frozenset({"BTC-USDT"})},
    symbol_maps={("binance", ""): {"BTCUSDT": "BTC-USDT"}},
    max_future_skew_ns=5 * 10**9,
)
GOOD = (
    b'{"e":"trade","E":1699999999999,"s":"BTCUSDT","t":5,"p":"10.0","q":"2",'
    b'"T":1699999999999,"m":true,"M":true}'
)


def test_a_good_frame_gives_rows() -> None:
    out = P.process("1-0", _fields(GOOD))
    assert out.dead is None and out.control is None and out.recv_ns == NOW
    assert out.trades == [
        Trade("binance", "BTC-USDT", "5", "10.0", "2", "sell", 1_699_999_999_999_000_000, NOW)
    ]


def test_control_and_unknown_frames_are_counted() -> None:
    assert P.process("1-0", _fields(b'{"result":null,"id":1}')).control == "ack"
    assert P.process("1-0", _fields(b'{"e":"kline","s":"BTCUSDT"}')).control == "unknown:kline"


@pytest.mark.parametrize(
    ("fields", "word"),
    [
        (None, "no fields"),
        ({b"f": b"x"}, "bad envelope"),
        (_fields(b"{oops"), "undecodable"),
        (_fields(GOOD, exchange="nowhere"), "unknown exchange"),
        (_fields(GOOD.replace(b"BTCUSDT", b"ETHUSDT")), "not subscribed"),
        (_fields(GOOD.replace(b'"10.0"', b'"-1"')), "price"),
    ],
)
def test_bad_frames_are_dead_lettered_with_a_reason(
    fields: dict[bytes, bytes] | None, word: str
) -> None:
    out = P.process("1-0", fields)
    assert out.dead is not None and word in out.dead
    assert out.trades == []


def test_a_parser_bug_is_dead_lettered_not_raised() -> None:
    class Broken:
        exchange = "binance"

        def parse(self, frame: bytes, ctx: object) -> object:
            raise ZeroDivisionError("bug")

    p = Processor(
        subscribed={}, symbol_maps={}, max_future_skew_ns=0,
        venues={"binance": Broken()},  # type: ignore[dict-item]
    )  # fmt: skip
    out = p.process("1-0", _fields(GOOD))
    assert out.dead is not None and "ZeroDivisionError" in out.dead


# -- bounds before PostgreSQL ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["1", "0.00000001", "1e-8", "123456789.123456789", "99999999999999999999", "1.5E+3",
     "0.000000000000000000000001", "67000.01000000", "0001.5", "1." + "0" * 60],
)  # fmt: skip
def test_decimals_within_the_bounds_pass(value: str) -> None:
    assert decimal_problem(value) is None
    assert V.trade(trade(price=value, amount=value)) is None


@pytest.mark.parametrize(
    ("value", "word"),
    [
        ("1" * 1000, "characters long"),
        ("1" * 21, "below 1e20"),
        ("1e20", "below 1e20"),
        ("1e999999", "below 1e20"),
        ("1e9999999", "not a decimal"),  # an exponent of 7 digits is not a price
        ("0." + "0" * 30 + "1", "after the point"),
        ("1e-25", "after the point"),
        ("1234567890.1234567890123456789012345678901", "significant digits"),
        ("NaN", "not a decimal"),
        ("Infinity", "not a decimal"),
        ("-1", "not a decimal"),
        ("+1", "not a decimal"),
        ("\u0661", "not a decimal"),  # an Arabic-Indic one: \d would take it, numeric would not
        ("1\x00", "not a decimal"),
        ("0", "not positive"),
        ("0e10", "not positive"),
        (".", "not a decimal"),
        ("", "not a decimal"),
    ],
)
def test_decimals_out_of_bounds_say_why(value: str, word: str) -> None:
    problem = decimal_problem(value)
    assert problem is not None and word in problem
    reason = V.trade(trade(price=value))
    assert reason is not None and "price" in reason and len(reason) < 300


@pytest.mark.parametrize(
    ("trade_id", "word"),
    [
        ("x" * 129, "129 bytes"),
        ("é" * 65, "130 bytes"),
        ("", "empty"),
        ("12\x0034", "control character"),
        ("12\n34", "control character"),
        ("\ud800", "surrogate"),
    ],
)
def test_ids_must_be_short_printable_utf8(trade_id: str, word: str) -> None:
    assert id_problem(trade_id) is not None
    reason = V.trade(trade(trade_id=trade_id))
    assert reason is not None and word in reason
    q = Quote("binance", "BTC-USDT", trade_id, "1", "1", "2", "1", NOW, NOW)
    assert word in (V.quote(q) or "")


def test_ids_of_128_bytes_and_non_ascii_ids_pass() -> None:
    assert V.trade(trade(trade_id="x" * 128)) is None
    assert V.trade(trade(trade_id="거래-1 a")) is None


def test_absurd_times_are_rejected_with_the_real_reason() -> None:
    # A trade time in year 9999, in ms as Binance sends it: in the future, not "before 2009".
    year_9999_ns = 253_402_300_799_000 * 1_000_000
    assert "after its receive time" in (V.trade(trade(ts_ns=year_9999_ns)) or "")
    giant = int("9" * 1000)  # must not overflow a float on the way to the message
    assert "after its receive time" in (V.trade(trade(ts_ns=giant)) or "")
    assert "before 2009" in (V.trade(trade(ts_ns=-giant)) or "")


def test_a_thousand_digit_trade_time_is_dead_lettered_not_raised() -> None:
    frame = GOOD.replace(b'"T":1699999999999', b'"T":' + b"9" * 1000)
    out = P.process("1-0", _fields(frame))
    assert out.dead is not None and out.trades == []


def test_an_absurd_receive_time_is_dead_lettered() -> None:
    out = P.process("1-0", Envelope(GOOD, False, "binance", "", "c1", 1, 10**30).fields())
    assert out.dead is not None and "receive time" in out.dead


def test_reasons_are_one_bounded_line() -> None:
    frame = GOOD.replace(b'"10.0"', b'"' + b"7" * 10_000 + b'\\n"')
    out = P.process("1-0", _fields(frame))
    assert out.dead is not None and len(out.dead) <= 500 and "\n" not in out.dead
