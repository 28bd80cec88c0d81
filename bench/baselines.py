"""Baselines measured in the same run, for ratios. Not product code.

- naive consumer, shaped like the original design sketch: parse each entry with ``json``, one
  INSERT and one COMMIT per message, one XACK per entry;
- unbatched producer: one awaited XADD per frame (no pipelining), next to the product's Publisher
  on the same frames.
"""

from __future__ import annotations

import asyncio
import json
import time

import psycopg
import redis
import redis.asyncio as aioredis

from common.envelope import Envelope
from common.metrics import Metrics
from producer.publisher import Publisher
from producer.wire import RedisWire, XaddPacker

from .scenarios import KEY, Env, prefill, trade_frame


def naive_consumer(env: Env, n: int) -> float:
    """rows/s of the naive consumer over ``n`` prefilled entries (one frame each)."""
    prefill(env, n, run=1)
    r = redis.Redis.from_url(env.redis_url)
    r.xgroup_create(KEY, "naive", id="0")
    started = time.perf_counter()
    done = 0
    with psycopg.connect(env.database_url) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS naive_trades (exchange text, symbol text, trade_id text,"
            " price numeric, amount numeric, side text, ts timestamptz, recv_ts timestamptz,"
            " UNIQUE (exchange, symbol, trade_id))"
        )
        conn.execute("TRUNCATE naive_trades")
        conn.commit()
        while done < n:
            reply = r.xreadgroup("naive", "naive-1", {KEY: ">"}, count=100)
            for _, entries in reply or []:  # type: ignore[union-attr]
                for entry_id, fields in entries:
                    msg = json.loads(fields[b"f"])["data"]
                    conn.execute(
                        "INSERT INTO naive_trades VALUES ('binance', %s, %s, %s, %s, %s,"
                        " to_timestamp(%s / 1000.0), to_timestamp(%s / 1e9))"
                        " ON CONFLICT DO NOTHING",
                        (msg["s"], str(msg["t"]), msg["p"], msg["q"],
                         "sell" if msg["m"] else "buy", msg["T"], int(fields[b"t"])),
                    )  # fmt: skip
                    conn.commit()
                    r.xack(KEY, "naive", entry_id)
                    done += 1
        conn.execute("DROP TABLE naive_trades")
        conn.commit()
    r.close()
    return n / (time.perf_counter() - started)


def _frames(n: int) -> list[dict[bytes, bytes]]:
    now = time.time_ns()
    return [
        Envelope(
            trade_frame("BTCUSDT", i, now // 10**6), False, "binance", "", "b", i, now
        ).fields()
        for i in range(n)
    ]


async def _unbatched(url: str, frames: list[dict[bytes, bytes]]) -> float:
    client = aioredis.Redis.from_url(url)
    started = time.perf_counter()
    for fields in frames:
        await client.xadd(KEY, fields, maxlen=20_000_000, approximate=True)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    await client.aclose()
    return len(frames) / elapsed


async def _batched(url: str, frames: list[dict[bytes, bytes]]) -> float:
    pub = Publisher(
        RedisWire(url), buffer_frames=len(frames) + 1, pipeline_max=2000,
        metrics=Metrics("bench"), high_water=len(frames) + 1,
    )  # fmt: skip
    packer = XaddPacker(KEY, "binance", "", "b")
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(pub.run(stop))
    for i, fields in enumerate(frames):
        pub.put(packer, fields[b"f"], False, i, time.time_ns())
        if i % 500 == 0:
            await asyncio.sleep(0)  # frames arrive over time, as from a socket
    stop.set()
    await task
    elapsed = time.perf_counter() - started
    return len(frames) / elapsed


def producer_paths(env: Env, n: int) -> tuple[float, float]:
    """(unbatched XADD frames/s, Publisher frames/s) on the same in-memory frames."""
    frames = _frames(n)
    env.reset()
    unbatched = asyncio.run(_unbatched(env.redis_url, frames))
    env.reset()
    batched = asyncio.run(_batched(env.redis_url, frames))
    return unbatched, batched
