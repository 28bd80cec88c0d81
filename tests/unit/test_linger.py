"""The latency budget (issue 14): the producer's linger lets frames share a round trip, and the
consumer's acks ride its next read. No servers: a recording wire and fakeredis."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest

from common.config import settings_from_mapping
from common.errors import ConfigError
from common.metrics import Metrics
from consumer.reads import GroupReads
from producer.publisher import Publisher
from producer.wire import RedisWire, XaddPacker

PACKER = XaddPacker("tickvault:raw:{binance}", "binance", "ctx", "conn")


class RecordingWire(RedisWire):
    """Takes every round trip at once and records when it came and how many entries it held."""

    def __init__(self) -> None:
        super().__init__("redis://127.0.0.1:1/0")
        self.trips: list[tuple[float, int]] = []

    async def connect(self) -> None:
        return None

    async def execute(self, payload: bytes, count: int) -> list[Any]:
        self.trips.append((time.monotonic(), count))
        return [b"1-%d" % i for i in range(count)]

    async def close(self) -> None:
        return None


async def _publish(linger_ms: float, frames: list[float], wait_s: float = 0.1) -> RecordingWire:
    """Put one frame at each offset (s) of ``frames``; return the wire once all are sent."""
    wire = RecordingWire()
    pub = Publisher(
        wire, buffer_frames=1_000, pipeline_max=500, metrics=Metrics("producer"),
        linger_ms=linger_ms,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.ensure_future(pub.run(stop))
    await asyncio.sleep(0.01)
    start = time.monotonic()
    for i, offset in enumerate(frames):
        await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
        pub.put(PACKER, b'{"i":%d}' % i, False, i, time.time_ns())
    await asyncio.sleep(wait_s)
    stop.set()
    await task
    return wire


def test_frames_within_the_linger_share_one_round_trip_and_one_entry() -> None:
    wire = asyncio.run(_publish(50.0, [0.0, 0.005, 0.010, 0.015]))
    assert [count for _, count in wire.trips] == [1]  # one entry: a run of four frames


def test_a_venues_bursts_within_the_linger_share_one_round_trip_by_default() -> None:
    """A venue sends a tick's trades back to back, then nothing until the next tick: with the
    default ``linger_frames`` a burst does not cut the batch short, so the ticks within the
    linger share one round trip (measured at 10,000/s: ~10 % less CPU a trade than when
    each tick's 10 frames went at once)."""
    frames = settings_from_mapping({}).producer.linger_frames
    assert frames >= 60

    async def scenario() -> list[tuple[float, int]]:
        async with _running(50.0, buffer_frames=1_000) as pub:
            pub.linger_frames = frames  # the default, as the producer sets it
            n = 0
            for _tick in range(4):  # 4 ticks of 15 frames, 5 ms apart, within 50 ms
                for _ in range(15):
                    pub.put(PACKER, b"{}", False, n, time.time_ns())
                    n += 1
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.2)
            return _trips(pub)

    trips = asyncio.run(scenario())
    assert [count for _, count in trips] == [2]  # 60 frames: runs of 32 and 28, one write


def test_without_linger_a_lone_frame_goes_at_once() -> None:
    wire = asyncio.run(_publish(0.0, [0.0, 0.030, 0.060]))
    assert len(wire.trips) == 3


@contextlib.asynccontextmanager
async def _running(linger_ms: float, buffer_frames: int = 100) -> AsyncIterator[Publisher]:
    """A publisher on a RecordingWire (``pub.wire``), running; stopped at the end."""
    pub = Publisher(RecordingWire(), buffer_frames=buffer_frames, pipeline_max=500,
                    metrics=Metrics("producer"), linger_ms=linger_ms)  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.ensure_future(pub.run(stop))
    await asyncio.sleep(0.01)
    try:
        yield pub
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def _trips(pub: Publisher) -> list[tuple[float, int]]:
    assert isinstance(pub.wire, RecordingWire)
    return list(pub.wire.trips)


def test_a_lone_frame_waits_the_linger_and_no_longer() -> None:
    async def scenario() -> tuple[float, float]:
        async with _running(20.0) as pub:
            put_at = time.monotonic()
            pub.put(PACKER, b"{}", False, 0, time.time_ns())
            await asyncio.sleep(0.2)
        [(sent_at, _)] = _trips(pub)
        return put_at, sent_at

    put_at, sent_at = asyncio.run(scenario())
    assert 0.015 <= sent_at - put_at < 0.15


def test_enough_frames_go_before_the_linger_ends() -> None:
    async def scenario() -> tuple[float, list[tuple[float, int]]]:
        async with _running(1_000.0, buffer_frames=10_000) as pub:
            put_at = time.monotonic()
            for i in range(pub.linger_frames):
                pub.put(PACKER, b"{}", False, i, time.time_ns())
            await asyncio.sleep(0.1)
            trips = _trips(pub)
        return put_at, trips

    put_at, trips = asyncio.run(scenario())
    assert trips and trips[0][0] - put_at < 0.1  # not a second later


def test_a_stop_does_not_wait_for_the_linger() -> None:
    async def scenario() -> tuple[float, list[tuple[float, int]]]:
        async with _running(1_000.0) as pub:
            pub.put(PACKER, b"{}", False, 0, time.time_ns())
            await asyncio.sleep(0.01)
            t0 = time.monotonic()
        return time.monotonic() - t0, _trips(pub)

    took, trips = asyncio.run(scenario())
    assert took < 0.5 and [count for _, count in trips] == [1]  # sent, not left behind


def test_a_clock_stepped_back_cannot_stretch_the_linger() -> None:
    wire = RecordingWire()
    pub = Publisher(wire, buffer_frames=100, pipeline_max=500, metrics=Metrics("producer"),
                    linger_ms=5.0)  # fmt: skip
    pub.put(PACKER, b"{}", False, 0, time.time_ns() + 3_600 * 10**9)  # "received" an hour ahead
    assert 0 < pub._linger_left() <= 0.005
    pub._buffer.clear()
    pub.put(PACKER, b"{}", False, 0, time.time_ns() - 10**9)  # a second old: due now
    assert pub._linger_left() <= 0


@pytest.mark.parametrize("value", [-1, 1_001, float("nan")])
def test_linger_out_of_range_fails_at_start(value: float) -> None:
    with pytest.raises(ConfigError, match=r"producer\.linger_ms"):
        settings_from_mapping({"producer": {"linger_ms": value}}, {})


# -- the consumer's acks ride its next read ----------------------------------------------------
def _ids(reply: Any) -> list[str]:
    """Entry ids of a raw XREADGROUP reply (RESP2 [[key, entries]] or a RESP3 map)."""
    pairs = reply.items() if isinstance(reply, dict) else reply or []
    return [entry_id.decode() for _, entries in pairs for entry_id, _ in entries]


def test_acks_and_the_next_read_go_in_one_round_trip() -> None:
    r = fakeredis.FakeRedis()
    key = "tickvault:raw:{binance}"
    first = r.xadd(key, {"f": "1"}).decode()
    r.xgroup_create(key, "g", id="0")
    reads = GroupReads(r, "g", "c1")
    reply, error = reads.read({key: ">"}, 10, 0)
    assert error is None and _ids(reply) == [first]
    assert r.xpending(key, "g")["pending"] == 1  # read, not acked
    second = r.xadd(key, {"f": "2"}).decode()
    reply, error = reads.read({key: ">"}, 10, 0, [(key, [first])])
    assert error is None and _ids(reply) == [second]
    pending = r.xpending_range(key, "g", "-", "+", 10)
    assert [p["message_id"].decode() for p in pending] == [second]  # the first one acked
    reads.close()


def test_a_refused_ack_is_returned_and_the_read_still_answers() -> None:
    r = fakeredis.FakeRedis()
    key = "tickvault:raw:{binance}"
    r.xadd(key, {"f": "1"})
    r.xgroup_create(key, "g", id="0")
    r.set("not-a-stream", "x")
    reads = GroupReads(r, "g", "c1")
    reply, error = reads.read({key: ">"}, 10, 0, [("not-a-stream", ["1-0"])])
    assert error is not None and "WRONGTYPE" in str(error)
    assert len(_ids(reply)) == 1  # the connection stayed in step
    reply, error = reads.read({key: ">"}, 10, 0)
    assert error is None and not reply  # nothing new, and the connection still works


def test_the_publishers_wake_ends_on_a_set_a_timeout_or_a_cancel() -> None:
    """The publisher's wait (every linger) is one future and one timer: a set wakes it, a
    timeout ends it without an exception, a cancelled waiter leaves no timer behind."""
    from producer.publisher import Wake

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        wake = Wake()
        wake.set()
        assert await wake.wait(10.0) is True  # already set: no waiting
        wake.clear()
        started = time.monotonic()
        assert await wake.wait(0.02) is False  # the timeout: no TimeoutError
        assert 0.015 <= time.monotonic() - started < 1.0
        loop.call_later(0.01, wake.set)
        started = time.monotonic()
        assert await wake.wait(10.0) is True
        assert time.monotonic() - started < 1.0
        wake.clear()
        task = asyncio.ensure_future(wake.wait(10.0))
        await asyncio.sleep(0.01)
        timers = len(loop._scheduled)  # type: ignore[attr-defined]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len([h for h in loop._scheduled if not h.cancelled()]) < timers  # type: ignore[attr-defined]
        wake.set()  # nobody waits: nothing to resolve
        assert wake.is_set()

    asyncio.run(scenario())
