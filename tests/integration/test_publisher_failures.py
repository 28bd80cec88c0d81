"""The publisher when Redis fails at the wrong moment: while it is idle with retention on, while
a stream or group is deleted, while a probe meets a server that does not answer, when Redis
refuses for good, and at a stop without a spill. None of these ends the loop but a refusal, and
none loses a frame the spill has room for."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from common.envelope import decode_entry, raw_key
from common.errors import FatalError
from common.metrics import Metrics
from common.servers import RedisServer, free_port
from producer.publisher import Publisher
from producer.retention import Retention
from producer.spill import Record, Spill
from producer.wire import RedisWire, XaddPacker
from tests.conftest import SLOW

pytestmark = pytest.mark.integration

KEY = raw_key("binance")
PACKER = XaddPacker(KEY, "binance", "", "c#1")


def body(i: int) -> bytes:
    return b'{"e":"trade","s":"BTCUSDT","t":%d,"p":"1","q":"1","T":1,"m":true}' % i


def put(pub: Publisher, i: int) -> None:
    assert pub.put(PACKER, body(i), False, i, 1_700_000_000_000_000_000 + i)


async def until(check: Callable[[], object], within: float = 10.0, what: str = "") -> None:
    """Poll ``check`` on the event loop (the publisher runs meanwhile)."""
    deadline = time.monotonic() + within * SLOW
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within * SLOW:g} s waiting for {what}")
        await asyncio.sleep(0.01)


def seqs_in_stream(client: redis.Redis) -> list[int]:
    return [env.seq for _, f in client.xrange(KEY) for env in decode_entry(dict(f))]


def with_retention(url: str, spill: Spill | None, metrics: Metrics) -> Publisher:
    """Retention on (``redis.retention``): it asks Redis about the stream at every tick."""
    return Publisher(
        RedisWire(url), buffer_frames=10_000, pipeline_max=500, metrics=metrics,
        retention_s=3600.0, trim_every_s=0.02, spill=spill,
    )  # fmt: skip


def test_redis_lost_while_idle_with_retention_is_retried_and_nothing_is_lost(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    """The retention tick of an idle publisher meets a Redis that went away: Redis counts as
    away (frames go to the spill), the loop goes on, and all arrive once it is back."""
    spill = Spill(tmp_path / "spill", max_bytes=1 << 24).open()
    metrics = Metrics("producer")
    pub = with_retention(own_redis.url, spill, metrics)
    client = redis.Redis.from_url(own_redis.url)

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop, drain_budget_s=1.0))
        put(pub, 1)
        await until(lambda: metrics.counters["published"] == 1, what="frame 1 sent")
        client.xgroup_create(KEY, "g", id="$")
        await until(lambda: metrics.counters["trims"] >= 1, what="retention ticking")
        await asyncio.to_thread(own_redis.stop)
        await until(lambda: metrics.gauges["redis_away"] or task.done(), what="redis away")
        assert not task.done(), task.exception()
        for i in range(2, 11):
            put(pub, i)
        await until(lambda: pub.spilled == 9, what="frames spilled")
        await asyncio.to_thread(own_redis.start)
        await until(lambda: not pub.spilled and not metrics.gauges["redis_away"], what="drained")
        stop.set()
        await task

    asyncio.run(run())
    assert seqs_in_stream(client) == list(range(1, 11)) and pub.lost == 0
    client.close()


def test_a_deleted_stream_is_nothing_to_trim_not_a_refusal(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream deleted under an idle publisher (DEL, FLUSHALL, a Redis restarted without its
    data): XINFO GROUPS answers ``ERR no such key``, which is no reason to stop."""
    metrics = Metrics("producer")
    pub = with_retention(redis_url, None, metrics)

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop, drain_budget_s=1.0))
        put(pub, 1)
        await until(lambda: metrics.counters["published"] == 1, what="frame 1 sent")
        redis_client.xgroup_create(KEY, "g", id="$")
        await until(lambda: metrics.counters["trims"] >= 1, what="retention ticking")
        redis_client.delete(KEY)
        await until(lambda: "stream is gone" in caplog.text or task.done(), what="the tick")
        assert not task.done(), task.exception()
        put(pub, 2)
        await until(lambda: metrics.counters["published"] == 2, what="frame 2 sent")
        stop.set()
        await task

    with caplog.at_level(logging.INFO, logger="producer"):
        asyncio.run(run())
    assert seqs_in_stream(redis_client) == [2]
    assert metrics.counters["redis_errors"] == 0 and pub.lost == 0


def test_a_group_deleted_between_xinfo_and_xpending_is_nothing_to_trim(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    class DestroyFirst(RedisWire):
        """Deletes the group just before the XPENDING that asks about it: NOGROUP."""

        async def execute(self, payload: bytes, count: int) -> list[object]:
            if b"XPENDING" in payload:
                redis_client.xgroup_destroy(KEY, "g")
            return await super().execute(payload, count)

    entry = redis_client.xadd(KEY, {"f": "1"})
    redis_client.xgroup_create(KEY, "g", id="0")
    redis_client.xreadgroup("g", "c", {KEY: ">"}, count=1)  # one pending: XPENDING is asked
    metrics = Metrics("producer")
    retention = Retention(
        DestroyFirst(redis_url), metrics, max_frames=0, max_age_s=1.0, every_s=0.0
    )
    retention.add(KEY, entry, 1)

    async def tick() -> None:
        try:
            await retention.tick()
        finally:
            await retention.wire.close()

    with caplog.at_level(logging.INFO, logger="producer"):
        asyncio.run(tick())
    assert "consumer group is gone" in caplog.text
    assert metrics.counters["trims"] == 0 and redis_client.xlen(KEY) == 1


def test_feeds_paused_at_high_water_read_again_once_memory_goes_to_the_spill(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """Redis up, the spill draining: memory goes to the spill (order), and the sessions paused
    at ``high_water`` are woken as it empties, not only by frames sent from memory."""
    spill = Spill(tmp_path / "spill", max_bytes=1 << 24).open()
    old = [Record(KEY, "binance", "", "c#1", i, i, False, body(i)) for i in range(1, 1001)]
    assert spill.append(old) == 1000
    metrics = Metrics("producer")
    pub = Publisher(
        RedisWire(redis_url), buffer_frames=10_000, pipeline_max=100, metrics=metrics,
        high_water=100, spill=spill,
    )  # fmt: skip

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop, drain_budget_s=1.0))
        for i in range(1001, 1101):
            put(pub, i)
        assert pub.full  # a session pauses here
        await asyncio.wait_for(pub.room(), 2.0 * SLOW)
        await until(lambda: not pub.spilled and not pub.buffered, what="all sent")
        stop.set()
        await task

    asyncio.run(run())
    assert seqs_in_stream(redis_client) == list(range(1, 1101)) and pub.lost == 0


def test_a_probe_that_gets_no_answer_does_not_keep_frames_from_the_spill(tmp_path: Path) -> None:
    """Redis goes away, then takes connections and answers nothing (stopped, a hung host
    behind a proxy): frames go on to the spill while a probe waits (the wire's timeout, 10 s
    by default, here 1.5 s), and a probe given up is followed by a fresh one."""
    connections: list[asyncio.StreamWriter] = []

    async def redis_then_silence(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        connections.append(w)
        if len(connections) == 1:
            await reader.read(1 << 16)  # the connection's PING
            w.write(b"+PONG\r\n")
            await reader.read(1 << 16)  # the first XADD: gone without an answer
            w.close()
        # later ones: held open, never answered

    async def run() -> tuple[Publisher, Spill, float]:
        server = await asyncio.start_server(redis_then_silence, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        spill = Spill(tmp_path / "spill", max_bytes=1 << 24).open()
        pub = Publisher(
            RedisWire(f"redis://127.0.0.1:{port}/0", timeout=1.5), buffer_frames=10_000,
            pipeline_max=100,
            metrics=Metrics("producer"), spill=spill,
        )  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop, drain_budget_s=1.0))
        await until(lambda: connections, what="connected")
        put(pub, 1)
        await until(lambda: len(connections) == 2, what="the first probe")
        for i in range(2, 52):
            put(pub, i)
            await asyncio.sleep(0)
        await until(lambda: pub.spilled == 51, within=0.5, what="frames spilled mid-probe")
        assert pub.buffered == 0
        await until(lambda: len(connections) >= 3, within=4.0, what="a second probe")
        started = time.monotonic()
        stop.set()
        await task
        for w in connections:
            w.close()
        server.close()
        await server.wait_closed()
        return pub, spill, time.monotonic() - started

    pub, spill, stopping = asyncio.run(run())
    assert spill.records == 51 and pub.lost == 0
    assert stopping < 0.5 * SLOW  # a stop with a spill waits for no probe


@pytest.mark.parametrize("with_spill", [True, False])
def test_a_refusal_keeps_the_frames_in_memory_in_the_spill(
    tmp_path: Path, own_redis: RedisServer, with_spill: bool
) -> None:
    """NOPERM on XADD stops the publisher (FatalError); the frames in memory go to the spill
    first and the next start sends them. Without a spill they are counted unsent."""
    client = redis.Redis.from_url(own_redis.url)
    spill = Spill(tmp_path / "spill", max_bytes=1 << 24).open() if with_spill else None
    metrics = Metrics("producer")
    pub = Publisher(
        RedisWire(own_redis.url), buffer_frames=10_000, pipeline_max=100, metrics=metrics,
        spill=spill,
    )  # fmt: skip

    async def run() -> None:
        task = asyncio.create_task(pub.run(asyncio.Event()))
        await until(lambda: pub.wire.connected, what="connected")
        client.execute_command("ACL", "SETUSER", "default", "-xadd")
        for i in range(1, 51):
            put(pub, i)
        with pytest.raises(FatalError) as info:
            await asyncio.wait_for(task, 5.0 * SLOW)
        assert info.value.code == "NOPERM"

    asyncio.run(run())
    client.execute_command("ACL", "SETUSER", "default", "+xadd")
    if spill is None:
        assert metrics.counters["unsent_at_stop"] == 50 and pub.lost == 50
        return
    assert spill.records == 50 and pub.buffered == 0 and pub.lost == 0
    spill.close()
    again = Spill(tmp_path / "spill", max_bytes=1 << 24).open()
    pub = Publisher(
        RedisWire(own_redis.url), buffer_frames=10_000, pipeline_max=100,
        metrics=Metrics("producer"), spill=again,
    )  # fmt: skip

    async def next_start() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop, drain_budget_s=1.0))
        await until(lambda: not again, what="the spill drained")
        stop.set()
        await task

    asyncio.run(next_start())
    assert seqs_in_stream(client) == list(range(1, 51))
    client.close()


def test_a_stop_without_a_spill_waits_for_redis_without_spinning() -> None:
    """No spill, Redis away, a frame in memory: the stop waits for the next probe or its
    deadline asleep, not in a loop that holds the CPU (and the event loop)."""
    metrics = Metrics("producer")
    pub = Publisher(
        RedisWire(f"redis://127.0.0.1:{free_port()}/0"), buffer_frames=1000, pipeline_max=100,
        metrics=metrics,
    )  # fmt: skip

    async def run() -> tuple[float, float]:
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop, drain_budget_s=1.0))
        put(pub, 1)
        await until(lambda: metrics.counters["redis_errors"], what="redis away")
        cpu, wall = time.process_time(), time.monotonic()
        stop.set()
        await task
        return time.process_time() - cpu, time.monotonic() - wall

    cpu, wall = asyncio.run(run())
    assert wall >= 0.9 and cpu < 0.3 * wall, (cpu, wall)
    assert metrics.counters["unsent_at_stop"] == 1


def test_frames_the_spill_lost_at_open_are_counted_though_nothing_drains(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    """A spill whose only record is damaged (a whole record, its checksum wrong) is empty once
    open: nothing is ever taken from it, yet its loss reaches the metrics (exit status 5)."""
    from producer.spill import HEADER, encode_record

    directory = tmp_path / "spill"
    directory.mkdir()
    data = bytearray(
        encode_record(Record(KEY, "binance", "", "c#1", 1, 1_700_000_000 * 10**9, False, body(1)))
    )
    data[HEADER.size + 2] ^= 0x01
    (directory / "0000000000000001.seg").write_bytes(bytes(data))
    spill = Spill(directory, max_bytes=1 << 24).open()
    assert not spill
    metrics = Metrics("producer")
    pub = Publisher(
        RedisWire(own_redis.url), buffer_frames=100, pipeline_max=100, metrics=metrics, spill=spill
    )

    async def run() -> None:
        stop = asyncio.Event()
        stop.set()
        await pub.run(stop, drain_budget_s=1.0)

    asyncio.run(run())
    spill.close()
    assert pub.lost == 1 and metrics.counters["spill_dropped"] == 1
