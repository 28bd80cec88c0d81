"""Against a real Redis and a real PostgreSQL: entries delivered to a worker whose reply was
lost with the connection (an XREADGROUP's, an XCLAIM's) are taken back and stored once, and a
group deleted under a claim is created again (tests/unit/test_worker_recovery.py has the rest)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import pytest
import redis

from common.config import settings_from_mapping
from common.envelope import raw_key
from consumer.reads import GroupReads
from consumer.store import Store
from consumer.worker import Worker
from tests.conftest import SLOW
from tests.integration.test_streams import frame  # a Binance trade entry, trade id i
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

KEY = raw_key("binance")
GROUP = "tickvault"
CLAIM_IDLE_MS = 200
SETTINGS = settings_from_mapping(
    {
        "consumer": {
            "batch_ms": 10, "block_ms": 50, "claim_idle_ms": CLAIM_IDLE_MS,
            "claim_every_s": 0.05,
        },
        "feeds": [{"exchange": "binance", "symbols": ["BTC-USDT"]}],
    },
    {},
)  # fmt: skip


class Until:
    """A stop flag: set once ``done()`` holds, or after 20 s x SLOW (the asserts say why)."""

    def __init__(self, done: Callable[[], bool]) -> None:
        self.done = done
        self.deadline = time.monotonic() + 20 * SLOW

    def is_set(self) -> bool:
        return self.done() or time.monotonic() > self.deadline


def run(client: redis.Redis, url: str, done: Callable[[Worker], bool], **options: Any) -> Worker:
    store = Store(url)
    worker = Worker.from_settings(
        SETTINGS, name="w1", streams=[KEY], redis_client=client, store=store, **options
    )
    try:
        worker.run(Until(lambda: done(worker)))
    finally:
        store.close()
    return worker


def pending(client: redis.Redis) -> int:
    return int(client.xpending(KEY, GROUP)["pending"])


def trade_ids(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return sorted(int(r[0]) for r in conn.execute("SELECT trade_id FROM trades"))


def run_until_taken_back(client: redis.Redis, url: str, caplog: pytest.LogCaptureFixture) -> Worker:
    """Run w1 until trades 1..3 are acked; each stored once, nothing pending, taken back."""
    worker = run(client, url, lambda w: w.metrics.counters["acked"] >= 3 and not pending(client))
    assert trade_ids(url) == [1, 2, 3]
    assert pending(client) == 0
    assert "took back 3 entries of ours" in caplog.text
    assert worker.metrics.counters["rows_duplicate"] == 0  # written once
    return worker


def test_entries_whose_read_reply_was_lost_are_taken_back_and_stored_once(
    redis_client: redis.Redis,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The XREADGROUP goes out on the worker's own socket and runs (the entries are w1's), but
    the connection drops before its reply is read: the worker reads on with ``>`` and would
    never see them again while it lives."""
    redis_client.xgroup_create(KEY, GROUP, id="0", mkstream=True)
    for i in range(1, 4):
        redis_client.xadd(KEY, frame(i))
    real = GroupReads._exchange
    lost: list[int] = []

    def exchange(self: GroupReads, commands: Sequence[Any], payload: bytes, *more: Any) -> None:
        if not lost and any(c[0] == "XREADGROUP" and c[-1] == ">" for c in commands):
            assert self._sock is not None
            self._sock.sendall(payload)
            lost.append(wait_for(lambda: pending(redis_client), what="the read to deliver"))
            raise redis.ConnectionError("connection reset by peer")  # the reply is never read
        real(self, commands, payload, *more)

    monkeypatch.setattr(GroupReads, "_exchange", exchange)
    started = time.monotonic()
    run_until_taken_back(redis_client, database_url, caplog)
    assert lost == [3]
    assert time.monotonic() - started >= CLAIM_IDLE_MS / 1000  # taken back once idle that long


def test_entries_whose_claim_reply_was_lost_are_taken_back_and_stored_once(
    redis_client: redis.Redis,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis_client.xgroup_create(KEY, GROUP, id="0", mkstream=True)
    for i in range(1, 4):
        redis_client.xadd(KEY, frame(i))
    redis_client.xreadgroup(GROUP, "crashed", {KEY: ">"})  # read, then the consumer died
    real = redis_client.xclaim
    lost: list[int] = []

    def xclaim(*args: Any, **kwargs: Any) -> Any:
        got = real(*args, **kwargs)
        if got and not lost and not kwargs.get("justid"):
            lost.append(len(got))  # they are w1's now; the reply is lost
            raise redis.ConnectionError("connection reset by peer")
        return got

    monkeypatch.setattr(redis_client, "xclaim", xclaim)
    worker = run_until_taken_back(redis_client, database_url, caplog)
    assert lost == [3]
    assert worker.metrics.counters["retries:claim"] == 1


def test_a_claim_that_finds_the_group_gone_creates_it_again(
    redis_client: redis.Redis, database_url: str
) -> None:
    """Once trade 1 is acked, the stream is deleted (as by a FLUSHDB, or a Redis restarted
    without its data) and the producer's next XADD makes it again, without the group. The
    claim, which comes before the read in the loop, meets NOGROUP first."""
    redis_client.xgroup_create(KEY, GROUP, id="0", mkstream=True)
    redis_client.xadd(KEY, frame(1))
    deleted: list[bool] = []

    def done(w: Worker) -> bool:
        if w.metrics.counters["acked"] >= 1 and not deleted:
            deleted.append(redis_client.delete(KEY) == 1)
            redis_client.xadd(KEY, frame(2))
        return w.metrics.counters["acked"] >= 2

    worker = run(redis_client, database_url, done, claim_every_s=0.0, stop_timeout_s=1.0)
    assert deleted == [True]
    assert trade_ids(database_url) == [1, 2]
    assert [g["name"] for g in redis_client.xinfo_groups(KEY)] == [GROUP.encode()]
    assert pending(redis_client) == 0
    assert worker.metrics.counters["retries:claim"] >= 1
    assert "retries:read" not in worker.metrics.counters
