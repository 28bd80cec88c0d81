"""The receive fast path: frames cut out of a byte stream however it is split, control frames
handed on whole, and the first frame it does not take ends it (pure, no sockets), then the
same against a real WebSocket server: pings still answered, order kept, compressed connections
untouched."""

from __future__ import annotations

import asyncio
import struct

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from common.simulator.server import raw_frames
from producer.frames import FastConnection, FrameSplitter

PING = b"\x89\x04ping"  # FIN + ping, 4-byte payload
CLOSE = b"\x88\x02\x03\xe8"  # FIN + close, code 1000


def _split_all(
    stream: bytes, cuts: list[int]
) -> tuple[list[tuple[bytes, bool]], list[bytes], bytes]:
    splitter = FrameSplitter()
    messages: list[tuple[bytes, bool]] = []
    controls: list[bytes] = []
    rest = b""
    last = 0
    for cut in [*cuts, len(stream)]:
        got, ctl, rest = splitter.feed(stream[last:cut])
        messages += got
        controls += ctl
        last = cut
        if rest:
            rest += stream[cut:]
            break
    return messages, controls, rest


FRAMES: list[str | bytes] = ["a", "é" * 80, "x" * 70_000, b"\x00\x01bin", "y" * 125, "z" * 126]


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 1000, 10**6])
def test_frames_come_out_whole_however_the_bytes_are_cut(step: int) -> None:
    stream = raw_frames(FRAMES[:3], False) + PING + raw_frames(FRAMES[3:], False)
    messages, controls, rest = _split_all(stream, list(range(step, len(stream), step)))
    assert messages == [(f.encode(), False) if isinstance(f, str) else (f, True) for f in FRAMES]
    assert controls == [PING] and rest == b""


def test_an_incomplete_frame_waits_for_its_bytes() -> None:
    stream = raw_frames(["hello"], False)
    splitter = FrameSplitter()
    assert splitter.feed(stream[:4]) == ([], [], b"")
    assert splitter.feed(stream[4:]) == ([(b"hello", False)], [], b"")


@pytest.mark.parametrize(
    "odd",
    [
        b"\x01\x03abc",  # text, FIN clear: the first fragment of a message
        b"\xc1\x03abc",  # text with RSV1 (compressed)
        b"\x81\x83\x00\x00\x00\x00abc",  # masked (a server must not mask)
        b"\x00\x03abc",  # a continuation frame
    ],
)
def test_the_first_frame_it_does_not_take_ends_the_fast_path(odd: bytes) -> None:
    before, after = raw_frames(["one"], False), raw_frames(["two"], False) + PING
    messages, controls, rest = _split_all(before + odd + after, [])
    assert messages == [(b"one", False)]
    assert controls == []
    assert rest == odd + after


def test_64_bit_lengths() -> None:
    payload = b"p" * 70_000
    stream = struct.pack("!BBQ", 0x82, 127, len(payload)) + payload
    assert FrameSplitter().feed(stream) == ([(payload, True)], [], b"")


def test_against_a_real_server_pings_answered_order_kept() -> None:
    """A server that pings between data frames: the client still answers (the ping's pong
    arrives), and every message arrives once, in order, through ``on_message``."""

    async def scenario() -> tuple[list[bytes], list[str | bytes], bool]:
        pong = asyncio.Event()

        async def handler(ws: ServerConnection) -> None:
            await ws.recv()  # the client's "go"
            for i in range(300):
                await ws.send(f"m{i}")
                if i % 100 == 50:
                    waiter = await ws.ping(b"k")
                    await asyncio.wait_for(waiter, 5)
                    pong.set()
            await ws.send("last")
            await ws.wait_closed()

        async with serve(handler, "127.0.0.1", 0, compression=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            got: list[bytes] = []
            via_recv: list[str | bytes] = []
            async with connect(
                f"ws://127.0.0.1:{port}", create_connection=FastConnection, compression=None
            ) as ws:
                assert isinstance(ws, FastConnection)
                ws.on_message = lambda payload, binary: got.append(payload)
                await ws.send("go")
                for _ in range(500):
                    if got and got[-1] == b"last":
                        break
                    try:
                        via_recv.append(await asyncio.wait_for(ws.recv(), 0.01))
                    except TimeoutError:
                        pass
        return got, via_recv, pong.is_set()

    got, via_recv, ponged = asyncio.run(scenario())
    assert ponged
    assert via_recv == []
    assert got == [f"m{i}".encode() for i in range(300)] + [b"last"]


def test_a_compressed_connection_stays_on_websockets() -> None:
    async def scenario() -> tuple[list[bytes], list[str | bytes]]:
        async def handler(ws: ServerConnection) -> None:
            await ws.recv()
            for i in range(20):
                await ws.send(f"c{i}" * 20)
            await ws.wait_closed()

        async with serve(handler, "127.0.0.1", 0, compression="deflate") as server:
            port = next(iter(server.sockets)).getsockname()[1]
            got: list[bytes] = []
            via_recv: list[str | bytes] = []
            async with connect(f"ws://127.0.0.1:{port}", create_connection=FastConnection) as ws:
                ws.on_message = lambda payload, binary: got.append(payload)  # type: ignore[attr-defined]
                await ws.send("go")
                for _ in range(20):
                    via_recv.append(await asyncio.wait_for(ws.recv(), 5))
        return got, via_recv

    got, via_recv = asyncio.run(scenario())
    assert got == []
    assert via_recv == [f"c{i}" * 20 for i in range(20)]


def test_a_full_publisher_stops_the_fast_path_reading_the_socket() -> None:
    """Redis slower than the feed: once ``high_water`` frames wait, the session stops reading
    (TCP backpressure), so a burst never piles up in the producer; it reads on when there is
    room."""
    from common.metrics import Metrics
    from common.simulator.dialects import all_dialects
    from common.simulator.server import Simulator, SimulatorConfig
    from common.symbols import parse_symbol
    from common.venues import Channel, get_venue
    from producer.publisher import Publisher
    from producer.session import FeedSession
    from producer.wire import RedisWire

    class StuckWire(RedisWire):
        """A Redis that takes commands and answers only when released."""

        def __init__(self) -> None:
            super().__init__("redis://127.0.0.1:1/0")
            self.release = asyncio.Event()
            self.sent = 0

        async def connect(self) -> None:
            return None  # no server: execute() below stands for it

        async def execute(self, payload: bytes, count: int) -> None:
            await self.release.wait()
            self.sent += count

    async def scenario() -> tuple[int, int, int]:
        sim = Simulator(all_dialects()["binance"], SimulatorConfig(rate=1e7, trades=30_000))
        port = await sim.start()
        stop_sim = asyncio.Event()
        runner = asyncio.ensure_future(sim.run(stop_sim))
        venue = get_venue("binance")
        [plan] = venue.plan(
            channels=[Channel.TRADES], symbols=[parse_symbol("BTC-USDT")],
            url=f"ws://127.0.0.1:{port}", options={},
        )  # fmt: skip
        metrics = Metrics("producer")
        wire = StuckWire()
        publisher = Publisher(
            wire, buffer_frames=100_000, pipeline_max=500, metrics=metrics, high_water=1_000
        )
        session = FeedSession(venue, plan, publisher, metrics)
        stop = asyncio.Event()
        tasks = [
            asyncio.ensure_future(session.run(stop)),
            asyncio.ensure_future(publisher.run(stop)),
        ]
        for _ in range(400):
            if sim.sent_trades >= 30_000:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the whole burst has been sent: the producer must not take it
        held = publisher.buffered
        wire.release.set()  # Redis answers again
        for _ in range(200):
            if metrics.counters["published"] >= 30_001:
                break
            await asyncio.sleep(0.05)
        stop.set()
        stop_sim.set()
        await asyncio.wait_for(asyncio.gather(*tasks, runner), 20)
        await sim.close()
        return held, metrics.counters["published"], metrics.counters["dropped"]

    held, sent, dropped = asyncio.run(scenario())
    assert 1_000 <= held < 10_000  # stopped near high_water, not at the 30,000 sent
    assert sent == 30_001 and dropped == 0  # every trade (and the subscribe reply), in the end
