"""The producer's exit status tells whether frames were lost, and its stop keeps one budget."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from common.envelope import raw_key
from common.servers import RedisServer
from tests.e2e.harness import Feed, pipeline, settle
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

FEEDS = [Feed("binance", ["BTC-USDT"])]


def test_a_stop_with_everything_written_exits_0(
    redis_url: str, database_url: str, work_dir: Path, redis_client: redis.Redis
) -> None:
    with pipeline(
        work=work_dir, redis_url=redis_url, database_url=database_url, feeds=FEEDS
    ) as p:  # fmt: skip
        p.simulator(rate=200, trades=100_000)
        producer = p.start_producer()
        wait_for(lambda: redis_client.xlen(raw_key("binance")) > 20, what="frames in the stream")
        started = time.monotonic()
        assert p.stop(producer) == 0, p.log("producer")
        assert time.monotonic() - started < 10


def test_without_a_spill_a_stop_with_redis_down_exits_5_within_its_budget(
    own_redis: RedisServer, database_url: str, work_dir: Path
) -> None:
    with pipeline(
        work=work_dir, redis_url=own_redis.url, database_url=database_url, feeds=FEEDS,
        producer={"stop_timeout_s": 2.0, "spill_dir": ""},  # no spill: memory only
    ) as p:  # fmt: skip
        p.simulator(rate=200, trades=100_000)
        producer = p.start_producer()
        client = redis.Redis.from_url(own_redis.url)
        wait_for(lambda: client.xlen(raw_key("binance")) > 20, what="frames in the stream")
        client.close()
        own_redis.stop()
        settle(1.0)  # frames arrive and wait in memory for a Redis that is gone
        started = time.monotonic()
        assert p.stop(producer) == 5, p.log("producer")
        assert time.monotonic() - started < 2.0 + 3.0
        log = p.log("producer")
        assert "frames unsent" in log and "lost" in log


def test_spill_segments_missing_at_start_make_the_exit_status_say_frames_were_lost(
    redis_url: str, database_url: str, work_dir: Path, redis_client: redis.Redis
) -> None:
    """Someone deleted a spill segment between two runs: what is left drains, in order, and the
    run ends with status 5 (how many frames went is unknown, that some did is not)."""
    from producer.spill import Record, Spill, encode_record

    key = raw_key("binance")
    frame = b'{"e":"trade","s":"BTCUSDT","t":1,"p":"1","q":"1","T":1,"m":true}'
    records = [Record(key, "binance", "", "c#1", i, 1_700_000_000_000_000_000 + i, False, frame)
               for i in range(1, 31)]  # fmt: skip
    directory = work_dir / "spill" / "exit-test"
    spill = Spill(directory, max_bytes=1 << 24, segment_bytes=10 * len(encode_record(records[0])))
    spill.open().append(records)  # segments 1..3 of ten frames
    spill.close()
    (directory / f"{2:016d}.seg").unlink()
    with pipeline(
        work=work_dir, redis_url=redis_url, database_url=database_url, feeds=FEEDS,
        producer={"name": "exit-test"},
    ) as p:  # fmt: skip
        producer = p.start_producer()
        wait_for(lambda: redis_client.xlen(key) >= 2, what="the spill drained")
        assert p.stop(producer) == 5, p.log("producer")
        log = p.log("producer")
        assert "segments 2..2 are missing" in log and "spill segments were missing" in log
