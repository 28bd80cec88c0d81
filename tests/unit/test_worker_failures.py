"""The worker when things go wrong (fakeredis and an in-memory store: fast, no server): the
delivery budget, entries handled alone, fatal and data refusals, the stop deadline, and metrics
that no frame can forge. The same paths run against real servers in tests/integration."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import fakeredis
import psycopg.errors as pg
import pytest

from common.config import settings_from_mapping
from common.envelope import Envelope, dead_key, raw_key
from common.errors import ExitStatus, TransientError, fatal_error
from common.records import Quote, Trade
from consumer.deadletter import errors_key
from consumer.store import Store
from consumer.worker import Worker

KEY = raw_key("binance")
GROUP = "tickvault"
SETTINGS = settings_from_mapping(
    {
        "consumer": {
            "batch_ms": 5, "block_ms": 10, "claim_every_s": 0.01, "claim_idle_ms": 1,
            "writers": 1,
        },
        "feeds": [{"exchange": "binance", "symbols": ["BTC-USDT"]}],
    },
    {},
)  # fmt: skip


def frame(i: int, event: str = "trade") -> dict[bytes, bytes]:
    body = (
        f'{{"e":"{event}","E":1700000000000,"s":"BTCUSDT","t":{i},"p":"1.5","q":"2",'
        f'"T":1700000000000,"m":true,"M":true}}'
    ).encode()
    return Envelope(body, False, "binance", "", "c", i, 1_700_000_000_000_000_000).fields()


class MemoryStore(Store):
    """Rows in a dict; ``refuse`` maps a trade id to the exception writing it raises."""

    def __init__(self, refuse: dict[str, BaseException] | None = None) -> None:
        super().__init__("postgresql://unused")
        self.rows: dict[str, Trade] = {}
        self.refuse = refuse or {}
        self.writes: list[list[str]] = []

    def connect(self, *, run_migrations: bool = True) -> None:
        return None

    def close(self) -> None:
        return None

    def write(self, trades: Sequence[Trade], quotes: Sequence[Quote]) -> tuple[int, int]:
        ids = [t.trade_id for t in trades]
        self.writes.append(ids)
        for trade_id in ids:
            if trade_id in self.refuse:
                raise self.refuse[trade_id]
        new = 0
        for t in trades:
            new += t.trade_id not in self.rows
            self.rows[t.trade_id] = t
        return new, 0


class When:
    def __init__(self, condition: Any) -> None:
        self.condition = condition

    def is_set(self) -> bool:
        return bool(self.condition())


def make(r: fakeredis.FakeRedis, store: Store, name: str = "w1", **options: Any) -> Worker:
    w = Worker.from_settings(SETTINGS, name=name, streams=[KEY], redis_client=r, store=store)
    for key, value in options.items():
        setattr(w.options, key, value)
    w.sleep = lambda s: None
    return w


def pending(r: fakeredis.FakeRedis) -> list[dict[str, Any]]:
    return r.xpending_range(KEY, GROUP, "-", "+", 1000)  # type: ignore[return-value]


def dead(r: fakeredis.FakeRedis) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in r.xrange(dead_key("binance"))]


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    client = fakeredis.FakeRedis()
    client.xgroup_create(KEY, GROUP, id="0", mkstream=True)
    return client


def deliver(r: fakeredis.FakeRedis, n: int, *, times: int, to: str = "gone") -> list[bytes]:
    """Add ``n`` entries that consumer ``to`` read and holds, delivered ``times`` times."""
    ids = [r.xadd(KEY, frame(i)) for i in range(1, n + 1)]
    r.xreadgroup(GROUP, to, {KEY: ">"}, count=n)
    r.xclaim(KEY, GROUP, to, 0, ids, retrycount=times, justid=True)
    time.sleep(0.005)  # idle past claim_idle_ms
    return ids


def test_an_entry_past_its_budget_is_dead_lettered_unprocessed_by_its_claimer(
    r: fakeredis.FakeRedis,
) -> None:
    [poison] = deliver(r, 1, times=5, to="crashed")  # claiming it is its 6th delivery
    r.hset(errors_key(KEY), poison, "MemoryError: out of memory")
    ok = r.xadd(KEY, frame(2))
    store = MemoryStore()
    w = make(r, store)
    w.run(When(lambda: "2" in store.rows and not pending(r)))
    assert "1" not in store.rows  # never processed
    [letter] = dead(r)
    assert letter[b"origin"] == poison
    assert letter[b"reason"] == b"delivered 6 times: MemoryError: out of memory"
    assert w.metrics.counters["over_budget"] == 1
    assert ok and pending(r) == []


def test_own_pending_entries_past_the_budget_are_dead_lettered_at_start(
    r: fakeredis.FakeRedis,
) -> None:
    deliver(r, 2, times=5, to="w1")  # w1's own; re-reading them at start is the 6th delivery
    store = MemoryStore()
    w = make(r, store, claim=False)
    w.run(When(lambda: len(dead(r)) == 2 and not pending(r)))
    assert store.rows == {}
    reasons = [d[b"reason"].decode() for d in dead(r)]
    assert all(reason.startswith("delivered 6 times: no error recorded") for reason in reasons)


def test_entries_delivered_three_times_are_committed_one_at_a_time(
    r: fakeredis.FakeRedis,
) -> None:
    deliver(r, 4, times=2, to="crashed")  # claimed: the third delivery
    store = MemoryStore()
    w = make(r, store)
    w.run(When(lambda: len(store.rows) == 4 and not pending(r)))
    assert sorted(store.writes) == [["1"], ["2"], ["3"], ["4"]]  # alone: one killer, one loss


def test_a_fatal_refusal_acks_nothing_dead_letters_nothing_and_gives_the_delivery_back(
    r: fakeredis.FakeRedis,
) -> None:
    for i in range(1, 6):
        r.xadd(KEY, frame(i))
    r.xadd(KEY, {**frame(9), b"f": b"{not json"})  # a bad frame: must not be dead-lettered now
    revoked = pg.InsufficientPrivilege("permission denied for table trades")
    store = MemoryStore({"1": revoked})
    w = make(r, store)
    with pytest.raises(pg.InsufficientPrivilege) as caught:
        w.run(When(lambda: False))
    fatal = fatal_error(caught.value)
    assert fatal is not None and fatal.status is ExitStatus.POSTGRES and fatal.code == "42501"
    assert len(pending(r)) == 6 and dead(r) == []
    assert {p["times_delivered"] for p in pending(r)} == {0}  # the next read is the first again


def test_a_row_postgres_refuses_is_found_by_halving_and_dead_lettered(
    r: fakeredis.FakeRedis,
) -> None:
    for i in range(1, 65):
        r.xadd(KEY, frame(i))
    store = MemoryStore({"13": pg.CheckViolation('violates check constraint "x"')})
    w = make(r, store, batch_entries=64, batch_ms=1000)
    w.run(When(lambda: len(store.rows) == 63 and not pending(r)))
    [letter] = dead(r)
    assert b'"t":13' in letter[b"f"] and letter[b"reason"].startswith(b"postgres rejected (23514)")
    assert len(store.writes) <= 16  # halving: not one write per frame


def test_a_stop_with_postgres_away_ends_within_one_budget_and_keeps_the_entries(
    r: fakeredis.FakeRedis,
) -> None:
    for i in range(1, 4):
        r.xadd(KEY, frame(i))

    class Away(MemoryStore):
        def write(self, trades: Sequence[Trade], quotes: Sequence[Quote]) -> tuple[int, int]:
            self.writes.append([t.trade_id for t in trades])
            raise TransientError("postgres unreachable")

    store = Away()
    w = make(r, store, stop_timeout_s=0.5, backoff_max_s=0.05)
    w.sleep = time.sleep
    started = time.monotonic()
    w.run(When(lambda: bool(store.writes)))  # a stop as soon as the first write failed
    assert time.monotonic() - started < 2.0
    assert len(pending(r)) == 3  # nothing acked: left for the next consumer
    assert {p["times_delivered"] for p in pending(r)} == {0}  # and not the data's fault
    assert w.metrics.counters["left_pending"] == 3


def test_a_bug_outside_the_frame_guard_records_its_error_for_the_entries_held(
    r: fakeredis.FakeRedis,
) -> None:
    [entry] = [r.xadd(KEY, frame(1))]
    store = MemoryStore({"1": ZeroDivisionError("a bug in the store")})
    with pytest.raises(ZeroDivisionError):
        make(r, store).run(When(lambda: False))
    assert r.hget(errors_key(KEY), entry) == b"ZeroDivisionError: a bug in the store"
    assert [p["times_delivered"] for p in pending(r)] == [1]  # this one counts


def test_no_frame_can_add_a_metric_or_a_series(r: fakeredis.FakeRedis) -> None:
    hostile = 'x\\"} 1\\nfake_metric{a=\\"b'
    for i, event in enumerate([hostile, "kline", "x" * 5000], start=1):
        r.xadd(KEY, frame(i, event))
    r.xadd(KEY, frame(4))
    store = MemoryStore()
    w = make(r, store)
    w.run(When(lambda: "4" in store.rows and not pending(r)))
    text = w.metrics.prometheus()
    assert not any(line.startswith("fake_metric") for line in text.splitlines())
    kinds = {name for name in w.metrics.counters if name.startswith("control:")}
    assert kinds == {"control:unknown"} and w.metrics.counters["control:unknown"] == 3


def test_a_clone_keeps_the_store_class_and_its_attributes() -> None:
    store = MemoryStore({"7": ValueError("x")})
    twin = store.clone()
    assert type(twin) is MemoryStore and twin is not store and twin.refuse is store.refuse


def test_a_lease_renewal_resets_idle_time_without_counting_a_delivery(
    r: fakeredis.FakeRedis,
) -> None:
    """A writer waiting for PostgreSQL touches its entries so that consumers stuck on the same
    outage do not claim them from a live holder, and the touch spends none of their budget."""
    from consumer.claims import Claims

    ids = deliver(r, 3, times=1, to="w1")
    time.sleep(0.02)
    claims = Claims(r, GROUP, "w1")
    claims.renew({KEY: [i.decode() for i in ids]}, min_idle_ms=1)
    rows = pending(r)
    assert [p["times_delivered"] for p in rows] == [1, 1, 1]
    assert all(p["time_since_delivered"] < 20 for p in rows)
    other = Claims(r, GROUP, "w2").claim(KEY, min_idle_ms=15, count=10)
    assert other.entries == [] and {p["consumer"] for p in pending(r)} == {b"w1"}
