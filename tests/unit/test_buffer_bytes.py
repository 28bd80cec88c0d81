"""The producer's memory bounds in bytes as well as in frames: a feed of big frames (each under
``producer.max_frame_bytes``) pauses the sessions and then drops, counted, before memory runs
out, and no round trip (from memory or from the spill) carries more than ``pipeline_bytes``
but for one frame larger than that; the consumer sizes its reads by the entries' bytes too. No
servers: a recording wire."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from common.config import settings_from_mapping
from common.errors import ConfigError
from common.metrics import Metrics
from producer.publisher import Publisher
from producer.spill import Record, Spill
from producer.wire import RedisWire, XaddPacker

KEY = "tickvault:raw:{binance}"
PACKER = XaddPacker(KEY, "binance", "", "c#1")
MIB = 1 << 20


class RecordingWire(RedisWire):
    """Takes every round trip at once; records each payload's size."""

    def __init__(self) -> None:
        super().__init__("redis://127.0.0.1:1/0")
        self.payloads: list[int] = []

    async def connect(self) -> None:
        return None

    async def execute(self, payload: bytes, count: int) -> list[Any]:
        self.payloads.append(len(payload))
        return [b"1-%d" % i for i in range(count)]

    async def close(self) -> None:
        return None


def frame(i: int, size: int) -> bytes:
    return (b'{"i":%d,"pad":"' % i).ljust(size - 2, b"x") + b'"}'


def test_big_frames_pause_the_sessions_then_are_dropped_and_counted() -> None:
    metrics = Metrics("producer")
    pub = Publisher(
        RecordingWire(), buffer_frames=100_000, pipeline_max=2_000, metrics=metrics,
        buffer_bytes=20 * MIB,
    )  # fmt: skip
    assert pub.high_water_bytes == 2 * MIB
    assert pub.put(PACKER, frame(0, MIB), False, 0, time.time_ns())
    assert not pub.full
    assert pub.put(PACKER, frame(1, MIB), False, 1, time.time_ns())
    assert pub.full  # 2 MiB held: the sessions stop reading (Redis answers, if slowly)
    for i in range(2, 20):
        assert pub.put(PACKER, frame(i, MIB), False, i, time.time_ns())
    assert pub.buffered_bytes == 20 * MIB and pub.buffered == 20
    assert not pub.put(PACKER, frame(20, MIB), False, 20, time.time_ns())  # past the bound
    assert (
        pub.put(PACKER, b"{}", False, 21, time.time_ns()) is False or pub.buffered_bytes <= 20 * MIB
    )
    assert metrics.counters["dropped"] >= 1 and pub.lost == metrics.counters["dropped"]


@pytest.mark.parametrize("size", [100, 300 * 1024, 3 * MIB, 12 * MIB])
def test_no_round_trip_carries_more_than_pipeline_bytes_but_for_one_big_frame(size: int) -> None:
    wire = RecordingWire()
    metrics = Metrics("producer")
    pub = Publisher(
        wire, buffer_frames=100_000, pipeline_max=2_000, metrics=metrics,
        buffer_bytes=64 * MIB, pipeline_bytes=8 * MIB,
    )  # fmt: skip
    count = max(1, (40 * MIB) // size) if size > 1000 else 5_000

    async def run() -> None:
        stop = asyncio.Event()
        for i in range(count):  # all queued before the first send
            assert pub.put(PACKER, frame(i, size), False, i, time.time_ns())
        task = asyncio.ensure_future(pub.run(stop))
        for _ in range(500):
            await asyncio.sleep(0.01)
            if not pub.buffered:
                break
        stop.set()
        await task

    asyncio.run(run())
    assert metrics.counters["published"] == count and pub.buffered_bytes == 0
    envelope = 2 * 1024  # the XADD's fields, per entry, at most
    for sent in wire.payloads:
        assert sent <= max(8 * MIB, size) + 64 * envelope
    if size <= MIB:
        assert len(wire.payloads) >= (count * size) // (8 * MIB)


def test_the_spill_drains_in_round_trips_of_at_most_pipeline_bytes(tmp_path: Path) -> None:
    spill = Spill(tmp_path, max_bytes=1 << 30).open()
    records = [Record(KEY, "binance", "", "c#1", i, time.time_ns(), False, frame(i, MIB))
               for i in range(30)]  # fmt: skip
    spill.append(records)
    got = spill.take(2_000, 8 * MIB)
    assert [r.seq for r in got] == list(range(8))  # 8 MiB: eight of them
    spill.consume(len(got))
    assert [r.seq for r in spill.take(2_000, MIB // 2)] == [8]  # one, however big
    spill.untake()
    assert len(spill.take(2_000)) == 22  # no bound: all that are left
    spill.close()


def test_buffer_bytes_must_hold_the_largest_frame_the_feeds_accept() -> None:
    base = {"feeds": [{"exchange": "binance", "symbols": ["BTC-USDT"]}]}
    ok = settings_from_mapping({**base, "producer": {"buffer_bytes": 64 * MIB}})
    assert ok.producer.buffer_bytes == 64 * MIB
    assert settings_from_mapping(base).producer.buffer_bytes == 256 * MIB
    for bad in (0, -1, MIB):
        with pytest.raises(ConfigError, match=r"producer\.buffer_bytes"):
            settings_from_mapping({**base, "producer": {"buffer_bytes": bad}})
    small = {"buffer_bytes": MIB, "max_frame_bytes": MIB // 2}
    assert settings_from_mapping({**base, "producer": small}).producer.buffer_bytes == MIB


def test_the_consumer_sizes_an_entry_by_its_frame_in_either_reply_shape() -> None:
    """Flat [name, value, ...] (the consumer's own reads) or a map (redis-py's, on a cluster);
    a deleted entry's fields are None."""
    from consumer.reads import fields_bytes

    flat = [b"f", b"x" * 1000, b"k", b"d", b"e", b"binance"]
    assert fields_bytes(flat) == 1000
    assert fields_bytes(dict(zip(flat[::2], flat[1::2], strict=True))) == 1000
    assert fields_bytes({b"k": b"d"}) == 0 and fields_bytes(None) == 0 and fields_bytes([]) == 0


def test_a_read_asks_for_the_batch_room_in_entries_and_about_max_bytes_of_them() -> None:
    """Before a read tells, an entry is a full run of 1 MiB; then the last read's frames and
    bytes per entry; never fewer than 1 entry, never more than READ_MAX."""
    from common.envelope import RUN_MAX
    from consumer.reads import ENTRY_BYTES_GUESS, READ_BYTES, READ_MAX, ReadSize

    size = ReadSize()
    assert size.count(10_000) == min(10_000 // RUN_MAX, READ_BYTES // ENTRY_BYTES_GUESS)
    size.observe(entries=10, frames=10, size=10 * 200)  # single frames of 200 B
    assert size.count(10_000) == READ_MAX and size.count(300) == 300 and size.count(0) == 1
    size.observe(entries=3, frames=7, size=3 * (8 << 20))  # runs of ~2.3 frames, 8 MiB each
    assert (size.frames_per_entry, size.count(10_000)) == (3, READ_BYTES // (8 << 20))
    size.observe(entries=4, frames=4, size=0)  # history: frames told, bytes not
    assert (size.frames_per_entry, size.bytes_per_entry) == (1, 8 << 20)
    size.observe(entries=0, frames=0, size=0)  # an empty read tells nothing
    assert (size.frames_per_entry, size.bytes_per_entry) == (1, 8 << 20)
    assert ReadSize(max_bytes=1).count(10_000) == 1  # a frame bigger than the bound: one a read
