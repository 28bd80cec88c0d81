"""The worker's stream logic (group creation, own pending first, acks after the write, dead
letters) against fakeredis and an in-memory store: fast, no server. The same paths run against
real Redis and PostgreSQL in tests/integration and tests/e2e."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import fakeredis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.config import settings_from_mapping
from common.envelope import Envelope, dead_key, raw_key
from common.errors import TransientError
from common.records import Quote, Trade
from consumer.batching import Batch
from consumer.reads import ack_lowat
from consumer.store import Store
from consumer.worker import (
    ACK_WAIT_MS,
    ACKS_BLOCK_MS,
    INLINE_DRAINED_MAX,
    INLINE_MAX_FRAMES,
    Worker,
)

KEY = raw_key("binance")
SETTINGS = settings_from_mapping(
    {
        "consumer": {"batch_ms": 5, "block_ms": 10, "claim_every_s": 3600},
        "feeds": [{"exchange": "binance", "symbols": ["BTC-USDT"]}],
    },
    {},
)


def frame(i: int) -> dict[bytes, bytes]:
    body = (
        f'{{"e":"trade","E":1700000000000,"s":"BTCUSDT","t":{i},"p":"1.5","q":"2",'
        f'"T":1700000000000,"m":true,"M":true}}'
    ).encode()
    return Envelope(body, False, "binance", "", "c", i, 1_700_000_000_000_000_000).fields()


class MemoryStore(Store):
    """Keeps rows in a dict keyed like the table; can fail its first writes."""

    def __init__(self, redis: fakeredis.FakeRedis, failures: int = 0) -> None:
        super().__init__("postgresql://unused")
        self.rows: dict[tuple[str, str, str], Trade] = {}
        self.failures = failures
        self.redis = redis
        self.pending_at_write: list[int] = []
        self.writers: set[str] = set()  # the threads that wrote

    def connect(self, *, run_migrations: bool = True) -> None:
        return None

    def clone(self) -> Store:
        return self  # the second writer thread writes to the same rows

    def close(self) -> None:
        return None

    def write(self, trades: Sequence[Trade], quotes: Sequence[Quote]) -> tuple[int, int]:
        self.writers.add(threading.current_thread().name)
        self.pending_at_write.append(int(self.redis.xpending(KEY, "tickvault")["pending"]))
        if self.failures:
            self.failures -= 1
            raise TransientError("down")
        new = 0
        for t in trades:
            if (t.symbol, t.trade_id, str(t.ts_ns)) not in self.rows:
                self.rows[(t.symbol, t.trade_id, str(t.ts_ns))] = t
                new += 1
        return new, 0


class StopAfter:
    def __init__(self, store: MemoryStore, rows: int) -> None:
        self.store, self.rows = store, rows

    def is_set(self) -> bool:
        return len(self.store.rows) >= self.rows


def worker(r: fakeredis.FakeRedis, store: MemoryStore, name: str = "w1") -> Worker:
    w = Worker.from_settings(SETTINGS, name=name, streams=[KEY], redis_client=r, store=store)
    w.sleep = lambda s: None
    return w


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def test_creates_the_group_from_zero_and_acks_only_after_the_write(r: fakeredis.FakeRedis) -> None:
    for i in range(1, 6):
        r.xadd(KEY, frame(i))  # written before any group existed: must not be skipped
    store = MemoryStore(r, failures=1)
    w = worker(r, store)
    w.run(StopAfter(store, 5))
    assert sorted(int(t.trade_id) for t in store.rows.values()) == [1, 2, 3, 4, 5]
    assert store.pending_at_write[:2] == [5, 5]  # nothing acked while the write failed
    assert r.xpending(KEY, "tickvault")["pending"] == 0
    assert w.metrics.counters["retries:postgres-write"] == 1


def test_own_pending_entries_are_read_again_first(r: fakeredis.FakeRedis) -> None:
    r.xgroup_create(KEY, "tickvault", id="0", mkstream=True)
    for i in range(1, 4):
        r.xadd(KEY, frame(i))
    r.xreadgroup("tickvault", "w1", {KEY: ">"}, count=3)  # read, then "crashed" before acking
    r.xadd(KEY, frame(4))
    store = MemoryStore(r)
    worker(r, store, name="w1").run(StopAfter(store, 4))
    assert sorted(int(t.trade_id) for t in store.rows.values()) == [1, 2, 3, 4]
    assert r.xpending(KEY, "tickvault")["pending"] == 0


def test_malformed_frames_are_dead_lettered_then_acked(r: fakeredis.FakeRedis) -> None:
    bad = {**frame(1), b"f": b"[oops"}
    bad_id = r.xadd(KEY, bad)
    r.xadd(KEY, frame(2))
    store = MemoryStore(r)
    w = worker(r, store)
    w.run(StopAfter(store, 1))
    [(_, dead)] = r.xrange(dead_key("binance"))
    assert (
        dead[b"origin"] == bad_id and dead[b"f"] == b"[oops" and b"undecodable" in dead[b"reason"]
    )
    assert r.xpending(KEY, "tickvault")["pending"] == 0
    assert w.metrics.counters["dead"] == 1


def test_a_stop_while_postgres_is_unreachable_at_start_returns(r: fakeredis.FakeRedis) -> None:
    class Down(MemoryStore):
        def connect(self, *, run_migrations: bool = True) -> None:
            raise TransientError("postgres unreachable")

    store = Down(r)
    w = worker(r, store)
    w.options.stop_timeout_s = 0.0

    class Stopped:
        def is_set(self) -> bool:
            return True

    w.run(Stopped())  # returns instead of retrying forever
    assert w.metrics.counters["retries:postgres-connect"] >= 1


def test_one_worker_reads_two_exchanges_and_acks_both(r: fakeredis.FakeRedis) -> None:
    """A batch holding entries of two streams acks each stream's ids on that stream."""
    other = raw_key("okx")
    okx_trade = (
        b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
        b'"tradeId":"7","px":"42.5","sz":"0.1","side":"buy","ts":"1700000000000"}]}'
    )
    settings = settings_from_mapping(
        {
            "consumer": {"batch_ms": 5, "block_ms": 10, "claim_every_s": 3600},
            "feeds": [
                {"exchange": "binance", "symbols": ["BTC-USDT"]},
                {"exchange": "okx", "symbols": ["BTC-USDT"]},
            ],
        },
        {},
    )
    for i in range(1, 4):
        r.xadd(KEY, frame(i))
    r.xadd(other, Envelope(okx_trade, False, "okx", "", "c", 1, 1_700_000_000_000_000_000).fields())
    store = MemoryStore(r)
    w = Worker.from_settings(settings, name="w1", streams=[KEY, other], redis_client=r, store=store)
    w.sleep = lambda s: None
    w.run(StopAfter(store, 4))
    assert {(t.exchange, t.trade_id) for t in store.rows.values()} == {
        ("binance", "1"), ("binance", "2"), ("binance", "3"), ("okx", "7"),
    }  # fmt: skip
    assert r.xpending(KEY, "tickvault")["pending"] == 0
    assert r.xpending(other, "tickvault")["pending"] == 0


def test_two_writers_commit_two_batches_at_once(r: fakeredis.FakeRedis) -> None:
    """With ``writers = 2`` a second batch is written while the first one still is; each is
    acked after its own write."""

    class Paired(MemoryStore):
        both_in = threading.Barrier(2, timeout=10)

        def write(self, trades: Sequence[Trade], quotes: Sequence[Quote]) -> tuple[int, int]:
            if self.both_in.n_waiting or not self.rows:
                self.both_in.wait()  # the first two writes wait for each other: concurrent
            return super().write(trades, quotes)

    n = 2 * (INLINE_MAX_FRAMES + 1)  # batches too big to be committed on the main thread
    for i in range(1, n + 1):
        r.xadd(KEY, frame(i))
    store = Paired(r)
    w = Worker.from_settings(
        SETTINGS, name="w1", streams=[KEY], redis_client=r, store=store, batch_entries=n // 2
    )
    w.sleep = lambda s: None
    w.run(StopAfter(store, n))
    assert sorted(int(t.trade_id) for t in store.rows.values()) == list(range(1, n + 1))
    assert w.metrics.counters["batches"] >= 2 and w.options.writers == 2
    assert r.xpending(KEY, "tickvault")["pending"] == 0


def test_small_batches_commit_on_the_main_thread_and_ack_with_the_next_read(
    r: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At low rates a batch is committed without a writer thread, and its XACK goes in the same
    round trip as the next XREADGROUP: no XACK of its own, except for the last batch, at the
    stop. Each entry is still pending when its rows are written."""
    xacks: list[int] = []
    xack = r.xack

    def counted_xack(*args: Any) -> Any:
        xacks.append(len(args) - 2)
        return xack(*args)

    monkeypatch.setattr(r, "xack", counted_xack)

    store = MemoryStore(r)
    w = worker(r, store)
    added = 0

    class Trickle:
        """One new frame per loop turn, as a slow feed sends them."""

        def is_set(self) -> bool:
            nonlocal added
            if added < 5 and len(store.rows) == added:
                added += 1
                r.xadd(KEY, frame(added))
            return len(store.rows) >= 5

    w.run(Trickle())
    assert store.writers == {threading.main_thread().name}
    assert store.pending_at_write == [1, 1, 1, 1, 1]  # its own entry: not acked before
    assert xacks == [1]  # the last batch's, at the stop; the others rode a read
    assert r.xpending(KEY, "tickvault")["pending"] == 0
    assert w.metrics.counters["acked"] == 5 and w.metrics.counters["batches"] == 5


@pytest.mark.parametrize(
    ("entries", "per_read", "on_main"),
    [
        (INLINE_MAX_FRAMES + 8, None, True),  # one read took all there was: committed here
        (INLINE_DRAINED_MAX, None, True),
        (INLINE_DRAINED_MAX + 1, None, False),  # too big even when drained
        (2 * (INLINE_MAX_FRAMES + 8), INLINE_MAX_FRAMES + 8, False),  # a backlog: writers
    ],
)
def test_a_drained_reads_batch_commits_on_the_main_thread_a_backlogs_goes_to_a_writer(
    r: fakeredis.FakeRedis, entries: int, per_read: int | None, on_main: bool
) -> None:
    """A batch bigger than INLINE_MAX_FRAMES is still committed on the main thread when the
    read that ended it drained the stream (nothing waits to be read while it commits), up to
    INLINE_DRAINED_MAX frames; while a backlog is read, a writer commits it, so reading
    overlaps committing."""
    for i in range(1, entries + 1):
        r.xadd(KEY, frame(i))

    store = MemoryStore(r)
    kwargs = {} if per_read is None else {"batch_entries": per_read}
    w = Worker.from_settings(
        SETTINGS, name="w1", streams=[KEY], redis_client=r, store=store, **kwargs
    )
    w.sleep = lambda s: None
    w.run(StopAfter(store, entries))
    assert len(store.rows) == entries
    main = threading.main_thread().name
    assert (store.writers == {main}) if on_main else (main not in store.writers and store.writers)
    assert r.xpending(KEY, "tickvault")["pending"] == 0


def _restart_stores_once_and_acks(r: fakeredis.FakeRedis, store: MemoryStore, n: int) -> None:
    """A consumer restarted (same name) after one killed with entries 1..n committed and not
    acked: it writes them again (the natural key stores nothing twice) and acks them."""
    again = worker(r, store)

    class Acked:
        def is_set(self) -> bool:
            return again.metrics.counters["acked"] >= n

    again.run(Acked())
    assert r.xpending(KEY, "tickvault")["pending"] == 0
    assert sorted(int(t.trade_id) for t in store.rows.values()) == list(range(1, n + 1))
    assert again.metrics.counters["rows_duplicate"] == n and again.metrics.counters["acked"] == n


@pytest.mark.parametrize("n", [3, INLINE_MAX_FRAMES + 8])  # small; bigger, of a drained read
def test_a_consumer_killed_between_a_commit_and_the_read_that_acks_it_loses_nothing(
    r: fakeredis.FakeRedis, n: int
) -> None:
    """The one window the riding acks add: a batch committed on the main thread whose XACK
    has not gone out yet. Killed there (SIGKILL runs no exit path: no final ack, no release),
    its entries stay pending; the restarted consumer (same name) reads them again first,
    writes them again (the natural key stores nothing twice) and acks them."""
    for i in range(1, n + 1):
        r.xadd(KEY, frame(i))
    store = MemoryStore(r)
    first = worker(r, store)
    first._ack_unacked = lambda: None  # type: ignore[method-assign]  # as if killed -9
    first._leave = lambda failure: None  # type: ignore[method-assign]
    first.run(StopAfter(store, n))
    assert len(store.rows) == n and store.writers == {threading.main_thread().name}
    assert r.xpending(KEY, "tickvault")["pending"] == n  # committed, never acked
    assert first.metrics.counters["acked"] == 0

    _restart_stores_once_and_acks(r, store, n)


def test_a_drained_reads_batch_on_the_main_thread_survives_a_refusal_and_a_hostile_frame(
    r: fakeredis.FakeRedis,
) -> None:
    """A batch bigger than INLINE_MAX_FRAMES committed on the main thread takes the same road
    as any: PostgreSQL refusing once (transient) is retried with nothing acked meanwhile, a
    hostile frame among the entries is dead-lettered with its reason, and every entry is
    acked once its batch is stored."""
    n = INLINE_MAX_FRAMES + 8
    bad_id = b""
    for i in range(1, n + 1):
        entry_id = r.xadd(KEY, {**frame(i), b"f": b"[oops"} if i == 7 else frame(i))
        bad_id = entry_id if i == 7 else bad_id
    store = MemoryStore(r, failures=1)
    w = worker(r, store)
    w.run(StopAfter(store, n - 1))
    assert store.writers == {threading.main_thread().name}
    assert store.pending_at_write == [n, n]  # refused, then written: nothing acked before
    assert sorted(int(t.trade_id) for t in store.rows.values()) == [
        i for i in range(1, n + 1) if i != 7
    ]
    [(_, dead)] = r.xrange(dead_key("binance"))
    assert dead[b"origin"] == bad_id and b"undecodable" in dead[b"reason"]
    assert r.xpending(KEY, "tickvault")["pending"] == 0
    assert w.metrics.counters["dead"] == 1 and w.metrics.counters["acked"] == n


class FakeCommitter:
    """What a writer's commit needs of ``consumer.commit.Committer``, recorded."""

    def __init__(self) -> None:
        self.committed: list[Batch] = []
        self.acked_now: list[Batch] = []
        self.counted: list[Batch] = []

    def commit(self, batch: Batch, store: Store, *, ack: bool = True) -> bool:
        assert not ack  # the worker acks (with a read, or through ack_now)
        self.committed.append(batch)
        return True

    def ack_now(self, batch: Batch) -> bool:
        self.acked_now.append(batch)
        return True

    def acked(self, batch: Batch) -> None:
        self.counted.append(batch)


def pending_batch(r: fakeredis.FakeRedis, n: int) -> Batch:
    """A batch of ``n`` entries delivered to consumer w1 (pending, as a writer commits them)."""
    for i in range(1, n + 1):
        r.xadd(KEY, frame(i))
    r.xgroup_create(KEY, "tickvault", id="0")
    [(_, entries)] = r.xreadgroup("tickvault", "w1", {KEY: ">"})
    batch = Batch()
    batch.acks[KEY] = [entry_id.decode() for entry_id, _ in entries]
    batch.entries = n
    return batch


def test_a_batch_a_writer_committed_is_acked_by_the_next_read(r: fakeredis.FakeRedis) -> None:
    """A writer's batch goes back to the main thread, and its XACK rides the next XREADGROUP:
    no XACK round trip of the writer's own; still pending until that read."""
    batch = pending_batch(r, 3)
    w = worker(r, MemoryStore(r))
    committer = FakeCommitter()
    w._committer = committer  # type: ignore[assignment]
    w._writers_ack = False  # as run() sets it when reads carry acks
    assert w._writer_commit(batch, w.store)
    assert committer.acked_now == [] and w._held() == [batch]
    assert r.xpending(KEY, "tickvault")["pending"] == 3  # committed, not acked yet
    w._read({KEY: ">"}, 0)
    assert r.xpending(KEY, "tickvault")["pending"] == 0
    assert committer.counted == [batch] and w._held() == []


def test_a_writer_acks_its_batch_itself_while_the_main_thread_blocks_in_a_read(
    r: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that may block long (a quiet stream) could hold a handed-back ack for block_ms: a
    writer that commits meanwhile acks its batch itself. One that ends soon takes them."""
    w = worker(r, MemoryStore(r))
    committer = FakeCommitter()
    w._committer = committer  # type: ignore[assignment]
    w._writers_ack = False
    reads = w._reads
    assert reads is not None
    during: list[bool] = []
    real_read = reads.read

    def read_while_a_writer_commits(*args: Any, **kwargs: Any) -> Any:
        during.append(w._writer_commit(Batch(), w.store))  # a writer ends during this read
        return real_read(*args, **kwargs)

    monkeypatch.setattr(reads, "read", read_while_a_writer_commits)
    r.xgroup_create(KEY, "tickvault", id="0", mkstream=True)
    w._read({KEY: ">"}, ACK_WAIT_MS + 1)  # may block long: the writer acks its own
    assert during == [True] and len(committer.acked_now) == 1 and not w._committed
    w._read({KEY: ">"}, ACK_WAIT_MS)  # ends soon: handed back, to ride the read after it
    assert len(committer.acked_now) == 1 and len(w._committed) == 1
    w._read({KEY: ">"}, 0)  # takes that one along (and a third writer ends during it)
    assert len(committer.acked_now) == 1 and len(w._committed) == 1 and len(w._unacked) == 1
    w._writers_ack_from_now()  # the stop: writers ack their own; handed-back ones wait in line
    assert w._writers_ack and not w._committed and len(w._unacked) == 2


@given(
    st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 10**6)), min_size=1, max_size=4),
    st.integers(3, 10**4),
)
def test_the_read_reply_always_reaches_the_ack_low_water_mark(
    acks: list[tuple[int, int]], read_reply: int
) -> None:
    """Whatever the XACKs answer (at most the ids sent), their replies plus the read's
    shortest one reach the mark: the reader is always woken by the read's reply."""
    sent = [n for n, _ in acks]
    answered = sum(len(f":{min(n, got)}\r\n") for n, got in acks)
    assert ack_lowat(sent) <= answered + read_reply


def test_full_ack_replies_alone_stay_under_the_mark() -> None:
    for n in (1, 9, 10, 99, 100, 999):
        assert ack_lowat([n]) > len(f":{n}\r\n")
    assert ack_lowat([3, 40]) > len(":3\r\n:40\r\n")
    assert ack_lowat([1000]) == 7  # capped: ":1000\r\n" wakes the reader (as before)


def test_a_read_carrying_acks_blocks_briefly_so_they_are_counted_soon(
    r: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acks are counted when the read that carries them returns: that read blocks
    ACKS_BLOCK_MS at most, the next one (nothing to carry) block_ms again."""
    batch = pending_batch(r, 2)
    w = worker(r, MemoryStore(r))
    committer = FakeCommitter()
    w._committer = committer  # type: ignore[assignment]
    reads = w._reads
    assert reads is not None
    blocks: list[int] = []
    real_read = reads.read

    def recorded(streams: Any, count: int, block_ms: int, *args: Any) -> Any:
        blocks.append(block_ms)
        return real_read(streams, count, 0, *args)  # (fakeredis would really block)

    monkeypatch.setattr(reads, "read", recorded)
    w._unacked.append(batch)
    w._read({KEY: ">"}, 1000)
    w._read({KEY: ">"}, 1000)
    assert blocks == [ACKS_BLOCK_MS, 1000] and committer.counted and not w._unacked


def test_a_consumer_killed_after_a_writer_committed_before_the_read_that_acks_it(
    r: fakeredis.FakeRedis,
) -> None:
    """The window the writers' handed-back acks add: a writer committed the batch, the main
    thread's next read would carry its XACK. Killed there (no exit path runs), the entries stay
    pending; the restarted consumer (same name) writes them again (the natural key stores
    nothing twice) and acks them."""
    n = INLINE_DRAINED_MAX + 8  # too big for the main thread: a writer commits it
    for i in range(1, n + 1):
        r.xadd(KEY, frame(i))

    class Killed(BaseException):
        pass

    store = MemoryStore(r)
    first = worker(r, store)
    first._leave = lambda failure: None  # type: ignore[method-assign]  # as if killed -9
    real_read = first._read_acking

    def read_or_die(reads: Any, live: dict[str, str], count: int, block_ms: int) -> Any:
        if first._unacked:  # the writer's batch is about to ride this read: die first
            raise Killed
        return real_read(reads, live, count, block_ms)

    first._read_acking = read_or_die  # type: ignore[method-assign]

    class Deadline:  # (if the batch never rode a read, the run ends here, without Killed)
        end = time.monotonic() + 10

        def is_set(self) -> bool:
            return time.monotonic() > self.end

    with pytest.raises(Killed):
        first.run(Deadline())
    assert store.writers and threading.main_thread().name not in store.writers
    assert len(store.rows) == n and store.pending_at_write == [n]  # written before any ack
    assert r.xpending(KEY, "tickvault")["pending"] == n  # committed, never acked
    assert first.metrics.counters["acked"] == 0

    _restart_stores_once_and_acks(r, store, n)
