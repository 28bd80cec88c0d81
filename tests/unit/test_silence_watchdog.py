"""The silence watchdog: a connection that delivers nothing for its threshold is replaced, one
that keeps delivering is left alone (a real WebSocket server on 127.0.0.1). The rule itself is
tested in ``test_liveness``, each venue family against a real server in ``test_liveness_feeds``."""

from __future__ import annotations

import asyncio
import itertools
import time

from websockets.asyncio.server import ServerConnection, serve

from common.metrics import Metrics
from common.venues import Channel, ConnectionPlan, Keepalive, get_venue
from producer.liveness import Liveness, LivenessRule
from producer.publisher import Publisher
from producer.session import FeedSession, watch_liveness
from producer.wire import RedisWire


def binance_plan(port: int, *, silence_s: float) -> ConnectionPlan:
    """One Binance trades connection to a local server on ``port``."""
    return ConnectionPlan(
        url=f"ws://127.0.0.1:{port}/ws",
        subscribe=('{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}',),
        symbols=("BTC-USDT",),
        channels=(Channel.TRADES,),
        keepalive=Keepalive(protocol_ping_s=None, silence_s=silence_s),
    )


def test_watch_liveness_returns_after_silence_and_not_while_frames_move() -> None:
    async def scenario() -> tuple[float, float]:
        count = itertools.count()
        frames = 0
        rule = LivenessRule(fixed_s=0.2)
        feed = Liveness(rule)

        def moving() -> int:
            return next(count)

        t0 = time.monotonic()
        watch = feed.watch(t0)
        task = asyncio.ensure_future(watch_liveness(watch, moving, rule.tick_s))
        await asyncio.sleep(0.6)  # frames keep coming: no verdict
        assert not task.done()
        task.cancel()

        t1 = time.monotonic()
        silence = await watch_liveness(feed.watch(t1), lambda: frames, rule.tick_s)
        assert silence >= 0.2
        return t1 - t0, time.monotonic() - t1

    moving_for, silent_for = asyncio.run(scenario())
    assert moving_for >= 0.6
    assert 0.2 <= silent_for <= 0.2 + 0.05 + 0.15  # the threshold, one tick, scheduling


def test_a_silent_connection_is_replaced() -> None:
    async def scenario() -> tuple[Metrics, int]:
        accepted = 0

        async def silent(ws: ServerConnection) -> None:
            nonlocal accepted
            accepted += 1
            await ws.wait_closed()  # accepts the subscription, never sends a frame

        async with serve(silent, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            plan = binance_plan(port, silence_s=0.2)
            metrics = Metrics("producer")
            publisher = Publisher(
                RedisWire("redis://127.0.0.1:1/0"),  # never used: no frame arrives
                buffer_frames=10,
                pipeline_max=10,
                metrics=metrics,
            )
            session = FeedSession(
                get_venue("binance"), plan, publisher, metrics,
                backoff_initial_s=0.01, backoff_max_s=0.02,
            )  # fmt: skip
            stop = asyncio.Event()
            task = asyncio.ensure_future(session.run(stop))
            await asyncio.sleep(1.2)
            stop.set()
            await asyncio.wait_for(task, 10)
        return metrics, accepted

    metrics, accepted = asyncio.run(scenario())
    assert metrics.counters["silence_timeouts"] >= 2
    assert metrics.counters["reconnects"] >= 2
    assert accepted >= 3
