"""Every connection watched, against real WebSocket servers on 127.0.0.1 that speak just enough
of each venue family: a feed that goes silent after subscribing is replaced within its
threshold; one that is quiet but alive is not reconnected in a loop.

- Binance spot (no heartbeat; answers our protocol pings): the derived threshold;
- OKX (application ``ping``/``pong``): the venue's heartbeat bound, pongs prove the connection;
- Coinbase (``heartbeats`` channel): the venue's heartbeat bound.

Thresholds are scaled down (a floor of 0.3 s, heartbeat bounds of 0.4-0.6 s) so each scenario
takes seconds; the rule's production values are tested on a fake clock in ``test_liveness``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from common.metrics import Metrics
from common.symbols import parse_symbol
from common.venues import Channel, ConnectionPlan, get_venue
from producer.liveness import LivenessRule
from producer.markers import Markers
from producer.session import FeedSession
from tests.conftest import SLOW
from tests.recorder import Recorder

FLOOR = 0.3
RULE = LivenessRule(floor_s=FLOOR, ceiling_s=1.0, min_gaps=4)  # tick 0.075 s
SLACK = 0.35 * SLOW  # scheduling and the close handshake on a shared 2-core machine


@dataclass
class Conn:
    """One connection as the server saw it (monotonic times)."""

    opened: float
    last_sent: float = 0.0
    closed: float = 0.0


@dataclass
class Server:
    conns: list[Conn] = field(default_factory=list)

    def open(self) -> Conn:
        conn = Conn(time.monotonic())
        conn.last_sent = conn.opened
        self.conns.append(conn)
        return conn


Handler = Callable[[ServerConnection, Conn, int], Awaitable[None]]


async def send(ws: ServerConnection, conn: Conn, message: str) -> None:
    await ws.send(message)
    conn.last_sent = time.monotonic()


def run(
    exchange: str,
    handler: Handler,
    seconds: float,
    *,
    keepalive: dict[str, object],
    rule: LivenessRule | None = None,
) -> tuple[Metrics, Server, Recorder]:
    """A FeedSession on ``exchange``'s real plan (keepalive changed by ``keepalive``) against
    ``handler`` for ``seconds``."""
    server = Server()

    async def serve_one(ws: ServerConnection) -> None:
        conn = server.open()
        try:
            await handler(ws, conn, len(server.conns))
            await ws.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            conn.closed = time.monotonic()

    async def scenario() -> tuple[Metrics, Recorder]:
        async with serve(serve_one, "127.0.0.1", 0, compression=None) as ws_server:
            port = next(iter(ws_server.sockets)).getsockname()[1]
            venue = get_venue(exchange)
            [plan] = venue.plan(
                channels=[Channel.TRADES], symbols=[parse_symbol("BTC-USDT")],
                url=f"ws://127.0.0.1:{port}", options={},
            )  # fmt: skip
            plan = dataclasses.replace(
                plan, keepalive=dataclasses.replace(plan.keepalive, **keepalive)
            )
            metrics = Metrics("producer")
            recorder = Recorder(metrics)
            session = FeedSession(
                venue, plan, recorder, metrics, backoff_initial_s=0.01, backoff_max_s=0.02,
                liveness=rule, markers=Markers(recorder, "p1", "1000"),
            )  # fmt: skip
            stop = asyncio.Event()
            task = asyncio.ensure_future(session.run(stop))
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.wait_for(task, 10 * SLOW)
        return metrics, recorder

    metrics, recorder = asyncio.run(scenario())
    return metrics, server, recorder


def _binance_rule(plan: ConnectionPlan) -> LivenessRule:
    return dataclasses.replace(RULE, heartbeat_s=plan.keepalive.silence_s)


def trade(i: int) -> str:
    return json.dumps(
        {"stream": "btcusdt@trade", "data": {"e": "trade", "E": 1, "s": "BTCUSDT", "t": i,
         "p": "1.0", "q": "1.0", "T": 1, "m": True, "M": True}}
    )  # fmt: skip


async def binance_ack(ws: ServerConnection, conn: Conn) -> None:
    request = json.loads(await ws.recv())
    await send(ws, conn, json.dumps({"result": None, "id": request["id"]}))


def test_binance_silent_after_subscribing_is_replaced_within_the_derived_threshold() -> None:
    """Trades for 1 s, then nothing, while the server keeps answering our protocol pings (every
    0.1 s here): no ping timeout ends it, the silence watchdog does, after about the floor."""

    async def handler(ws: ServerConnection, conn: Conn, n: int) -> None:
        await binance_ack(ws, conn)
        if n == 1:
            for i in range(50):
                await send(ws, conn, trade(i))
                await asyncio.sleep(0.02)

    metrics, server, rec = run(
        "binance", handler, 2.5, keepalive={"protocol_ping_s": 0.1}, rule=RULE
    )
    first = server.conns[0]
    assert metrics.counters["silence_timeouts"] >= 1
    # the coverage ledger hears of it: subscribed, lost (silent, with the threshold), the next
    # connection subscribed, ..., closed at the stop
    events = [(conn, json.loads(body)) for conn, body in rec.markers]
    assert [e["event"] for _, e in events[:3]] == ["subscribed", "lost", "subscribed"]
    assert events[0][0] == events[1][0] != events[2][0]
    assert events[1][1]["reason"].startswith("silent ") and "threshold" in events[1][1]["reason"]
    assert events[-1][1]["event"] == "closed"
    assert all(e["symbols"] == ["BTC-USDT"] and e["producer"] == "p1" for _, e in events)
    assert len(server.conns) >= 2
    silence = first.closed - first.last_sent
    assert FLOOR <= silence <= FLOOR + 2 * RULE.tick_s + SLACK


def test_binance_connections_that_only_ack_back_off_not_loop() -> None:
    """A pair with no trade at all (or a venue that acks and sends nothing): the first
    connection goes at the ceiling (1 s here), the next ones at 2 s, 4 s: not every second."""

    async def handler(ws: ServerConnection, conn: Conn, n: int) -> None:
        await binance_ack(ws, conn)

    metrics, server, _ = run("binance", handler, 4.5, keepalive={}, rule=RULE)
    lives = [c.closed - c.opened for c in server.conns]
    assert metrics.counters["silence_timeouts"] == 2  # at ~1 s, then ~3 s; then stopped
    assert len(lives) == 3 and lives[0] >= 1.0 and lives[1] >= 2.0


def test_binance_quiet_but_alive_is_not_reconnected() -> None:
    """A trade every 0.5 s against a ceiling of 1 s (a trade a minute against 120 s)."""

    async def handler(ws: ServerConnection, conn: Conn, n: int) -> None:
        await binance_ack(ws, conn)
        for i in range(100):
            await send(ws, conn, trade(i))
            await asyncio.sleep(0.5)

    metrics, server, recorder = run("binance", handler, 4.0, keepalive={}, rule=RULE)
    assert metrics.counters["silence_timeouts"] == 0
    assert len(server.conns) == 1
    assert len(recorder.frames) >= 8


async def okx_subscribed(ws: ServerConnection, conn: Conn) -> None:
    request = json.loads(await ws.recv())
    await send(ws, conn, json.dumps({"event": "subscribe", "arg": request["args"][0]}))


def test_okx_that_stops_answering_pings_is_replaced_within_its_heartbeat_bound() -> None:
    """Our ``ping`` every 0.1 s is answered with ``pong`` for 0.8 s, then the server hangs:
    replaced within the venue's bound (0.5 s here, 45 s in production), derived from the plan."""

    async def handler(ws: ServerConnection, conn: Conn, n: int) -> None:
        await okx_subscribed(ws, conn)
        until = time.monotonic() + 0.8
        async for message in ws:
            if message == "ping" and (n > 1 or time.monotonic() < until):
                await send(ws, conn, "pong")

    metrics, server, recorder = run(
        "okx", handler, 2.5, keepalive={"app_ping_s": 0.1, "silence_s": 0.5}
    )
    first = server.conns[0]
    assert metrics.counters["silence_timeouts"] >= 1
    assert len(server.conns) >= 2
    tick = LivenessRule(heartbeat_s=0.5).tick_s
    assert 0.5 <= first.closed - first.last_sent <= 0.5 + 2 * tick + SLACK
    assert (b"pong", False) in recorder.frames


def test_okx_quiet_instrument_with_pongs_is_not_reconnected() -> None:
    """No trade at all, but every ping answered: the pongs are the liveness signal."""

    async def handler(ws: ServerConnection, conn: Conn, n: int) -> None:
        await okx_subscribed(ws, conn)
        async for message in ws:
            if message == "ping":
                await send(ws, conn, "pong")

    metrics, server, _ = run("okx", handler, 2.5, keepalive={"app_ping_s": 0.1, "silence_s": 0.5})
    assert metrics.counters["silence_timeouts"] == 0
    assert len(server.conns) == 1


def test_coinbase_whose_heartbeats_stop_is_replaced_within_its_heartbeat_bound() -> None:
    """``heartbeats`` every 50 ms for 0.8 s, then silence: replaced within 0.4 s (10 s in
    production)."""

    async def handler(ws: ServerConnection, conn: Conn, n: int) -> None:
        for _ in range(2):  # market_trades, heartbeats
            await ws.recv()
        await send(ws, conn, json.dumps({"channel": "subscriptions", "events": []}))
        for i in range(16 if n == 1 else 1000):
            beat = {
                "channel": "heartbeats",
                "sequence_num": i,
                "events": [{"heartbeat_counter": i}],
            }
            await send(ws, conn, json.dumps(beat))
            await asyncio.sleep(0.05)

    metrics, server, _ = run("coinbase", handler, 2.5, keepalive={"silence_s": 0.4})
    first = server.conns[0]
    assert metrics.counters["silence_timeouts"] == 1  # the second connection keeps beating
    assert len(server.conns) == 2
    tick = LivenessRule(heartbeat_s=0.4).tick_s
    assert 0.4 <= first.closed - first.last_sent <= 0.4 + 2 * tick + SLACK
