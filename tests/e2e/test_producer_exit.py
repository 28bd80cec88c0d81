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
