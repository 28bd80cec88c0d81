"""A venue that floods frames of 1 MiB (trades with a field nobody reads, under
``producer.max_frame_bytes``; one with a price that is not a number): the producer's memory
stays near its byte bound, not the frame count's (the sessions stop reading; TCP holds the rest
at the venue), the consumer reads a few entries at a time, every good trade is stored once, the
bad frame is dead-lettered whole with its reason, and nothing stays pending, though the first
consumer is SIGKILLed mid-flood (another claims what it held)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import psycopg
import pytest
import redis

from common.envelope import dead_key, raw_key
from tests.e2e.harness import Feed, pipeline
from tests.e2e.test_hostile import FakeBinance
from tests.waiting import wait_for

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
        if i == TRADES // 2:  # a big frame whose price is not a number: dead-lettered alone
            bad = {**trade, "t": 10**9, "p": "12abc"}
            out.append((json.dumps({"stream": "btcusdt@trade", "data": bad}).encode(), False))
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
            first = p.start_consumer("c1")
            producer = p.start_producer()
            p.wait_rows(10, timeout=60)
            first.send_signal(signal.SIGKILL)  # mid-flood, with big entries read and not acked
            first.wait(10)
            consumer = p.start_consumer("c2")  # claims c1's pending entries
            p.wait_rows(TRADES, timeout=90)
            producer_mb, consumer_mb = peak_rss_mb(producer.pid), peak_rss_mb(consumer.pid)
            assert fake.errors == [] and fake.sent == TRADES + 1
            wait_for(lambda: redis_client.xlen(dead_key("binance")) >= 1, what="the dead letter")
            # c1 may have died between a COMMIT and its XACK: its rows are in, its entries still
            # pending on it until c2 claims them (claim_idle_ms after c1's last touch) and acks
            wait_for(
                lambda: redis_client.xpending(raw_key("binance"), "tickvault")["pending"] == 0,
                what="c1's entries claimed and acked", timeout=30,
            )  # fmt: skip
        assert p.stop(producer) == 0, p.log("producer")  # nothing lost
        assert p.stop(consumer) == 0, p.log("consumer")
    # the frame whole, with its reason (twice if c1 died between dead-lettering and its ack:
    # dead letters are at least once (README: Dead letters); never another frame)
    letters = [fields for _, fields in redis_client.xrange(dead_key("binance"))]
    assert 1 <= len(letters) <= 2 and len({f[b"origin"] for f in letters}) == 1
    assert all(b"12abc" in f[b"f"] and f[b"reason"] for f in letters)
    assert redis_client.xpending(raw_key("binance"), "tickvault")["pending"] == 0  # all acked
    with psycopg.connect(database_url) as conn:
        ids = [int(r[0]) for r in conn.execute("SELECT trade_id FROM trades ORDER BY trade_id")]
    assert sorted(ids) == list(range(1, TRADES + 1))  # each good one once, the bad one not
    assert "dropped" not in p.log("producer")
    # 120 MiB went through each; neither held it all at once (the producer's frames wait in
    # 16 MiB at most, a round trip carries 8 MiB; the consumer's reads ask for ~64 MiB)
    assert producer_mb < 140, producer_mb  # (48 MB measured; 238 MB without the byte bounds)
    assert consumer_mb < 300, consumer_mb
