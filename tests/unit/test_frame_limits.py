"""Frame limits on both receive paths: a frame over ``max_frame_bytes`` ends its connection from
its header (nothing buffered past the limit), logged and counted; a stream that ends inside a
frame raises; a large frame costs linear time in the splitter; a text frame that is not UTF-8 is
kept as bytes and the connection stays up. The splitter alone (pure), then a FeedSession
against real servers on 127.0.0.1 that write raw bytes, with ``fast_frames`` on and off."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from collections.abc import Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from common.metrics import Metrics
from common.simulator.server import raw_frames
from common.symbols import parse_symbol
from common.venues import Channel, get_venue
from producer.frames import FrameSplitter, TruncatedFrame
from producer.session import FeedSession
from tests.conftest import SLOW
from tests.recorder import Recorder

MiB = 2**20


def header(length: int, opcode: int = 0x2) -> bytes:
    """An unmasked FIN frame header announcing ``length`` payload bytes."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


# -- the splitter ------------------------------------------------------------------------------


def test_a_header_announcing_2_to_the_60_is_handed_over_unbuffered() -> None:
    huge = header(2**60) + b"x" * 1000
    splitter = FrameSplitter(max_size=MiB)
    messages, controls, rest = splitter.feed(raw_frames(["before"], False) + huge)
    assert messages == [(b"before", False)] and controls == []
    assert rest == huge  # websockets' parser, given the same limit, refuses it from the header
    assert splitter.pending == 0 and splitter.copied == 0


def test_a_cut_header_announcing_too_much_is_handed_over_once_complete() -> None:
    huge = header(2**60)
    splitter = FrameSplitter(max_size=MiB)
    assert splitter.feed(huge[:5]) == ([], [], b"")
    assert splitter.pending == 5
    assert splitter.feed(huge[5:] + b"junk") == ([], [], huge + b"junk")
    assert splitter.pending == 0


@pytest.mark.parametrize("limit", [200, 70_000])  # a 16-bit and a 64-bit length
def test_one_byte_over_the_limit_is_refused_the_limit_itself_taken(limit: int) -> None:
    at, over = b"a" * limit, b"b" * (limit + 1)
    splitter = FrameSplitter(max_size=limit)
    messages, _, rest = splitter.feed(header(limit) + at + header(limit + 1) + over)
    assert messages == [(at, True)]
    assert rest == header(limit + 1) + over


def test_a_control_frame_announcing_more_than_125_bytes_is_handed_over() -> None:
    bad_ping = struct.pack("!BBH", 0x89, 126, 2000)  # RFC 6455 5.5: control payload <= 125
    assert FrameSplitter().feed(bad_ping + b"p" * 10) == ([], [], bad_ping + b"p" * 10)


def test_a_16_mib_frame_in_64_kib_reads_costs_linear_copying() -> None:
    """The old splitter concatenated its buffer with every read: 256 reads of a 16 MiB frame
    copied ~2 GiB (808 ms). Now each byte is copied into the pending buffer once and out once."""
    payload = bytes(range(256)) * (16 * MiB // 256)
    stream = header(len(payload)) + payload + raw_frames(["next"], False)
    splitter = FrameSplitter(max_size=32 * MiB)
    got: list[tuple[bytes, bool]] = []
    started = time.perf_counter()
    for i in range(0, len(stream), 64 * 1024):
        messages, _, rest = splitter.feed(stream[i : i + 64 * 1024])
        assert rest == b""
        got += messages
    elapsed = time.perf_counter() - started
    assert got == [(payload, True), (b"next", False)]
    assert splitter.copied <= 2 * len(payload) + 64 * 1024
    assert elapsed < 0.5 * SLOW  # ~20 ms here; the quadratic splitter took 808 ms


def test_a_frame_cut_short_by_eof_raises() -> None:
    splitter = FrameSplitter()
    splitter.feed(raw_frames(["whole"], False))
    splitter.eof()  # at a frame boundary: fine
    splitter.feed(header(1000) + b"x" * 10)
    with pytest.raises(TruncatedFrame) as cut:
        splitter.eof()
    assert (cut.value.received, cut.value.size) == (14, 1004)
    assert "14 bytes of 1004" in str(cut.value)
    splitter = FrameSplitter()
    splitter.feed(header(70_000)[:5])  # the header itself cut
    with pytest.raises(TruncatedFrame, match="of a header"):
        splitter.eof()


# -- against real servers ----------------------------------------------------------------------


Handler = Callable[[ServerConnection, int], Awaitable[None]]


def run(
    handler: Handler,
    *,
    fast: bool,
    max_frame_bytes: int,
    until: Callable[[Metrics, Recorder, list[int | None]], bool],
    timeout: float = 5.0,
) -> tuple[Metrics, Recorder, list[int | None]]:
    """A Binance FeedSession against ``handler`` until ``until(metrics, recorder, close codes
    the server received, one per ended connection)``."""
    codes: list[int | None] = []
    opened = 0

    async def serve_one(ws: ServerConnection) -> None:
        nonlocal opened
        opened += 1
        request = json.loads(await ws.recv())
        await ws.send(json.dumps({"result": None, "id": request["id"]}))
        try:
            await handler(ws, opened)
            await ws.wait_closed()
        except ConnectionClosed:
            pass
        codes.append(ws.close_code)

    async def scenario() -> tuple[Metrics, Recorder]:
        async with serve(serve_one, "127.0.0.1", 0, compression=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            venue = get_venue("binance")
            [plan] = venue.plan(
                channels=[Channel.TRADES], symbols=[parse_symbol("BTC-USDT")],
                url=f"ws://127.0.0.1:{port}", options={},
            )  # fmt: skip
            metrics = Metrics("producer")
            recorder = Recorder(metrics)
            session = FeedSession(
                venue, plan, recorder, metrics, backoff_initial_s=0.01, backoff_max_s=0.02,
                fast_frames=fast, max_frame_bytes=max_frame_bytes,
            )  # fmt: skip
            stop = asyncio.Event()
            task = asyncio.ensure_future(session.run(stop))
            for _ in range(int(timeout * SLOW / 0.02)):  # wait on the condition
                if until(metrics, recorder, codes):
                    break
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.wait_for(task, 10 * SLOW)
        return metrics, recorder

    metrics, recorder = asyncio.run(scenario())
    return metrics, recorder, codes


def payloads(recorder: Recorder) -> list[bytes]:
    return [f for f, _ in recorder.frames if not f.startswith(b'{"result"')]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "websockets"])
@pytest.mark.parametrize("announced", [2**60, 1001], ids=["2^60", "limit+1"])
def test_an_oversized_frame_ends_the_connection_logged_and_counted(
    fast: bool, announced: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(ws: ServerConnection, n: int) -> None:
        if n > 1:
            return
        ws.transport.write(raw_frames(["before", "x" * 1000], False))  # 1000: at the limit
        body = b"y" * min(announced, 5000)  # of 2^60, a few bytes only: none is waited for
        ws.transport.write(header(announced) + body + raw_frames(["never"], False))

    caplog.set_level(logging.WARNING, "producer.session")
    metrics, recorder, codes = run(
        handler, fast=fast, max_frame_bytes=1000,
        until=lambda m, r, c: m.counters["connections"] >= 2,
    )  # fmt: skip
    assert payloads(recorder) == [b"before", b"x" * 1000]
    assert metrics.counters["oversized_frames"] == 1
    assert metrics.counters["reconnects"] >= 1  # a recorded gap, then a new connection
    assert codes[0] == 1009  # the client closed with "message too big"
    assert any("frame over the size limit" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "websockets"])
def test_a_frame_cut_short_by_eof_is_a_lost_connection_logged_and_counted(
    fast: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(ws: ServerConnection, n: int) -> None:
        if n > 1:
            return
        ws.transport.write(raw_frames(["before"], False) + header(1000, 0x1) + b"z" * 10)
        ws.transport.close()  # EOF inside the frame

    caplog.set_level(logging.WARNING, "producer.session")
    metrics, recorder, _ = run(
        handler, fast=fast, max_frame_bytes=MiB,
        until=lambda m, r, c: m.counters["connections"] >= 2,
    )  # fmt: skip
    assert payloads(recorder) == [b"before"]
    assert metrics.counters["truncated_frames"] == 1
    lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    assert lost and "stream ended inside a frame" in lost[0]
    assert "10 bytes, expected 1000" in lost[0] if not fast else "14 bytes of 1004" in lost[0]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "websockets"])
def test_a_text_frame_that_is_not_utf8_is_kept_and_the_connection_stays_up(fast: bool) -> None:
    bad = b"\xff\xfe not UTF-8 \xc3\x28"

    async def handler(ws: ServerConnection, n: int) -> None:
        await asyncio.sleep(0.1)  # after the handshake: the fast path takes these
        ws.transport.write(raw_frames(["before"], False) + header(len(bad), 0x1) + bad)
        for i in range(3):
            await ws.send(f"after {i}")

    metrics, recorder, codes = run(
        handler, fast=fast, max_frame_bytes=MiB,
        until=lambda m, r, c: len(payloads(r)) >= 5,
    )  # fmt: skip
    assert recorder.frames[1:] == [
        (b"before", False), (bad, False), (b"after 0", False), (b"after 1", False),
        (b"after 2", False),
    ]  # fmt: skip
    assert metrics.counters["connections"] == 1 and metrics.counters["reconnects"] == 0
    assert codes == [1000]  # closed by our stop, not 1007


def test_producer_max_frame_bytes_reaches_every_session_and_is_checked() -> None:
    from common.config import settings_from_mapping
    from common.errors import ConfigError
    from producer.__main__ import build_sessions

    feeds = [{"exchange": "binance", "symbols": ["BTC-USDT"]}]
    metrics = Metrics("producer")
    publisher = Recorder(metrics)
    default = build_sessions(settings_from_mapping({"feeds": feeds}, {}), publisher, metrics)
    assert [s.max_frame_bytes for s in default] == [8 * MiB]
    settings = settings_from_mapping({"producer": {"max_frame_bytes": 4096}, "feeds": feeds}, {})
    assert [s.max_frame_bytes for s in build_sessions(settings, publisher, metrics)] == [4096]
    with pytest.raises(ConfigError, match=r"producer\.max_frame_bytes"):
        settings_from_mapping({"producer": {"max_frame_bytes": 0}}, {})
