"""Worker and publisher against a real Redis: acks follow commits, claims, pipelining."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import hiredis
import psycopg
import pytest
import redis

from common.config import settings_from_mapping
from common.envelope import RUN_MAX, Envelope, decode_entry, raw_key
from common.errors import TransientError
from common.metrics import Metrics
from common.records import Quote, Trade
from common.servers import free_port
from consumer.reads import GroupReads
from consumer.store import Store
from consumer.worker import Worker
from producer.publisher import Publisher
from producer.wire import RedisWire, XaddPacker, pack_runs

pytestmark = pytest.mark.integration

KEY = raw_key("binance")
SETTINGS = settings_from_mapping(
    {
        "consumer": {"batch_ms": 10, "claim_idle_ms": 1000, "claim_every_s": 0.05, "block_ms": 50},
        "feeds": [{"exchange": "binance", "symbols": ["BTC-USDT"]}],
    },
    {},
)


def frame(i: int) -> dict[bytes, bytes]:
    body = (
        f'{{"e":"trade","E":1700000000000,"s":"BTCUSDT","t":{i},"p":"1.{i}","q":"1",'
        f'"T":1700000000000,"m":false,"M":true}}'
    ).encode()
    return Envelope(body, False, "binance", "", "c", i, 1_700_000_000_000_000_000).fields()


class Once:
    """A stop flag that is set after the store has written ``n`` trades."""

    def __init__(self, store: CountingStore, n: int) -> None:
        self.store, self.n = store, n

    def is_set(self) -> bool:
        return self.store.stored >= self.n


class CountingStore(Store):
    """Counts and fails across its clones (each writer thread writes through a clone that keeps
    this class and shares these counters)."""

    def __init__(self, url: str, failures: int = 0, client: redis.Redis | None = None) -> None:
        super().__init__(url)
        self.shared = {"failures": failures, "stored": 0}
        self.client = client
        self.pending_seen: list[int] = []

    @property
    def stored(self) -> int:
        return self.shared["stored"]

    def write(self, trades: Sequence[Trade], quotes: Sequence[Quote]) -> tuple[int, int]:
        if self.client is not None:
            self.pending_seen.append(int(self.client.xpending(KEY, "tickvault")["pending"]))
        if self.shared["failures"]:
            self.shared["failures"] -= 1
            raise TransientError("simulated lost connection")
        result = super().write(trades, quotes)
        self.shared["stored"] += len(trades)
        return result


def make_worker(client: redis.Redis, store: Store, name: str = "w1") -> Worker:
    worker = Worker.from_settings(
        SETTINGS, name=name, streams=[KEY], redis_client=client, store=store
    )
    worker.sleep = lambda s: None  # backoff without waiting
    return worker


def test_ack_only_after_commit_and_retry_keeps_the_batch(
    redis_client: redis.Redis, database_url: str
) -> None:
    for i in range(1, 51):
        redis_client.xadd(KEY, frame(i))
    store = CountingStore(database_url, failures=2, client=redis_client)
    worker = make_worker(redis_client, store)
    try:
        worker.run(Once(store, 50))
    finally:
        store.close()
    # while the write was failing, all 50 entries stayed pending (no ack before commit)
    assert store.pending_seen[:3] == [50, 50, 50]
    assert redis_client.xpending(KEY, "tickvault")["pending"] == 0
    assert worker.metrics.counters["retries:postgres-write"] == 2
    assert worker.metrics.counters["trades"] == 50


def test_pending_entries_of_a_dead_consumer_are_claimed_and_deleted_ones_acked(
    redis_client: redis.Redis, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.xgroup_create(KEY, "tickvault", id="0", mkstream=True)
    ids = [redis_client.xadd(KEY, frame(i)) for i in range(1, 11)]
    # "dead" reads everything and dies without acking; two of its entries are then trimmed away
    redis_client.xreadgroup("tickvault", "dead", {KEY: ">"}, count=10)
    redis_client.xdel(KEY, ids[0], ids[1])
    store = CountingStore(database_url)
    worker = make_worker(redis_client, store, name="alive")
    stop = threading.Event()

    def done() -> bool:
        if worker.metrics.counters["claimed_deleted"] >= 2 and store.stored >= 8:
            stop.set()
        return stop.is_set()

    stop_flag: Any = type("Stop", (), {"is_set": staticmethod(done)})()
    with caplog.at_level(logging.INFO):
        try:
            worker.run(stop_flag)
        finally:
            store.close()
    assert worker.metrics.counters["claimed"] == 8
    assert worker.metrics.counters["claimed_deleted"] == 2
    assert redis_client.xpending(KEY, "tickvault")["pending"] == 0
    assert "no longer exist" in caplog.text


PACKER = XaddPacker(KEY, "binance", "", "c")


async def _publish(url: str, n: int, buffer_frames: int = 100_000) -> tuple[Publisher, Metrics]:
    metrics = Metrics("producer")
    pub = Publisher(
        RedisWire(url, timeout=0.5), buffer_frames=buffer_frames, pipeline_max=500,
        metrics=metrics, high_water=buffer_frames,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(pub.run(stop, drain_budget_s=1.0))
    for i in range(n):
        fields = frame(i)
        pub.put(PACKER, fields[b"f"], False, i, int(fields[b"t"]))
        if i % 1000 == 0:
            await asyncio.sleep(0)
    stop.set()
    await task
    return pub, metrics


def test_publisher_pipelines_and_keeps_order(redis_client: redis.Redis, redis_url: str) -> None:
    _, metrics = asyncio.run(_publish(redis_url, 5000))
    entries = redis_client.xrange(KEY)
    frames = [env for _, fields in entries for env in decode_entry(dict(fields))]
    assert [env.seq for env in frames] == list(range(5000))
    assert frames[7] == Envelope(
        frame(7)[b"f"], False, "binance", "", "c", 7, 1_700_000_000_000_000_000
    )
    # frames queued together share entries (runs), at most RUN_MAX each
    assert len(entries) < 5000 / 10
    assert max(len(decode_entry(dict(fields))) for _, fields in entries) == RUN_MAX
    # exactly the envelope the consumer reads, field order included (its fast path)
    redis_client.set_response_callback("XRANGE", lambda r, **_: r)
    names = {tuple(raw[::2]) for _, raw in redis_client.xrange(KEY)}
    run = (b"f", b"k", b"e", b"x", b"c", b"n", b"t", b"l")
    assert run in names and names <= {run, run[:-1]}  # a lone frame's entry has no "l"
    assert metrics.counters["published"] == 5000
    assert metrics.counters["entries"] == len(entries)
    assert metrics.counters["round_trips"] <= 5000 / 100  # batched, not one XADD per trip


def test_the_stream_keeps_about_maxlen_frames_however_many_share_an_entry(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """Three waves of 3,200 frames, a second apart, with ``max_frames`` 3,000: runs of 32 make
    ~100 entries a wave, far below any entry cap, yet the stream keeps only the last wave."""

    redis_client.xgroup_create(KEY, "tickvault", id="0", mkstream=True)

    def consume_all() -> None:
        for _, entries in redis_client.xreadgroup("tickvault", "c", {KEY: ">"}) or []:
            redis_client.xack(KEY, "tickvault", *[entry_id for entry_id, _ in entries])

    async def waves() -> Metrics:
        metrics = Metrics("producer")
        pub = Publisher(
            RedisWire(redis_url), buffer_frames=100_000, pipeline_max=2_000, metrics=metrics,
            max_frames=3_000, trim_every_s=0.0,
        )  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop))
        for wave in range(3):
            for i in range(wave * 3_200, (wave + 1) * 3_200):
                pub.put(PACKER, frame(i)[b"f"], False, i, 1_700_000_000_000_000_000)
            await asyncio.sleep(1.05)  # the wave is sent at once; the next lands a second on
            consume_all()  # trimming stops at what the group has not acked
        stop.set()
        await task
        return metrics

    metrics = asyncio.run(waves())
    kept = [env.seq for _, f in redis_client.xrange(KEY) for env in decode_entry(dict(f))]
    assert metrics.counters["trims"] >= 1
    assert 3_000 <= len(kept) <= 3_200 + RUN_MAX
    assert kept == list(range(9_600 - len(kept), 9_600))  # the newest, in order


def test_publisher_buffers_while_redis_is_down_and_counts_drops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens
    with caplog.at_level(logging.WARNING):
        _, metrics = asyncio.run(_publish(url, 300, buffer_frames=200))
    assert metrics.counters["dropped"] == 100
    assert metrics.counters["unsent_at_stop"] == 200
    assert "buffering frames" in caplog.text and "dropped" in caplog.text


def test_replay_of_a_range_stops_at_its_end(redis_client: redis.Redis, database_url: str) -> None:
    from consumer.replay import replay

    ids = [redis_client.xadd(KEY, frame(i)).decode() for i in range(1, 11)]
    store = CountingStore(database_url)
    try:
        counts = replay(SETTINGS, [KEY], start=ids[2], end=ids[6], client=redis_client, store=store)
    finally:
        store.close()
    assert store.stored == 5  # entries 3..7 inclusive
    assert counts["rows_new"] == 5
    assert [g["name"] for g in redis_client.xinfo_groups(KEY)] == []  # temporary group removed


@pytest.mark.parametrize("as_run", [False, True], ids=["entry-per-frame", "one-run"])
def test_a_row_postgres_rejects_is_dead_lettered_and_the_rest_of_its_batch_stored(
    redis_client: redis.Redis, database_url: str, as_run: bool
) -> None:
    """A row that passes validation but that PostgreSQL refuses for a data reason (here a CHECK
    constraint the test adds: SQLSTATE 23514): the batch is refused, its frames are written again
    in halves, the bad frame goes to the dead-letter stream alone with PostgreSQL's reason, and
    every entry is acked. The same when the three frames share one entry (a run)."""
    okx_key = raw_key("okx")
    settings = settings_from_mapping(
        {
            "consumer": {"batch_ms": 200, "block_ms": 50, "claim_every_s": 3600},
            "feeds": [{"exchange": "okx", "symbols": ["BTC-USDT"]}],
        },
        {},
    )
    ts_ms = 1_700_000_000_000
    ids = ["1", "2", "3"]
    bodies = [
        (
            '{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
            f'"tradeId":"{trade_id}","px":"42.5","sz":"0.1","side":"buy","ts":"{ts_ms}"}}]}}'
        ).encode()
        for trade_id in ids
    ]
    if as_run:
        packer = XaddPacker(okx_key, "okx", "", "c")
        payload, _ = pack_runs(
            (packer, body, False, n, ts_ms * 10**6) for n, body in enumerate(bodies)
        )
        reader = hiredis.Reader()
        reader.feed(payload)
        redis_client.execute_command(*reader.gets())
    else:
        for n, body in enumerate(bodies):
            env = Envelope(body, False, "okx", "", "c", n, ts_ms * 10**6)
            redis_client.xadd(okx_key, env.fields())  # type: ignore[arg-type]
    store = Store(database_url)
    store.connect()  # the schema, then a constraint that refuses trade 2
    store.conn.execute("ALTER TABLE trades ADD CONSTRAINT no_two CHECK (trade_id <> '2')")
    worker = Worker.from_settings(
        settings, name="w1", streams=[okx_key], redis_client=redis_client, store=store
    )
    worker.sleep = lambda s: None
    done = threading.Event()

    def stored() -> bool:
        if worker.metrics.counters["frames"] >= 3:
            done.set()
        return done.is_set()

    try:
        worker.run(type("Stop", (), {"is_set": staticmethod(stored)})())
    finally:
        store.close()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT trade_id FROM trades ORDER BY trade_id").fetchall()
    assert rows == [("1",), ("3",)]
    [(_, dead)] = redis_client.xrange("tickvault:dead:{okx}")
    assert dead[b"reason"].startswith(b"postgres rejected (23514):")
    assert b"no_two" in dead[b"reason"]
    assert dead[b"f"] == bodies[1] and dead[b"n"] == b"1" and b"l" not in dead
    [(first_id, _)] = redis_client.xrange(okx_key, count=1)
    second_id = redis_client.xrange(okx_key)[1 if not as_run else 0][0].decode()
    assert dead[b"origin"].decode() == (f"{first_id.decode()}/1" if as_run else second_id)
    assert redis_client.xpending(okx_key, "tickvault")["pending"] == 0


def test_entries_of_a_killed_consumer_past_their_budget_are_dead_lettered_the_rest_stored(
    redis_client: redis.Redis, database_url: str
) -> None:
    """A consumer that died holding entries (as a SIGKILL leaves them: pending, no error
    recorded): those delivered ``max_deliveries`` times already are dead-lettered unprocessed by
    the consumer that claims them, the others stored; all are acked."""
    redis_client.xgroup_create(KEY, "tickvault", id="0", mkstream=True)
    ids = [redis_client.xadd(KEY, frame(i)) for i in range(1, 7)]
    redis_client.xreadgroup("tickvault", "killed", {KEY: ">"}, count=6)
    redis_client.xclaim(KEY, "tickvault", "killed", 0, ids[:2], retrycount=5, justid=True)
    redis_client.xclaim(KEY, "tickvault", "killed", 0, ids[2:], retrycount=1, justid=True)
    time.sleep(1.1)  # idle past claim_idle_ms (1 s)
    store = CountingStore(database_url)
    worker = make_worker(redis_client, store, name="survivor")
    try:
        worker.run(Once(store, 4))
    finally:
        store.close()
    with psycopg.connect(database_url) as conn:
        stored = sorted(int(r[0]) for r in conn.execute("SELECT trade_id FROM trades"))
    assert stored == [3, 4, 5, 6]
    dead = redis_client.xrange("tickvault:dead:{binance}")
    assert sorted(f[b"origin"] for _, f in dead) == sorted(ids[:2])
    assert all(f[b"reason"].startswith(b"delivered 6 times: no error recorded") for _, f in dead)
    assert redis_client.xpending(KEY, "tickvault")["pending"] == 0
    assert worker.metrics.counters["over_budget"] == 2


def test_a_read_carrying_acks_is_woken_once_when_the_reads_reply_comes(
    redis_client: redis.Redis,
) -> None:
    """The XACKs' replies come at once, the read's after up to BLOCK: the reader sleeps
    through the first (SO_RCVLOWAT) and reads all of them when the read's comes, on a quiet
    stream too, and with acks that ack fewer ids than were sent (shorter replies)."""
    key = raw_key("lowat")
    r = redis_client
    r.delete(key, "lowat:not-a-stream")
    r.xgroup_create(key, "g", id="0", mkstream=True)
    ids = [r.xadd(key, {"f": b"x"}).decode() for _ in range(12)]
    r.xreadgroup("g", "c", {key: ">"})  # pending for c
    reads = GroupReads(r, "g", "c")
    answered: list[tuple[float, BaseException | None]] = []

    def on_acks(error: BaseException | None) -> None:
        answered.append((time.monotonic(), error))

    start = time.monotonic()
    reply, error = reads.read({key: ">"}, 10, 300, [(key, ids)], on_acks)
    assert reply is None and error is None and r.xpending(key, "g")["pending"] == 0
    assert answered[0][0] - start >= 0.25  # not woken by the ack's reply: by the read's
    # ten ids, none pending: ":0" is shorter than ":10"; the read's nil reply still wakes it
    start = time.monotonic()
    reply, error = reads.read({key: ">"}, 10, 200, [(key, ids[:10])], on_acks)
    assert reply is None and error is None and 0.15 <= time.monotonic() - start < 5
    # a frame during the block: its reply comes with the ack's
    threading.Timer(0.1, lambda: r.xadd(key, {"f": b"y"})).start()
    start = time.monotonic()
    reply, error = reads.read({key: ">"}, 10, 5000, [(key, ids[:1])], on_acks)
    assert reply and error is None and time.monotonic() - start < 4
    # an XACK refused (a key that is no stream): its error reply wakes the reader at once
    r.set("lowat:not-a-stream", "x")
    reply, error = reads.read({key: ">"}, 10, 200, [("lowat:not-a-stream", ["1-1"])], on_acks)
    assert isinstance(error, redis.ResponseError) and "WRONGTYPE" in str(error)
    assert reply is None and answered[-1][1] is error
    # and the socket wakes for every byte again: a read without acks
    reply, error = reads.read({key: "0"}, 100, 0)
    assert reply and error is None
    reads.close()
    r.delete(key, "lowat:not-a-stream")


def test_a_read_waiting_past_its_acks_replies_sees_its_connection_killed_at_once(
    redis_client: redis.Redis,
) -> None:
    """While the reader sleeps through the XACK's reply (SO_RCVLOWAT), the server closes the
    connection (CLIENT KILL, as a fail-over or a restart does): the read fails at once with a
    connection error, not at BLOCK's end; the ack had been applied, and the next read connects
    afresh (the socket's mark does not outlive it)."""
    key = raw_key("lowat-killed")
    r = redis_client
    r.delete(key)
    r.xgroup_create(key, "g", id="0", mkstream=True)
    ids = [r.xadd(key, {"f": b"x"}).decode() for _ in range(3)]
    r.xreadgroup("g", "c", {key: ">"})
    reads = GroupReads(r, "g", "c")
    outcome: list[BaseException | float] = []

    def read() -> None:
        start = time.monotonic()
        try:
            reads.read({key: ">"}, 10, 10_000, [(key, ids)], lambda error: None)
        except BaseException as exc:
            outcome.append(exc)
        outcome.append(time.monotonic() - start)

    thread = threading.Thread(target=read)
    thread.start()
    deadline = time.monotonic() + 5
    victim = None
    while victim is None and time.monotonic() < deadline:
        clients = r.client_list()
        victim = next((c for c in clients if c.get("cmd") == "xreadgroup"), None)
        time.sleep(0.02)
    assert victim is not None, "the read never blocked"
    r.client_kill_filter(_id=victim["id"])
    thread.join(5)
    assert not thread.is_alive()
    error, took = outcome
    assert isinstance(error, redis.ConnectionError) and isinstance(took, float) and took < 4
    assert r.xpending(key, "g")["pending"] == 0  # the XACK ran before the read blocked
    r.xadd(key, {"f": b"y"})
    reply, ack_error = reads.read({key: ">"}, 10, 0)
    assert reply and ack_error is None
    reads.close()
    r.delete(key)


def test_a_stream_of_big_frames_is_read_a_few_entries_at_a_time_and_stored_whole(
    redis_client: redis.Redis, database_url: str
) -> None:
    """Entries of 256 KiB (a venue's big frames, or a backlog of them): each XREADGROUP asks for
    about ReadSize.max_bytes of them, not READ_MAX (a reply of gigabytes at 8 MiB frames), and
    every trade is stored once."""
    pad = "x" * (256 << 10)
    for i in range(1, 61):
        body = (
            f'{{"e":"trade","E":1700000000000,"s":"BTCUSDT","t":{i},"p":"1.{i}","q":"1",'
            f'"T":1700000000000,"m":false,"M":true,"pad":"{pad}"}}'
        ).encode()
        redis_client.xadd(
            KEY, Envelope(body, False, "binance", "", "c", i, 1_700_000_000_000_000_000).fields()
        )
    store = CountingStore(database_url)
    worker = make_worker(redis_client, store)
    worker.read_size.max_bytes = 4 << 20
    counts: list[int] = []
    count = worker._count

    def recorded() -> int:
        counts.append(count())
        return counts[-1]

    worker._count = recorded  # type: ignore[method-assign]
    try:
        worker.run(Once(store, 60))
    finally:
        store.close()
    assert store.stored == 60 and worker.metrics.counters["trades"] == 60
    assert counts[0] == 4  # before any read: 1 MiB an entry assumed
    assert max(counts[1:]) <= 16  # then 4 MiB / ~256 KiB an entry, not 1,000 entries
    assert len(counts) >= 60 // 16
