"""The publisher with its spill while Redis is away, and when it comes back: order kept, a full
spill blocks the feeds or drops its oldest frames (counted as lost), a stop loses nothing."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest
import redis

from common.config import ProducerSettings
from common.envelope import decode_entry, raw_key
from common.metrics import Metrics
from common.servers import RedisServer, free_port
from producer.publisher import Publisher
from producer.spill import Record, Spill, encode_record
from producer.wire import RedisWire, XaddPacker

pytestmark = pytest.mark.integration

KEY = raw_key("binance")
PACKER = XaddPacker(KEY, "binance", "", "c#1")


def body(i: int) -> bytes:
    return b'{"e":"trade","s":"BTCUSDT","t":%d,"p":"1","q":"1","T":1,"m":true}' % i


def make(url: str, spill: Spill | None, metrics: Metrics, **kw: int) -> Publisher:
    """A publisher lingering as a producer does by default (``producer.linger_ms``): frames
    that wait for company when Redis goes away go to the spill like the others."""
    defaults = ProducerSettings()
    return Publisher(
        RedisWire(url, timeout=0.5), buffer_frames=kw.get("buffer", 100_000), pipeline_max=500,
        metrics=metrics, high_water=kw.get("high_water", 20_000), spill=spill,
        linger_ms=defaults.linger_ms, linger_frames=defaults.linger_frames,
    )  # fmt: skip


async def feed(pub: Publisher, frames: range, *, stop_after: bool = True) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(pub.run(stop, drain_budget_s=1.0))
    for i in frames:
        pub.put(PACKER, body(i), False, i, 1_700_000_000_000_000_000 + i)
        if i % 50 == 0:
            await asyncio.sleep(0.001)
    await asyncio.sleep(0.05)
    stop.set()
    await task


def seqs_in_stream(client: redis.Redis) -> list[int]:
    return [env.seq for _, f in client.xrange(KEY) for env in decode_entry(dict(f))]


def test_frames_spilled_while_redis_is_away_arrive_in_order_after_it_returns(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens
    metrics = Metrics("producer")
    spill = Spill(tmp_path, max_bytes=1 << 24).open()
    asyncio.run(feed(make(down, spill, metrics), range(1, 1001)))
    assert spill.records == 1000 and metrics.counters["unsent_at_stop"] == 0
    spill.close()
    # the next start, Redis back: the spill goes first, then what arrives now, in order
    again = Spill(tmp_path, max_bytes=1 << 24).open()
    metrics = Metrics("producer")
    pub = make(redis_url, again, metrics)
    asyncio.run(feed(pub, range(1001, 1201)))
    assert seqs_in_stream(redis_client) == list(range(1, 1201))
    assert metrics.counters["spill_drained"] >= 1000 and pub.lost == 0
    assert not again and list(tmp_path.glob("*.seg")) == []


def test_a_full_spill_blocks_the_feeds(tmp_path: Path) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    size = len(encode_record(_record(1)))
    spill = Spill(tmp_path, max_bytes=100 * size).open()
    metrics = Metrics("producer")
    pub = make(down, spill, metrics, buffer=300)

    async def run() -> bool:
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop, drain_budget_s=0.5))
        blocked = False
        for i in range(1, 501):
            pub.put(PACKER, body(i), False, i, 1_700_000_000_000_000_000 + i)
            await asyncio.sleep(0.001 if i % 10 == 0 else 0)  # the publisher gets its turns
            blocked = blocked or pub.full
        stop.set()
        await task
        return blocked

    assert asyncio.run(run())  # sessions are told to stop reading
    assert spill.records <= 100
    assert pub.lost == metrics.counters["dropped"] + metrics.counters["unsent_at_stop"] > 0


def test_a_full_spill_under_drop_oldest_keeps_the_newest_and_counts_the_loss(
    tmp_path: Path,
) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    size = len(encode_record(_record(1)))
    spill = Spill(tmp_path, max_bytes=100 * size, segment_bytes=10 * size, drop_oldest=True)
    spill.open()
    metrics = Metrics("producer")
    pub = make(down, spill, metrics)
    asyncio.run(feed(pub, range(1, 501)))
    assert metrics.counters["spill_dropped"] > 0 and pub.lost == metrics.counters["spill_dropped"]
    kept = []
    while got := spill.take(100):
        kept += [r.seq for r in got]
        spill.consume(len(got))
    assert kept == list(range(501 - len(kept), 501))  # the newest, in order
    assert metrics.counters["spill_dropped"] + len(kept) == 500


def _record(i: int) -> Record:
    return Record(KEY, "binance", "", "c#1", i, 1_700_000_000_000_000_000 + i, False, body(i))


@pytest.mark.parametrize("behind_by", ["frames", "bytes"])
def test_a_stalled_redis_counts_as_away_and_the_frames_go_to_the_spill(
    tmp_path: Path, behind_by: str
) -> None:
    """A server that takes the connection and never answers (a stall: a fork, a disk): with
    ``high_water`` frames waiting (or a tenth of ``buffer_bytes`` in big frames), the publisher
    gives up on it after STALL_S and spills."""
    by_bytes = behind_by == "bytes"

    def frame(i: int) -> bytes:
        return body(i)[:-1] + b',"pad":"' + b"x" * (100 << 10) + b'"}' if by_bytes else body(i)

    async def run() -> tuple[int, int]:
        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 16)  # the connection's PING: answered, so it is up
            writer.write(b"+PONG\r\n")
            while await reader.read(1 << 16):
                pass  # then reads everything and answers nothing
            writer.close()

        server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        spill = Spill(tmp_path, max_bytes=1 << 30).open()
        metrics = Metrics("producer")
        pub = Publisher(
            RedisWire(f"redis://127.0.0.1:{port}/0", timeout=30.0), buffer_frames=10_000,
            pipeline_max=100, metrics=metrics, high_water=10_000 if by_bytes else 50,
            spill=spill, buffer_bytes=64 << 20,  # high water: 6.4 MiB, 64 of the big frames
        )  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop, drain_budget_s=0.5))
        for i in range(1, 201):
            assert pub.put(PACKER, frame(i), False, i, 1_700_000_000_000_000_000 + i)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if spill.records == 200:
                break
        spilled, buffered = spill.records, pub.buffered
        assert metrics.counters["round_trips"] == 0 and metrics.counters["redis_errors"] == 1
        stop.set()
        await task
        server.close()
        await server.wait_closed()
        return spilled, buffered

    spilled, buffered = asyncio.run(run())
    assert (spilled, buffered) == (200, 0)  # all of them, the ones in flight first (in order)


def test_a_disk_that_refuses_the_spill_keeps_the_frames_in_memory_and_loses_none(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis away and the spill's disk full (ENOSPC): the publisher does not stop; the frames
    wait in memory and the feeds are told to stop reading, as with a full spill; once the disk
    has room they go to the spill, and the next start sends every one, in order, once."""
    down = f"redis://127.0.0.1:{free_port()}/0"
    spill = Spill(tmp_path, max_bytes=1 << 24).open()
    metrics = Metrics("producer")
    pub = make(down, spill, metrics)
    real_write = os.write
    disk_full = True

    def write(fd: int, data: bytes | memoryview) -> int:
        if disk_full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr("producer.spill.os.write", write)

    async def run() -> tuple[bool, int, int]:
        nonlocal disk_full
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop, drain_budget_s=1.0))
        for i in range(1, 301):
            pub.put(PACKER, body(i), False, i, 1_700_000_000_000_000_000 + i)
            if i % 50 == 0:
                await asyncio.sleep(0.001)
        await asyncio.sleep(0.3)
        assert not task.done()  # not stopped by the disk
        blocked, in_memory = pub.full, pub.buffered
        assert metrics.gauges["spill_blocked"] == 1 and metrics.gauges["redis_away"] == 1
        disk_full = False  # room again: the next probe spills them
        for _ in range(100):
            await asyncio.sleep(0.05)
            if spill.records == 300:
                break
        in_spill = spill.records
        stop.set()
        await task
        return blocked, in_memory, in_spill

    blocked, in_memory, in_spill = asyncio.run(run())
    assert blocked and in_memory == 300 and in_spill == 300
    assert metrics.counters["spill_write_errors"] == 1 and pub.lost == 0
    assert not pub.full and metrics.gauges["spill_blocked"] == 0  # the feeds read again
    spill.close()
    monkeypatch.undo()
    again = Spill(tmp_path, max_bytes=1 << 24).open()
    metrics = Metrics("producer")
    pub = make(redis_url, again, metrics)
    asyncio.run(feed(pub, range(301, 311)))
    assert seqs_in_stream(redis_client) == list(range(1, 311)) and again.torn == 0
    assert metrics.gauges["redis_away"] == 0 and metrics.gauges["spill_blocked"] == 0


def test_an_unreadable_segment_is_lost_counted_and_the_rest_drains(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """A spill segment that cannot be read when its turn comes (deleted under the producer, a
    disk error): its frames are counted lost (the exit status and FramesLost say so) and the
    next ones arrive; no retry for ever with everything newer waiting behind it."""
    size = len(encode_record(_record(1)))
    spill = Spill(tmp_path, max_bytes=1 << 24, segment_bytes=10 * size).open()
    assert spill.append([_record(i) for i in range(1, 31)]) == 30  # three segments of ten
    sorted(tmp_path.glob("*.seg"))[1].unlink()  # frames 11..20
    metrics = Metrics("producer")
    pub = make(redis_url, spill, metrics)
    asyncio.run(feed(pub, range(31, 41)))
    assert seqs_in_stream(redis_client) == [*range(1, 11), *range(21, 41)]
    assert metrics.counters["spill_dropped"] == 10 and pub.lost == 10
    assert not spill and metrics.counters["redis_errors"] == 0  # not taken for Redis away


def test_a_spill_that_drains_unblocks_the_feeds_and_says_so(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    """Redis away and the spill full: the feeds are blocked (the gauge FeedsBlocked reads);
    Redis back: the spill drains, the feeds read again and the gauges say so."""
    size = len(encode_record(_record(1)))
    spill = Spill(tmp_path / "spill", max_bytes=50 * size).open()
    metrics = Metrics("producer")
    pub = make(own_redis.url, spill, metrics)
    client = redis.Redis.from_url(own_redis.url)

    async def run() -> tuple[int, int, int, int]:
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop, drain_budget_s=1.0))
        await asyncio.sleep(0.2)  # connected
        await asyncio.to_thread(own_redis.stop)
        for i in range(1, 101):
            pub.put(PACKER, body(i), False, i, 1_700_000_000_000_000_000 + i)
            await asyncio.sleep(0.002)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if metrics.gauges["spill_blocked"]:
                break
        blocked = (int(metrics.gauges["spill_blocked"]), int(metrics.gauges["redis_away"]))
        await asyncio.to_thread(own_redis.start)
        for _ in range(200):
            await asyncio.sleep(0.05)
            if not pub.spilled and not pub.buffered:
                break
        after = (int(metrics.gauges["spill_blocked"]), int(metrics.gauges["redis_away"]))
        stop.set()
        await task
        return (*blocked, *after)

    assert asyncio.run(run()) == (1, 1, 0, 0)
    seqs = [env.seq for _, f in client.xrange(KEY) for env in decode_entry(dict(f))]
    assert seqs == list(range(1, 101)) and pub.lost == 0
    client.close()
