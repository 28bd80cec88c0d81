"""Validation and the per-entry outcome: rows, control kinds, dead letters."""

from __future__ import annotations

import pytest

from common.envelope import Envelope
from common.records import Quote, Trade
from consumer.process import Processor
from consumer.validate import Validator

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
