"""Nothing lost when Redis, the producer or the consumers fail: the producer's disk spill, Redis
probed as soon as it is away, and retention that waits for the consumers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from common.envelope import decode_entry, raw_key
from common.servers import RedisServer
from tests.conftest import SLOW
from tests.e2e.harness import Feed, Pipeline, pipeline, settle
from tests.e2e.test_pipeline import assert_exact, expected
from tests.waiting import redis_answers, wait_for

pytestmark = pytest.mark.e2e

KEY = raw_key("binance")
FEEDS = [Feed("binance", ["BTC-USDT"])]


def _spilled_bytes(p: Pipeline) -> int:
    return sum(f.stat().st_size for f in (p.work / "spill").glob("*/*.seg"))


def _settled(measure: Callable[[], int]) -> Callable[[], bool]:
    """True once ``measure()`` is positive and the same as at the previous call."""
    seen = [-1]

    def check() -> bool:
        now, seen[0] = measure(), seen[0]
        same = now == seen[0] and now > 0
        seen[0] = now
        return same

    return check


def _stream_trade_ids(client: redis.Redis) -> set[int]:
    ids = set()
    for _, fields in client.xrange(KEY):
        for env in decode_entry(dict(fields)):
            event = json.loads(env.frame)
            event = event.get("data", event)
            if event.get("e") == "trade":
                ids.add(int(event["t"]))
    return ids


def _stream_frames(client: redis.Redis) -> int:
    return sum(len(decode_entry(dict(f))) for _, f in client.xrange(KEY))


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_producer_stopped_while_redis_is_down_keeps_every_frame_in_its_spill(
    how: str, own_redis: RedisServer, database_url: str, work_dir: Path
) -> None:
    n = 1500
    with pipeline(
        work=work_dir, redis_url=own_redis.url, database_url=database_url, feeds=FEEDS,
        producer={"spill_fsync": "always"},
    ) as p:  # fmt: skip
        client = redis.Redis.from_url(own_redis.url)
        consumer = p.start_consumer()
        producer = p.start_producer()
        p.simulator(rate=300, trades=n)
        p.wait_rows(100)
        own_redis.stop()
        # the simulator sends its last trades into the outage: they go to the spill
        settle(n / 300 + 1.0)
        wait_for(_settled(lambda: _spilled_bytes(p)), what="the spill to settle")
        if how == "SIGKILL":
            producer.kill()  # what was appended is in the kernel: a SIGKILL loses none of it
            producer.wait(10)
        else:
            assert p.stop(producer, timeout=10 * SLOW) == 0, p.log("producer")
        own_redis.start()
        wait_for(lambda: redis_answers(client), what="redis to load its AOF")
        p.start_producer()  # drains the spill its predecessor left, before anything new
        p.wait_rows(n, timeout=60)
        assert_exact(p, expected("binance", ["BTC-USDT"], n))
        assert "from an earlier run: draining them first" in p.log("producer")
        wait_for(lambda: _spilled_bytes(p) == 0, what="the drained spill to be removed")
        assert consumer.poll() is None
        client.close()


def test_redis_back_after_25_s_is_written_to_within_2_s_without_a_stop(
    own_redis: RedisServer, database_url: str, work_dir: Path
) -> None:
    n = 4000
    with pipeline(
        work=work_dir, redis_url=own_redis.url, database_url=database_url, feeds=FEEDS,
        producer={"backoff_max_s": 30},  # the exchange backoff: not what Redis is probed at
    ) as p:  # fmt: skip
        client = redis.Redis.from_url(own_redis.url)
        p.start_consumer()
        producer = p.start_producer()
        p.simulator(rate=120, trades=n)
        p.wait_rows(100)
        own_redis.stop()
        settle(25.0)
        own_redis.start()
        back = time.monotonic()
        wait_for(lambda: redis_answers(client), what="redis to load its AOF")
        before = client.xinfo_stream(KEY)["last-generated-id"]
        wait_for(
            lambda: client.xinfo_stream(KEY)["last-generated-id"] != before,
            timeout=5 * SLOW,
            what="the producer's first XADD after the outage",
        )
        assert time.monotonic() - back <= 2.0 * SLOW
        p.wait_rows(n, timeout=90)  # the backlog, stored with nothing stopped
        assert producer.poll() is None
        assert_exact(p, expected("binance", ["BTC-USDT"], n))
        client.close()


def test_retention_never_trims_what_the_consumers_have_not_acked(
    redis_url: str, database_url: str, work_dir: Path, redis_client: redis.Redis
) -> None:
    n, maxlen = 3000, 300
    with pipeline(
        work=work_dir, redis_url=redis_url, database_url=database_url, feeds=FEEDS,
    ) as p:  # fmt: skip
        p.config.write_text(p.config.read_text().replace("[redis]", f"[redis]\nmaxlen = {maxlen}"))
        consumer = p.start_consumer()
        p.start_producer()
        p.simulator(rate=1000, trades=n)
        p.wait_rows(50)
        assert p.stop(consumer) == 0  # the consumers are away while 10 x maxlen frames arrive
        settle(n / 1000 + 1.0)
        wait_for(_settled(lambda: _stream_frames(redis_client)), what="the last frames")
        settle(2.0)  # trims are tried every second: none may pass the group
        stored = {int(r[0]) for r in p.query("SELECT trade_id FROM trades")}
        unread = set(range(1, n + 1)) - stored
        assert len(unread) > 5 * maxlen
        assert unread <= _stream_trade_ids(redis_client)  # nothing unacked was trimmed
        assert "consumers are behind" in p.log("producer")
        p.start_consumer("c2")
        p.wait_rows(n, timeout=60)
        assert_exact(p, expected("binance", ["BTC-USDT"], n))
        # all acked: the stream shrinks back to about its window (whole seconds of frames)
        wait_for(lambda: _stream_frames(redis_client) <= maxlen + 1000, what="the trim")
        assert redis_client.xpending(KEY, "tickvault")["pending"] == 0
