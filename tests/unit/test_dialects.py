"""Every simulated venue agrees with its parser: the plan's subscribe messages subscribe the
simulator, and the frames the simulator makes parse back to exactly the trades it made."""

from __future__ import annotations

import pytest

from common.simulator.dialect import SimSession
from common.simulator.dialects import all_dialects
from common.simulator.engine import make_quote, make_trade
from common.symbols import Kind, parse_symbol
from common.venues import Channel, FrameContext, get_venue

DIALECTS = sorted(all_dialects())

SAMPLE = {Kind.SPOT: "BTC-USDT", Kind.PERP: "ETH-USDT-PERP"}


def _symbols(exchange: str) -> list[str]:
    venue = get_venue(exchange)
    if exchange in ("upbit", "bithumb"):
        return ["BTC-KRW"]
    if exchange == "coinbase" or exchange == "kraken":
        return ["BTC-USD"]
    return [SAMPLE[k] for k in sorted(venue.kinds) if k in SAMPLE]


@pytest.mark.parametrize("exchange", DIALECTS)
def test_plan_subscribes_simulator_and_frames_parse_back(exchange: str) -> None:
    venue = get_venue(exchange)
    dialect = all_dialects()[exchange]
    symbols = [parse_symbol(s) for s in _symbols(exchange)]
    plans = venue.plan(
        channels=[Channel.TRADES, Channel.QUOTES],
        symbols=symbols,
        url="ws://127.0.0.1:1",
        options={},
    )
    assert plans
    for plan in plans:
        path = plan.url.removeprefix("ws://127.0.0.1:1") or "/"
        assert dialect.accepts(path), path
        session = SimSession(path=path)
        dialect.greeting(session)
        for message in plan.subscribe:
            dialect.on_message(session, message)
        for symbol in plan.symbols:
            if Channel.TRADES in plan.channels:
                assert (Channel.TRADES, symbol) in session.subscriptions
        symbol_map = {venue.venue_symbol(parse_symbol(s)): s for s in plan.symbols}
        for n, symbol in enumerate(sorted({s for (_, s) in session.subscriptions})):
            ctx = FrameContext(
                exchange, plan.context, 1_700_000_000_000_000_000, f"1-{n}", symbol_map
            )
            trades = [
                make_trade(symbol, i, 1_700_000_000_123_000_000 + i * 1_000_000)
                for i in range(1, 1 + dialect.trades_per_frame)
            ]
            parsed_trades = []
            if (Channel.TRADES, symbol) in session.subscriptions:
                for frame in dialect.trade_frames(session, trades):
                    raw = frame.encode() if isinstance(frame, str) else frame
                    parsed_trades.extend(venue.parse(raw, ctx).trades)
                got = sorted(parsed_trades, key=lambda t: t.ts_ns)
                assert [(t.symbol, t.price, t.amount, t.ts_ns) for t in got] == [
                    (t.symbol, t.price, t.amount, t.ts_ns) for t in trades
                ]
                expected_ids = [dialect.expected_trade_id(t) for t in trades]
                if None not in expected_ids:
                    assert [t.trade_id for t in got] == expected_ids
                if dialect.reports_side:
                    assert [t.side for t in got] == [t.side for t in trades]
            if (Channel.QUOTES, symbol) in session.subscriptions:
                quote = make_quote(symbol, 7, 1_700_000_000_123_000_000)
                quotes = []
                for frame in dialect.quote_frames(session, quote):
                    raw = frame.encode() if isinstance(frame, str) else frame
                    quotes.extend(venue.parse(raw, ctx).quotes)
                assert [
                    (q.symbol, q.bid_price, q.bid_amount, q.ask_price, q.ask_amount) for q in quotes
                ] == [
                    (symbol, quote.bid_price, quote.bid_amount, quote.ask_price, quote.ask_amount)
                ]


@pytest.mark.parametrize("exchange", DIALECTS)
def test_batch_of_trades_parses_back(exchange: str) -> None:
    """``trade_frames_batch`` (what the server sends each tick) carries every trade once (in
    the venue's order: Coinbase lists a frame's trades newest first)."""
    venue = get_venue(exchange)
    dialect = all_dialects()[exchange]
    symbol = _symbols(exchange)[0]
    plan = venue.plan(
        channels=[Channel.TRADES],
        symbols=[parse_symbol(symbol)],
        url="ws://127.0.0.1:1",
        options={},
    )[0]
    session = SimSession(path=plan.url.removeprefix("ws://127.0.0.1:1") or "/")
    dialect.greeting(session)
    for message in plan.subscribe:
        dialect.on_message(session, message)
    symbol_map = {venue.venue_symbol(parse_symbol(symbol)): symbol}
    ctx = FrameContext(exchange, plan.context, 1_700_000_000_000_000_000, "1-0", symbol_map)
    trades = [make_trade(symbol, i, 1_700_000_000_123_000_000) for i in range(1, 8)]
    frames = dialect.trade_frames_batch(session, trades)
    got = [
        t for f in frames for t in venue.parse(f.encode() if isinstance(f, str) else f, ctx).trades
    ]
    assert sorted((t.price, t.amount) for t in got) == [(t.price, t.amount) for t in trades]
    assert len(frames) >= -(-len(trades) // dialect.trades_per_frame)


@pytest.mark.parametrize("binary", [False, True])
def test_raw_frames_are_valid_websocket_frames(binary: bool) -> None:
    """The simulator's one-write path builds frames a real WebSocket client accepts: every
    length encoding (7-bit, 16-bit, 64-bit), text and binary."""
    from websockets.frames import Opcode
    from websockets.protocol import Protocol, Side, State

    from common.simulator.server import raw_frames

    frames: list[str | bytes] = ["x", "é" * 70, "y" * 125, "z" * 126, "w" * 65_535, "v" * 70_000]
    frames.append(b"\x00\x01 bytes")
    client = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)
    client.receive_data(raw_frames(frames, binary))
    events = client.events_received()
    assert [e.data for e in events] == [f.encode() if isinstance(f, str) else f for f in frames]
    text = Opcode.BINARY if binary else Opcode.TEXT
    assert [e.opcode for e in events] == [text] * 6 + [Opcode.BINARY]
    assert all(e.fin for e in events)
