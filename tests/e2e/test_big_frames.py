"""A venue that floods frames of 1 MiB (each one a valid trade with a field nobody reads, under
``producer.max_frame_bytes``): the producer's memory stays near its byte bound, not the frame
count's (the sessions stop reading; TCP holds the rest at the venue), the consumer reads a few
entries at a time, and every trade is stored once, with nothing dropped or dead-lettered."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from common.envelope import dead_key
from tests.e2e.harness import Feed, pipeline
from tests.e2e.test_hostile import FakeBinance

pytestmark = pytest.mark.e2e

TRADES = 120
PAD = 1 << 20  # bytes of padding a frame


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def frames(now_ms: int) -> list[tuple[bytes, bool]]:
    out = []
    for i in range(1, TRADES + 1):
        trade = {
            "e": "trade", "E": now_ms, "s": "BTCUSDT", "t": i, "p": f"100.{i:03d}", "q": "0.5",
            "T": now_ms, "m": i % 2 == 0, "M": True, "pad": "x" * PAD,
        }  # fmt: skip
        out.append((json.dumps({"stream": "btcusdt@trade", "data": trade}).encode(), False))
    return out


def test_a_flood_of_big_frames_is_stored_whole_within_the_memory_bounds(
    redis_url: str, database_url: str, work_dir: Path, redis_client: redis.Redis
) -> None:
    with pipeline(
        work=work_dir, redis_url=redis_url, database_url=database_url,
        feeds=[Feed("binance", ["BTC-USDT"])],
        producer={"buffer_bytes": 16 << 20, "silence_s": 300},  # pauses past 1.6 MiB waiting
    ) as p:  # fmt: skip
        with FakeBinance(p.ports["binance"], frames(time.time_ns() // 1_000_000)) as fake:
            consumer = p.start_consumer("c1")
            producer = p.start_producer()
            p.wait_rows(TRADES, timeout=90)
            producer_mb, consumer_mb = peak_rss_mb(producer.pid), peak_rss_mb(consumer.pid)
            assert fake.errors == [] and fake.sent == TRADES
        assert p.stop(producer) == 0, p.log("producer")  # nothing lost
        assert p.stop(consumer) == 0, p.log("consumer")
    assert redis_client.xlen(dead_key("binance")) == 0
    assert "dropped" not in p.log("producer")
    # 120 MiB went through each; neither held it all at once (the producer's frames wait in
    # 16 MiB at most, a round trip carries 8 MiB; the consumer's reads ask for ~64 MiB)
    assert producer_mb < 140, producer_mb  # (48 MB measured; 238 MB without the byte bounds)
    assert consumer_mb < 300, consumer_mb
