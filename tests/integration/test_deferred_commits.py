"""A small batch's commit sent, its outcome read after the next read (``consumer.defer_commits``),
against a real Redis and a real PostgreSQL: entries stay pending until their commit is known,
a refused row is dead-lettered alone, a connection lost with a commit in flight loses and
doubles nothing, and a stop with one in flight acks it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

import psycopg
import pytest
import redis

from common.config import settings_from_mapping
from common.envelope import raw_key
from common.errors import TransientError
from common.records import Quote, Trade
from consumer.store import Store
from consumer.worker import Worker
from tests.integration.test_streams import frame  # a Binance trade entry, trade id i

pytestmark = pytest.mark.integration

KEY = raw_key("binance")
GROUP = "tickvault"


class WatchingStore(Store):
    """A store that writes as ``Store`` does (its ``write`` is not overridden, so batches may
    be sent and received later) and records what it sees: the entries still pending when a
    batch's outcome is read, the errors that outcome raised, and a hook after each send."""

    def __init__(self, url: str, client: redis.Redis | None) -> None:
        super().__init__(url)
        self.client = client
        self.sends = 0
        self.pending_at_outcome: list[int] = []
        self.errors: list[BaseException] = []
        self.before_send: Callable[[int], None] = lambda n: None
        self.after_send: Callable[[Sequence[Trade]], None] = lambda trades: None

    def send(self, trades: Sequence[Trade], quotes: Sequence[Quote]) -> bool:
        self.before_send(self.sends + 1)
        sent = super().send(trades, quotes)
        if sent:
            self.sends += 1
            self.after_send(trades)
        return sent

    def received(self) -> tuple[int, int]:
        if self.client is not None:
            self.pending_at_outcome.append(int(self.client.xpending(KEY, GROUP)["pending"]))
        try:
            return super().received()
        except BaseException as exc:
            self.errors.append(exc)
            raise


def run_paced(
    client: redis.Redis,
    store: Store,
    ids: Sequence[int],
    *,
    defer: bool = True,
    gap_s: float = 0.004,
    stop_when: Callable[[Worker], bool] | None = None,
    keep: list[Worker] | None = None,
) -> Worker:
    """A worker on its own thread while ``ids`` arrive one entry every ``gap_s`` (a paced
    feed: each read drains the stream, so each batch is small); stopped once every row is in
    PostgreSQL and nothing is pending (or when ``stop_when`` says); the store closed."""
    settings = settings_from_mapping(
        {
            "consumer": {"block_ms": 200, "claim_every_s": 3600, "defer_commits": defer},
            "feeds": [{"exchange": "binance", "symbols": ["BTC-USDT"]}],
        },
        {},
    )
    worker = Worker.from_settings(
        settings, name="w1", streams=[KEY], redis_client=client, store=store
    )
    worker.sleep = lambda s: None
    if keep is not None:
        keep.append(worker)  # (for a caller whose worker fails)
    stop = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            worker.run(stop)
        except BaseException as exc:
            failure.append(exc)

    with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: a consumer had made it
        client.xgroup_create(KEY, GROUP, id="0", mkstream=True)
    thread = threading.Thread(target=work)
    thread.start()
    try:
        # the feed starts once the worker reads (else its first read takes a backlog at once)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not failure:
            if any(c["name"] == b"w1" for c in client.xinfo_consumers(KEY, GROUP)):
                break
            time.sleep(0.01)
        for i in ids:
            client.xadd(KEY, frame(i))  # type: ignore[arg-type]
            time.sleep(gap_s)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not failure:
            if stop_when is not None and stop_when(worker):
                break
            if stored(store.url) >= len(ids) and client.xpending(KEY, GROUP)["pending"] == 0:
                break
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(30)
        store.close()
    assert not thread.is_alive()
    if failure:
        raise failure[0]
    return worker


def stored(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM trades").fetchone()
    return int(row[0]) if row else 0


def trade_ids(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return sorted(int(r[0]) for r in conn.execute("SELECT trade_id FROM trades"))


def test_a_paced_feed_commits_deferred_and_acks_only_what_is_known_committed(
    redis_client: redis.Redis, database_url: str
) -> None:
    store = WatchingStore(database_url, redis_client)
    worker = run_paced(redis_client, store, range(1, 101))
    assert trade_ids(database_url) == list(range(1, 101))  # each once
    assert redis_client.xpending(KEY, GROUP)["pending"] == 0
    assert worker.deferred_commits == store.sends > 10  # small batches, sent and read later
    # the batch whose outcome is read is still pending: none is acked before its commit is known
    assert min(store.pending_at_outcome) >= 1
    assert worker.metrics.counters["trades"] == 100 and not store.errors
    assert worker.metrics.counters["rows_new"] == 100


def test_with_defer_commits_off_every_commit_is_waited_for(
    redis_client: redis.Redis, database_url: str
) -> None:
    store = WatchingStore(database_url, redis_client)
    worker = run_paced(redis_client, store, range(1, 31), defer=False)
    assert trade_ids(database_url) == list(range(1, 31))
    assert worker.deferred_commits == store.sends == 0


def test_a_row_postgres_refuses_in_a_deferred_batch_is_dead_lettered_alone(
    redis_client: redis.Redis, database_url: str
) -> None:
    """The statement fails whole (SQLSTATE 23514 from a CHECK the test adds): its outcome,
    read after the next read, sends the batch the usual way, where the bad frame is found by
    halving and dead-lettered with PostgreSQL's reason; the rest are stored and all acked."""
    store = WatchingStore(database_url, redis_client)
    store.connect()
    store.conn.execute("ALTER TABLE trades ADD CONSTRAINT no_seven CHECK (trade_id <> '7')")

    def settled(worker: Worker) -> bool:  # 14 rows in, nothing pending
        pending = redis_client.xpending(KEY, GROUP)["pending"]
        return stored(database_url) >= 14 and pending == 0

    run_paced(redis_client, store, range(1, 16), stop_when=settled)
    assert trade_ids(database_url) == [i for i in range(1, 16) if i != 7]
    assert any(isinstance(e, psycopg.errors.CheckViolation) for e in store.errors)
    [(_, dead)] = redis_client.xrange("tickvault:dead:{binance}")
    assert dead[b"reason"].startswith(b"postgres rejected (23514):")
    assert b'"t":7,' in dead[b"f"]
    assert redis_client.xpending(KEY, GROUP)["pending"] == 0


def test_a_connection_lost_with_a_commit_in_flight_loses_and_doubles_nothing(
    redis_client: redis.Redis, database_url: str
) -> None:
    """PostgreSQL ends the connection (pg_terminate_backend, as a restart or a fail-over
    does) just before the 3rd and the 6th statements are sent: their outcome is a lost
    connection, the batch is written again on a new connection, and every row is there once,
    every entry acked after its commit."""
    store = WatchingStore(database_url, redis_client)

    def terminate(n: int) -> None:
        if n in (3, 6) and store._conn is not None:
            pid = store._conn.info.backend_pid
            with psycopg.connect(database_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [pid])
                while admin.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]
                ).fetchone():
                    time.sleep(0.01)

    store.before_send = terminate
    worker = run_paced(redis_client, store, range(1, 41))
    assert trade_ids(database_url) == list(range(1, 41))
    assert redis_client.xpending(KEY, GROUP)["pending"] == 0
    lost = [e for e in store.errors if isinstance(e, TransientError)]
    assert len(lost) >= 1  # (a send may also fail at once: then it is committed the usual way)
    assert worker.metrics.counters["retries:postgres-write"] + len(lost) >= 2


def test_a_stop_with_a_commit_in_flight_reads_its_outcome_and_acks_it(
    redis_client: redis.Redis, database_url: str
) -> None:
    """The stop comes right after the last batch's statement is sent: the worker reads its
    outcome on the way out and acks it; nothing is left pending or unstored."""
    store = WatchingStore(database_url, redis_client)
    sent_last = threading.Event()

    def after_send(trades: Sequence[Trade]) -> None:
        if any(t.trade_id == "20" for t in trades):  # the last batch, in flight
            sent_last.set()

    store.after_send = after_send
    run_paced(redis_client, store, range(1, 21), stop_when=lambda w: sent_last.is_set())
    assert sent_last.is_set()
    assert trade_ids(database_url) == list(range(1, 21))
    assert redis_client.xpending(KEY, GROUP)["pending"] == 0


def test_a_replay_of_a_short_range_reads_and_acks_its_last_deferred_batch(
    redis_client: redis.Redis, database_url: str
) -> None:
    """A replay whose range is one small batch, with more entries after it: its first read is
    full (not drained), the range's end stops the loop with the batch still in hand, and the
    final flush sends it deferred; its outcome is read and the batch acked before the end
    (not left pending, as the stop's acks would miss a batch still in flight)."""
    from consumer.replay import replay

    ids = [redis_client.xadd(KEY, frame(i)).decode() for i in range(1, 301)]  # type: ignore[arg-type]
    settings = settings_from_mapping(
        {"feeds": [{"exchange": "binance", "symbols": ["BTC-USDT"]}]}, {}
    )
    store = WatchingStore(database_url, None)  # (the replay's group is its own)
    try:
        counts = replay(
            settings, [KEY], start=ids[2], end=ids[11], client=redis_client, store=store
        )
    finally:
        store.close()
    assert trade_ids(database_url) == list(range(3, 13))
    assert store.sends >= 1  # it was deferred
    assert counts["rows_new"] == 10 and counts["acked"] == 10
    assert counts.get("left_pending", 0) == 0


def test_a_fatal_refusal_when_sending_stops_the_worker_and_releases_the_batch(
    redis_client: redis.Redis, database_url: str
) -> None:
    """PostgreSQL refuses for good as a batch is sent (a privilege revoked: 42501): the worker
    stops with that error, nothing of the batch is acked, and its entries are given back for
    the next consumer (counted ``left_pending``), as with a commit that is waited for."""
    store = WatchingStore(database_url, redis_client)

    def refuse(n: int) -> None:
        if n == 3:
            raise psycopg.errors.InsufficientPrivilege("permission denied for table trades")

    store.before_send = refuse
    holder: list[Worker] = []
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        run_paced(redis_client, store, range(1, 21), keep=holder)
    [worker] = holder
    assert store.sends == 2
    assert worker.metrics.counters["left_pending"] >= 1  # the refused batch, held and released
    pending = redis_client.xpending_range(KEY, GROUP, "-", "+", 1000)
    assert len(pending) >= worker.metrics.counters["left_pending"]  # none of it acked
    # every entry held was given its delivery back, the refused batch's too
    assert [p["times_delivered"] for p in pending] == [0] * len(pending)


_KILLED_MID_COMMIT = """
import os, signal, sys
import redis
from common.config import settings_from_mapping
from consumer.store import Store
from consumer.worker import Worker

class KillingStore(Store):
    def send(self, trades, quotes):
        sent = super().send(trades, quotes)
        if sent and any(t.trade_id == "5" for t in trades):
            os.kill(os.getpid(), signal.SIGKILL)  # its statement sent, its outcome unread
        return sent

settings = settings_from_mapping(
    {"consumer": {"block_ms": 200, "claim_every_s": 3600},
     "feeds": [{"exchange": "binance", "symbols": ["BTC-USDT"]}]}, {})
client = redis.Redis.from_url(sys.argv[1])
worker = Worker.from_settings(settings, name="w1", streams=[sys.argv[3]], redis_client=client,
                              store=KillingStore(sys.argv[2]))
worker.run(type("Never", (), {"is_set": staticmethod(lambda: False)})())
"""


def test_a_consumer_killed_with_a_commit_in_flight_stores_it_once_after_the_restart(
    redis_client: redis.Redis, redis_url: str, database_url: str
) -> None:
    """SIGKILL right after a batch's statement is sent (the commit in flight, nothing acked):
    its entries stay pending; the consumer started again under its name reads them again,
    and every row is stored once (the killed batch's are duplicates of what PostgreSQL had
    committed), every entry acked."""
    redis_client.xgroup_create(KEY, GROUP, id="0", mkstream=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_MID_COMMIT, redis_url, database_url, KEY],
        cwd=os.getcwd(),
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if any(c["name"] == b"w1" for c in redis_client.xinfo_consumers(KEY, GROUP)):
                break
            time.sleep(0.01)
        for i in range(1, 11):
            redis_client.xadd(KEY, frame(i))  # type: ignore[arg-type]
            time.sleep(0.004)
        assert proc.wait(30) == -9  # killed by its own hook: the batch with trade 5 was sent
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_pending = redis_client.xpending(KEY, GROUP)["pending"]
    assert killed_pending >= 1  # the batch in flight was not acked
    assert 5 in trade_ids(database_url)  # ... though PostgreSQL committed it
    store = WatchingStore(database_url, redis_client)
    worker = run_paced(redis_client, store, range(11, 21))
    assert trade_ids(database_url) == list(range(1, 21))  # each once
    assert redis_client.xpending(KEY, GROUP)["pending"] == 0
    assert worker.metrics.counters["rows_duplicate"] >= 1  # the killed batch, written again


def test_redis_connections_killed_with_a_commit_in_flight_lose_and_double_nothing(
    redis_client: redis.Redis, database_url: str
) -> None:
    """Every connection of the worker to Redis is killed (a restart, a fail-over) right after
    the 3rd batch's statement is sent: the read fails and is retried, the commit's outcome is
    read after the next read that succeeds, and every row is stored once, every entry acked."""
    store = WatchingStore(database_url, redis_client)
    kills = 0

    def kill_redis_clients(trades: Sequence[Trade]) -> None:
        nonlocal kills
        if store.sends == 3:
            kills += redis_client.client_kill_filter(_type="normal", skipme=True)

    store.after_send = kill_redis_clients
    worker = run_paced(redis_client, store, range(1, 31))
    assert kills >= 1
    assert trade_ids(database_url) == list(range(1, 31))
    assert redis_client.xpending(KEY, GROUP)["pending"] == 0
    assert worker.metrics.counters["retries:read"] >= 1 and worker.deferred_commits >= 3
