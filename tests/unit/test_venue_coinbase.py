"""Coinbase Advanced Trade frames from the official docs, normalised field by field."""

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
from common.venues.base import rfc3339_ns
from tests.venue_helpers import RECV_NS, fixture, parse

EX = "coinbase"


def test_snapshot_trade_side_is_the_makers_so_the_taker_is_the_opposite() -> None:
    parsed = parse(EX, fixture(EX, "market_trades_snapshot.json"))
    assert parsed.trades == [
        Trade(
            exchange=EX,
            symbol="ETH-USD",
            trade_id="000000000",
            price="1260.01",
            amount="0.3",
            side="sell",  # "side, which refers to the makers side": a BUY maker met a seller
            ts_ns=1_565_815_347_265_000_000,
            recv_ns=RECV_NS,
        )
    ]
    assert parsed.quotes == [] and parsed.control is None


def test_update_with_several_trades_newest_first_keeps_every_digit() -> None:
    parsed = parse(EX, fixture(EX, "market_trades_update.json"), symbols={"BTC-USD": "BTC-USD"})
    assert parsed.trades == [
        Trade(EX, "BTC-USD", "617293002", "71234.57", "0.00150000", "buy",
              1_710_252_309_104_321_987, RECV_NS),
        Trade(EX, "BTC-USD", "617293001", "71234.56", "0.02000000", "sell",
              1_710_252_309_004_321_000, RECV_NS),
        Trade(EX, "BTC-USD", "617293000", "71234.57", "0.5", "buy",
              1_710_252_308_900_000_000, RECV_NS),
    ]  # fmt: skip


def test_ticker_quote_keyed_by_frame_timestamp() -> None:
    assert parse(EX, fixture(EX, "ticker.json")).quotes == [
        Quote(
            exchange=EX,
            symbol="BTC-USD",
            update_id="1675974637167359596-0",
            bid_price="21931.98",
            bid_amount="8000.21",
            ask_price="21933.98",
            ask_amount="8038.07770938",
            ts_ns=1_675_974_637_167_359_596,
            recv_ns=RECV_NS,
        )
    ]


def test_ticker_frame_with_two_products() -> None:
    ts = 1_710_252_309_123_456_789
    assert parse(EX, fixture(EX, "ticker_multi.json")).quotes == [
        Quote(EX, "BTC-USD", f"{ts}-0", "71234.56", "0.4", "71234.57", "1.25", ts, RECV_NS),
        Quote(EX, "ETH-USD", f"{ts}-1", "3987.09", "12", "3987.10", "3.5", ts, RECV_NS),
    ]


def test_ticker_with_an_empty_book_side_gives_no_quote() -> None:
    frame = json.loads(fixture(EX, "ticker.json"))
    frame["events"][0]["tickers"][0]["best_ask"] = ""
    parsed = parse(EX, json.dumps(frame).encode())
    assert parsed.quotes == [] and parsed.control is None


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("heartbeats.json", "heartbeat"),
        ("subscriptions.json", "ack"),
        ("error.json", "error"),
        ("candles.json", "unknown:candles"),
        ("l2_data.json", "unknown:l2_data"),
    ],
)
def test_control_and_unknown_frames_are_counted_not_dead_lettered(name: str, kind: str) -> None:
    parsed = parse(EX, fixture(EX, name))
    assert parsed.control == kind and not parsed.trades and not parsed.quotes


def test_unknown_message_type_is_counted() -> None:
    assert parse(EX, b'{"type":"notice","message":"x"}').control == "unknown:notice"


def _trades(**changes: object) -> bytes:
    trade: dict[str, object] = {
        "trade_id": "1", "product_id": "BTC-USD", "price": "1", "size": "1", "side": "BUY",
        "time": "2024-03-12T14:05:09Z",
    }  # fmt: skip
    trade.update(changes)
    frame = {"channel": "market_trades", "timestamp": "2024-03-12T14:05:09Z", "sequence_num": 1,
             "events": [{"type": "update", "trades": [trade]}]}  # fmt: skip
    return json.dumps(frame).encode()


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"not json",
        b"[]",
        b"\xff\xfe",
        b"{}",
        b'{"channel":"market_trades"}',
        b'{"channel":"market_trades","events":[{"type":"update"}]}',
        b'{"channel":"ticker","events":[{"type":"update","tickers":[]}]}',  # no timestamp
        _trades(price=1.5),
        _trades(time="2024-03-12 14:05:09"),  # no zone
        _trades(time="2023-02-30T00:00:00Z"),  # no such day
        _trades(time="2024-03-12T14:05:09.1234567891Z"),  # finer than ns
        _trades(trade_id=None),
    ],
)
def test_malformed_frames_are_poison(frame: bytes) -> None:
    with pytest.raises(PoisonFrame):
        parse(EX, frame)


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2023-02-09T20:30:37.167359596Z", 1_675_974_637_167_359_596),
        ("2023-02-09T21:30:37.167359596+01:00", 1_675_974_637_167_359_596),
        ("2023-02-09T15:00:37.1-05:30", 1_675_974_637_100_000_000),
        ("2024-02-29t23:59:59.000001z", 1_709_251_199_000_001_000),
    ],
)
def test_rfc3339_is_exact_to_the_nanosecond(text: str, ns: int) -> None:
    assert rfc3339_ns(text) == ns


def test_symbols_map_both_ways() -> None:
    venue = get_venue(EX)
    assert venue.venue_symbol(parse_symbol("BTC-USD")) == "BTC-USD"
    assert venue.venue_symbol(parse_symbol("USDT-USDC")) == "USDT-USDC"
    assert [t.symbol for t in parse(EX, _trades(product_id="ETH-EUR")).trades] == ["ETH-EUR"]
    assert [t.symbol for t in parse(EX, _trades(product_id="BIT-28JUN24-CDE")).trades] == [
        "BIT-28JUN24-CDE"  # a futures product: left as is, reported as not subscribed
    ]


def test_usdc_products_without_their_own_market_data_are_refused() -> None:
    venue = get_venue(EX)
    with pytest.raises(ValueError, match="BTC-USD data"):
        venue.check_symbol(parse_symbol("BTC-USDC"))
    venue.check_symbol(parse_symbol("USDT-USDC"))
    venue.check_symbol(parse_symbol("EURC-USDC"))
    with pytest.raises(ValueError, match="spot"):
        venue.check_symbol(parse_symbol("BTC-USD-PERP"))


def test_plan_sends_one_subscribe_per_channel_plus_heartbeats() -> None:
    venue = get_venue(EX)
    [plan] = venue.plan(
        channels=[Channel.TRADES, Channel.QUOTES],
        symbols=[parse_symbol("BTC-USD"), parse_symbol("ETH-USD"), parse_symbol("BTC-USD")],
        url=None,
        options={},
    )
    assert plan.url == "wss://advanced-trade-ws.coinbase.com"
    assert plan.subscribe == (
        '{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channel":"market_trades"}',
        '{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channel":"ticker"}',
        '{"type":"subscribe","channel":"heartbeats"}',
    )
    assert plan.symbols == ("BTC-USD", "ETH-USD")
    assert plan.channels == (Channel.TRADES, Channel.QUOTES)
    # All three within the 5 s deadline, at most 8 unauthenticated messages/s per IP.
    assert 2 * plan.subscribe_interval_s < 5 and plan.subscribe_interval_s >= 1 / 8
    assert plan.keepalive.app_ping is None and plan.keepalive.protocol_ping_s is None
    assert plan.keepalive.silence_s is not None and plan.keepalive.silence_s <= 30
    assert plan.max_lifetime_s is None


def test_plan_splits_products_over_connections() -> None:
    venue = get_venue(EX)
    symbols = [parse_symbol(f"C{i}-USD") for i in range(250)]
    plans = venue.plan(channels=[Channel.TRADES], symbols=symbols, url="ws://h:1", options={})
    assert [len(p.symbols) for p in plans] == [100, 100, 50]
    assert {p.url for p in plans} == {"ws://h:1"}
    assert [json.loads(m)["channel"] for m in plans[0].subscribe] == ["market_trades", "heartbeats"]


def test_simulator_acks_on_subscriptions_and_reports_the_maker_side() -> None:
    dialect = get_dialect(EX)
    session = SimSession(path="/")
    replies = dialect.on_message(
        session, '{"type":"subscribe","product_ids":["BTC-USD"],"channel":"market_trades"}'
    )
    assert [parse(EX, r.encode() if isinstance(r, str) else r).control for r in replies] == [
        "ack",
        None,  # the (empty) snapshot of recent trades
    ]
    [frame] = dialect.trade_frames(session, [make_trade("BTC-USD", 3, 1_700_000_000_000_001_000)])
    raw = frame.encode() if isinstance(frame, str) else frame
    assert json.loads(raw)["events"][0]["trades"][0]["side"] == "BUY"  # the maker bought
    [trade] = parse(EX, raw).trades
    assert (trade.trade_id, trade.side, trade.ts_ns) == ("3", "sell", 1_700_000_000_000_001_000)
    [error] = dialect.on_message(session, "nonsense")
    assert parse(EX, error.encode() if isinstance(error, str) else error).control == "error"
