"""SIGTERM while Redis or PostgreSQL is down: the consumer exits 0 within its one stop budget
(``consumer.stop_timeout_s``), and what it could not commit stays pending, so a fresh consumer
stores every trade exactly once once the server is back."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from common.envelope import raw_key
from tests.conftest import SLOW, Servers
from tests.e2e.harness import Feed, pipeline
from tests.e2e.test_pipeline import assert_exact, expected
from tests.waiting import redis_answers, wait_for

pytestmark = pytest.mark.e2e

STOP_TIMEOUT_S = 5.0
GRACE_S = 3.0  # exit within the budget plus this (process teardown, a last blocked read)


def _pending(client: redis.Redis, key: str, consumer: str | None = None) -> list[dict[str, Any]]:
    rows: Any = client.xpending_range(
        key, "tickvault", min="-", max="+", count=100_000, consumername=consumer
    )
    return list(rows)


@pytest.mark.parametrize("down", ["redis", "postgres"])
def test_sigterm_with_a_server_down_exits_in_budget_and_loses_nothing(
    down: str,
    servers: Servers,
    redis_url: str,
    database_url: str,
    work_dir: Path,
    redis_client: redis.Redis,
) -> None:
    server = servers.redis_server if down == "redis" else servers.postgres_server
    if server is None:
        pytest.skip(f"needs the embedded {down} (a server given by URL is not ours to stop)")
    n = 2000
    key = raw_key("binance")
    feeds = [Feed("binance", ["BTC-USDT"])]
    with pipeline(work=work_dir, redis_url=redis_url, database_url=database_url, feeds=feeds) as p:
        p.simulator(rate=400, trades=n)
        # c1 flushes once a second only, so it always has entries in hand when the server goes.
        consumer = p.start_consumer(
            "c1", stop_timeout_s=STOP_TIMEOUT_S, batch_ms=1000, flush_when_drained=False
        )
        producer = p.start_producer()
        p.wait_rows(300)
        log = p.work / "consumer-c1.log"
        logged = len(log.read_bytes())
        server.stop()
        try:
            # The consumer has met the outage (a read, a write or an ack failed): it holds
            # entries it cannot commit or ack.
            def met_outage() -> bool:
                p.check_alive()
                return b"failed" in log.read_bytes()[logged:]

            wait_for(met_outage, what=f"the consumer to meet the {down} outage")
            if down == "postgres":
                wait_for(lambda: _pending(redis_client, key, "c1"), what="c1 holding entries")
            started = time.monotonic()
            consumer.send_signal(signal.SIGTERM)
            budget = (STOP_TIMEOUT_S + GRACE_S) * SLOW
            try:
                status = consumer.wait(budget)
            except subprocess.TimeoutExpired:
                pytest.fail(f"no exit {budget:.0f} s after SIGTERM:\n{p.log('consumer-c1')}")
            took = time.monotonic() - started
            assert status == 0, p.log("consumer-c1")
            assert took <= budget, took
            if down == "postgres":
                # What c1 could not commit is still pending, its delivery given back.
                held = _pending(redis_client, key, "c1")
                assert held, "c1 acked entries it could not have committed"
                assert {row["times_delivered"] for row in held} == {0}, held[:3]
        finally:
            server.start()
        wait_for(lambda: redis_answers(redis_client), what="redis to finish loading its AOF")
        assert producer.poll() is None, p.log("producer")
        if down == "redis":
            assert _pending(redis_client, key, "c1"), "c1 held nothing it could not ack"

        # A fresh consumer (another name: c1's entries must be claimed) stores everything once.
        p.start_consumer("c2")
        p.wait_rows(n, timeout=60)
        wait_for(
            lambda: (
                not _pending(redis_client, key) and redis_client.xinfo_groups(key)[0]["lag"] == 0
            ),
            what="nothing pending, nothing unread",
        )
        assert_exact(p, expected("binance", ["BTC-USDT"], n))
        p.check_alive()
