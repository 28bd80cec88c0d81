"""OKX v5 frames from the official docs, normalised field by field."""

from __future__ import annotations

import pytest

from common.errors import PoisonFrame
from common.records import Quote, Trade
from common.symbols import parse_symbol
from common.venues import Channel, get_venue
from tests.venue_helpers import RECV_NS, fixture, parse


@pytest.mark.parametrize("name", ["trades.json", "trades_all.json"])
def test_trades_and_trades_all(name: str) -> None:
    parsed = parse("okx", fixture("okx", name))
    assert parsed.trades == [
        Trade(
            exchange="okx",
            symbol="BTC-USDT",
            trade_id="130639474",
            price="42219.9",
            amount="0.12060306",
            side="buy",
            ts_ns=1_630_048_897_897_000_000,
            recv_ns=RECV_NS,
        )
    ]


def test_several_trades_in_one_frame_on_a_swap() -> None:
    parsed = parse("okx", fixture("okx", "trades_swap_multi.json"))
    assert parsed.trades == [
        Trade("okx", "BTC-USDT-PERP", "242720720", "42219.9", "12", "sell",
              1_630_048_897_897_000_000, RECV_NS),
        Trade("okx", "BTC-USDT-PERP", "242720721", "42219.8", "3", "sell",
              1_630_048_897_898_000_000, RECV_NS),
    ]  # fmt: skip


def test_bbo_tbt() -> None:
    assert parse("okx", fixture("okx", "bbo_tbt.json")).quotes == [
        Quote(
            exchange="okx",
            symbol="BCH-USDT-PERP",
            update_id="363996337",
            bid_price="111.05",
            bid_amount="57745",
            ask_price="111.06",
            ask_amount="55154",
            ts_ns=1_670_324_386_802_000_000,
            recv_ns=RECV_NS,
        )
    ]


@pytest.mark.parametrize(
    ("name", "kind"), [("subscribe_ack.json", "ack"), ("error.json", "error"), ("pong.txt", "pong")]
)
def test_control_frames(name: str, kind: str) -> None:
    assert parse("okx", fixture("okx", name)).control == kind


def test_unknown_channel_is_counted() -> None:
    frame = b'{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"last":"1"}]}'
    assert parse("okx", frame).control == "unknown:tickers"


@pytest.mark.parametrize(
    "frame",
    [
        b"ping?",
        b'{"arg":{"channel":"trades"}}',
        b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT"}]}',
        b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
        b'"tradeId":"1","px":"1","sz":"1","side":"buy","ts":"abc"}]}',
        # int() would read these: an underscore, spaces, a sign, non-ASCII digits, 5000 digits
        *(
            b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
            b'"tradeId":"1","px":"1","sz":"1","side":"buy","ts":"' + ts.encode() + b'"}]}'
            for ts in (
                "1_700_000_000_000",
                " 1700000000000",
                "+1700000000000",
                "\u0661\u0667\u0660\u0660",
                "9" * 5000,
            )
        ),
        b'{"arg":{"channel":"bbo-tbt","instId":"BTC-USDT"},"data":[{"asks":[],"bids":[],"ts":"1"}]}',
    ],
)
def test_malformed_frames_are_poison(frame: bytes) -> None:
    with pytest.raises(PoisonFrame):
        parse("okx", frame)


def test_symbols_map_both_ways() -> None:
    venue = get_venue("okx")
    for canonical, inst in [
        ("BTC-USDT", "BTC-USDT"),
        ("BTC-USDT-PERP", "BTC-USDT-SWAP"),
        ("BTC-USD-250627", "BTC-USD-250627"),
    ]:
        assert venue.venue_symbol(parse_symbol(canonical)) == inst


def test_plan_routes_trades_all_to_business_and_pings_with_text() -> None:
    venue = get_venue("okx")
    plans = venue.plan(
        channels=[Channel.TRADES, Channel.QUOTES],
        symbols=[parse_symbol("BTC-USDT")],
        url="ws://127.0.0.1:9",
        options={"trades": "trades-all"},
    )
    urls = {p.url: p for p in plans}
    assert set(urls) == {"ws://127.0.0.1:9/ws/v5/business", "ws://127.0.0.1:9/ws/v5/public"}
    business = urls["ws://127.0.0.1:9/ws/v5/business"]
    assert business.subscribe == (
        '{"id":"1","op":"subscribe","args":[{"channel":"trades-all","instId":"BTC-USDT"}]}',
    )
    assert business.keepalive.app_ping == "ping" and business.keepalive.app_ping_s < 30
