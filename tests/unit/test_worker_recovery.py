"""The worker recovering what would otherwise be stranded (fakeredis and an in-memory store):
entries delivered to it whose reply was lost (a read's, a claim's), a group deleted under a claim
or a lease renewal, and the neighbours of an entry handled alone when it kills the process. The
lost replies and the deleted group run against a real Redis in tests/integration too."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import fakeredis
import pytest
import redis

from common.records import Quote, Trade
from consumer.reads import GroupReads
from tests.conftest import SLOW
from tests.unit.test_worker_failures import (
    GROUP,
    KEY,
    MemoryStore,
    When,
    deliver,
    frame,
    make,
    pending,
)

DEADLINE_S = 5.0  # x SLOW: far more than any of these needs; a failure ends the run there
TOOK_BACK_3 = "took back 3 entries of ours"  # the worker's warning


class Killed(BaseException):
    """Stands for a SIGKILL, an OOM kill or a segfault while a frame is processed."""


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    client = fakeredis.FakeRedis()
    client.xgroup_create(KEY, GROUP, id="0", mkstream=True)
    return client


def until(done: Callable[[], bool]) -> When:
    """A stop flag set once ``done()`` holds, or at the deadline (the asserts then say why)."""
    deadline = time.monotonic() + DEADLINE_S * SLOW
    return When(lambda: done() or time.monotonic() > deadline)


def _ids(reply: Any) -> list[str]:
    pairs = reply.items() if isinstance(reply, dict) else reply or []
    return [_s(raw_id) for _, entries in pairs for raw_id, _ in entries]


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def written(store: MemoryStore) -> list[str]:
    return sorted(trade_id for ids in store.writes for trade_id in ids)


def lose_first_read_reply(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The first XREADGROUP that delivers entries runs on the server, but its reply is lost
    with the connection; returns the ids it delivered, once it did."""
    real = GroupReads.read
    lost: list[list[str]] = []

    def read(self: GroupReads, streams: Any, count: int, block_ms: int, *more: Any) -> Any:
        reply, error = real(self, streams, count, block_ms, *more)
        if not lost and _ids(reply):
            lost.append(_ids(reply))
            self.close()
            raise redis.ConnectionError("connection reset by peer")
        return reply, error

    monkeypatch.setattr(GroupReads, "read", read)
    return lost


def test_entries_whose_read_reply_was_lost_are_taken_back_and_stored_once(
    r: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lost = lose_first_read_reply(monkeypatch)
    ids = [r.xadd(KEY, frame(i)).decode() for i in range(1, 4)]
    store = MemoryStore()
    w = make(r, store)  # claim_idle_ms 1, claim_every_s 0.01
    w.run(until(lambda: len(store.rows) == 3 and not pending(r)))
    assert lost == [ids]  # the three were delivered to w1 by the read whose reply was lost
    assert written(store) == ["1", "2", "3"]  # each once
    assert pending(r) == []  # acked: nothing pins the stream's retention any more
    assert w.metrics.counters["claimed"] == 3 and w.metrics.counters["retries:read"] == 1
    assert TOOK_BACK_3 in caplog.text


def test_entries_whose_claim_reply_was_lost_are_taken_back_and_stored_once(
    r: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [i.decode() for i in deliver(r, 3, times=1, to="crashed")]
    real = r.xclaim
    lost: list[list[str]] = []

    def xclaim(*args: Any, **kwargs: Any) -> Any:
        got = real(*args, **kwargs)
        if got and not lost and not kwargs.get("justid"):
            lost.append([_s(entry_id) for entry_id, _ in got])  # now w1's, with its reply lost
            raise redis.ConnectionError("connection reset by peer")
        return got

    monkeypatch.setattr(r, "xclaim", xclaim)
    store = MemoryStore()
    w = make(r, store)
    w.run(until(lambda: len(store.rows) == 3 and not pending(r)))
    assert lost == [ids]
    assert written(store) == ["1", "2", "3"]
    assert pending(r) == []
    assert w.metrics.counters["retries:claim"] == 1 and TOOK_BACK_3 in caplog.text


def test_entries_in_hand_are_never_taken_back_however_long_they_wait(
    r: fakeredis.FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries idle far past claim_idle_ms while they wait for a slow writer, in the batch
    being built, or committed and waiting for the read that acks them, are ours in memory:
    a claim every 10 ms never takes them again."""

    class Slow(MemoryStore):
        def write(self, trades: Sequence[Trade], quotes: Sequence[Quote]) -> tuple[int, int]:
            time.sleep(0.02)
            return super().write(trades, quotes)

    n = 300
    for i in range(1, n + 1):
        r.xadd(KEY, frame(i))
    store = Slow()
    w = make(r, store, batch_entries=50, writers=2)
    w.run(until(lambda: len(store.rows) == n and not pending(r)))
    assert written(store) == sorted(str(i) for i in range(1, n + 1))  # each once
    assert "claimed" not in w.metrics.counters and "took back" not in caplog.text
    assert pending(r) == []


def test_own_pending_entries_are_read_again_not_taken_back_while_history_is_read(
    r: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """At start, our own pending entries are read again from id 0; a claim meanwhile (here:
    while those reads fail) leaves them to it, or each would be delivered twice more."""
    deliver(r, 3, times=1, to="w1")
    real = GroupReads.read
    failures = [3]

    def read(self: GroupReads, *args: Any) -> Any:
        if failures[0]:
            failures[0] -= 1
            raise redis.ConnectionError("connection refused")
        return real(self, *args)

    monkeypatch.setattr(GroupReads, "read", read)
    store = MemoryStore()
    w = make(r, store, claim_every_s=0.0)  # a claim before every read
    w.run(until(lambda: len(store.rows) == 3 and not pending(r)))
    assert written(store) == ["1", "2", "3"]
    assert "claimed" not in w.metrics.counters and "took back" not in caplog.text
    assert pending(r) == []


def test_a_claim_that_finds_the_group_gone_creates_it_again(r: fakeredis.FakeRedis) -> None:
    """The stream (and its group) deleted, as by a FLUSHDB or a Redis restarted without its
    data; the producer's next XADD makes the stream again, without the group."""

    class Deleting(MemoryStore):
        def write(self, trades: Sequence[Trade], quotes: Sequence[Quote]) -> tuple[int, int]:
            new = super().write(trades, quotes)
            if "1" in self.rows and "2" not in self.rows and r.exists(KEY):
                r.delete(KEY)
                r.xadd(KEY, frame(2))
            return new

    r.xadd(KEY, frame(1))
    store = Deleting()
    w = make(r, store, claim_every_s=0.0, stop_timeout_s=0.5)
    w.run(until(lambda: "2" in store.rows and not pending(r)))
    assert sorted(store.rows) == ["1", "2"]
    assert [g["name"] for g in r.xinfo_groups(KEY)] == [GROUP.encode()]
    assert w.metrics.counters["retries:claim"] >= 1  # the claim met NOGROUP first, not a read
    assert "retries:read" not in w.metrics.counters


def test_a_lease_renewal_or_pending_lookup_that_finds_the_group_gone_creates_it_again(
    r: fakeredis.FakeRedis,
) -> None:
    w = make(r, MemoryStore())
    for call in (
        lambda: w._claims.renew({KEY: ["1-0"]}, 1),  # a writer waiting for PostgreSQL
        lambda: w._claims.own_deliveries(KEY, ["1-0"]),  # history read at start
    ):
        r.delete(KEY)
        with pytest.raises(redis.ResponseError, match="NOGROUP"):
            call()  # raised for the caller's retry (a lease's is logged) ...
        assert [g["name"] for g in r.xinfo_groups(KEY)] == [GROUP.encode()]  # ... found then


def _kill_at(w: Any, poison: str) -> None:
    real = w.processor.process

    def process(entry_id: str, fields: Any) -> Any:
        if entry_id == poison:
            raise Killed
        return real(entry_id, fields)

    w.processor.process = process


def test_the_neighbours_of_a_suspect_entry_are_acked_before_it_is_processed(
    r: fakeredis.FakeRedis,
) -> None:
    """Three entries delivered twice (a crash loop so far), claimed: the third delivery makes
    each suspect, handled alone. The third kills the process: the two committed before it are
    acked already, so they do not share its deliveries (and its dead letter once over budget)."""
    ids = deliver(r, 3, times=2, to="crashed")
    store = MemoryStore()
    w = make(r, store)
    _kill_at(w, ids[2].decode())
    with pytest.raises(Killed):
        w.run(until(lambda: False))
    assert sorted(store.rows) == ["1", "2"]
    assert [p["message_id"] for p in pending(r)] == [ids[2]]  # only the killer's is pending


def test_a_suspect_entry_is_acked_before_the_next_entry_is_processed(
    r: fakeredis.FakeRedis,
) -> None:
    """Our own pending entries read again at start, in one read: a suspect one, then one that
    kills the process. The suspect, committed alone, is acked before the next is processed."""
    [suspect, killer] = deliver(r, 2, times=0, to="w1")
    r.xclaim(KEY, GROUP, "w1", 0, [suspect], retrycount=2, justid=True)  # the read again: 3rd
    store = MemoryStore()
    w = make(r, store, claim=False)
    _kill_at(w, killer.decode())
    with pytest.raises(Killed):
        w.run(until(lambda: False))
    assert sorted(store.rows) == ["1"]
    assert [p["message_id"] for p in pending(r)] == [killer]
