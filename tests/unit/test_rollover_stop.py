"""A stop while a rollover's new connection still connects (its handshake hangs): the feed ends
at once, not after the rollover's 30 s wait or the handshake's timeout, and the old connection's
``closed`` marker is queued before it returns (a real WebSocket server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import time

from websockets.asyncio.server import ServerConnection, serve

from common.metrics import Metrics
from common.venues import get_venue
from producer.markers import Markers
from producer.publisher import Publisher
from producer.session import FeedSession
from producer.wire import RedisWire
from tests.unit.test_silence_watchdog import binance_plan


def test_a_stop_during_a_hanging_rollover_ends_the_feed_at_once() -> None:
    async def scenario() -> tuple[float, list[bytes], int]:
        accepted = 0
        hung, finished = asyncio.Event(), asyncio.Event()

        async def process_request(connection: ServerConnection, request: object) -> None:
            nonlocal accepted
            accepted += 1
            if accepted > 1:  # the rollover's connection: its handshake never completes
                hung.set()
                await finished.wait()

        async def trades(ws: ServerConnection) -> None:
            await ws.recv()  # the subscription
            await ws.send('{"result":null,"id":1}')
            await ws.wait_closed()

        async with serve(trades, "127.0.0.1", 0, process_request=process_request) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            plan = binance_plan(port, silence_s=60.0)
            metrics = Metrics("producer")
            publisher = Publisher(
                RedisWire("redis://127.0.0.1:1/0"), buffer_frames=100, pipeline_max=10,
                metrics=metrics,
            )  # fmt: skip
            session = FeedSession(
                get_venue("binance"), plan, publisher, metrics, lifetime_s=1.0, overlap_s=0.5,
                markers=Markers(publisher, producer="p1", run="r1"),
            )  # fmt: skip
            stop = asyncio.Event()
            task = asyncio.ensure_future(session.run(stop))
            await asyncio.wait_for(hung.wait(), 10)  # rolling over, the new one hanging
            stop.set()
            started = time.monotonic()
            await asyncio.wait_for(task, 20)
            took = time.monotonic() - started
            frames = [item[1] for item in publisher._buffer]
            finished.set()  # (the server lets the hung handshake go)
        return took, frames, accepted

    took, frames, accepted = asyncio.run(scenario())
    assert accepted == 2
    assert took < 3.0  # not the rollover's 30 s, nor the handshake's 15 s
    events = [f for f in frames if b'"closed"' in f]
    assert len(events) == 1, frames  # the old connection's, queued before the feed ended
