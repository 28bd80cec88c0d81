"""The producer's round trip to Redis gives up after its timeout, with one timer handle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from common.errors import TransientError
from producer.wire import RedisWire, command


def _fake_redis(
    xadd_answer: list[bytes],
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A server that answers the connection's PING and each XADD with ``xadd_answer[0]`` (the
    caller may change it between round trips)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            if b"XADD" in data:
                writer.write(xadd_answer[0])
            else:  # the connection's setup
                writer.write(b"+PONG\r\n" * data.count(b"PING"))
        writer.close()

    return serve


@pytest.mark.parametrize("answer", [b"", b"$5\r\n1-"])  # nothing, or a reply cut short
def test_a_round_trip_without_its_replies_times_out_and_closes_the_connection(
    answer: bytes,
) -> None:
    """A server that takes the commands and never finishes answering (a stall): the round trip
    ends after the wire's timeout with a TransientError that says so, and the connection is
    closed, so the next round trip starts afresh (a reply may have been half read) and, once
    the server answers again, gets its reply whole."""

    async def scenario() -> tuple[str, float, bool, list[object]]:
        answers = [answer]
        server = await asyncio.start_server(_fake_redis(answers), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        wire = RedisWire(f"redis://127.0.0.1:{port}", timeout=0.3)
        await wire.connect()
        started = time.monotonic()
        with pytest.raises(TransientError) as caught:
            await wire.execute(command(b"XADD", b"k", b"*", b"f", b"v"), 1)
        took = time.monotonic() - started
        connected = wire.connected
        answers[0] = b"$3\r\n1-0\r\n"  # the server is back
        again = await wire.execute(command(b"XADD", b"k", b"*", b"f", b"v"), 1)
        await wire.close()
        await asyncio.sleep(0.05)  # the server's side sees the close
        server.close()
        await server.wait_closed()
        return str(caught.value), took, connected, again

    message, took, connected, again = asyncio.run(scenario())
    assert "no reply within 0.3 s" in message
    assert 0.25 <= took < 5.0
    assert not connected
    assert again == [b"1-0"]  # a fresh connection: no half-read reply mixed in


def test_a_round_trip_answered_leaves_no_timer_behind() -> None:
    """The round trip's timeout is one timer handle, cancelled once the replies are in."""

    async def scenario() -> tuple[list[object], int]:
        server = await asyncio.start_server(_fake_redis([b"$3\r\n1-0\r\n"]), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        wire = RedisWire(f"redis://127.0.0.1:{port}", timeout=30.0)
        await wire.connect()
        replies = await wire.execute(command(b"XADD", b"k", b"*", b"f", b"v"), 1)
        live = [
            h
            for h in asyncio.get_running_loop()._scheduled  # type: ignore[attr-defined]
            if not h.cancelled()
        ]
        await wire.close()
        await asyncio.sleep(0.05)
        server.close()
        await server.wait_closed()
        return replies, len(live)

    replies, live = asyncio.run(scenario())
    assert replies == [b"1-0"]
    assert live == 0
