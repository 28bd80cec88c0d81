"""Each class of error, against the real servers (``common.errors``, the one classification).

- Fatal refusals (a revoked privilege, a read-only database, a missing table, a Redis key of
  another type, an ACL that forbids XACK, a password the client does not send): the worker raises
  an error that ``fatal_error`` maps to its exit status (3 PostgreSQL, 4 Redis), the processes
  exit with that status and say the fix, and nothing is acked or dead-lettered: every entry the
  worker held stays pending, its delivery given back (``consumer.claims`` ``release``).
- Transient ones (Redis out of memory, a Redis demoted to a replica, PostgreSQL backends
  terminated) are retried; once the server is back everything arrives, exactly once.

Anything changed on a Redis server (ACL, CONFIG, REPLICAOF) is changed on a server of the test's
own (``own_redis``), never on the shared session server, which may be the machine's own Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg import sql

from common.config import Settings, settings_from_mapping
from common.envelope import Envelope, dead_key, decode_entry, raw_key
from common.errors import ExitStatus, FatalError, fatal_error
from common.metrics import Metrics
from common.records import Quote, Trade
from common.servers import RedisServer, free_port
from consumer.deadletter import errors_key
from consumer.store import Store
from consumer.worker import Worker
from producer.publisher import Publisher
from producer.wire import RedisWire, XaddPacker
from tests.conftest import SLOW
from tests.e2e.harness import Feed, Pipeline, pipeline
from tests.integration.conftest import Role, admin_execute, as_user
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

EXCHANGE = "binance"
KEY = raw_key(EXCHANGE)
DEAD = dead_key(EXCHANGE)
GROUP = "tickvault"
N = 20  # entries per test: one read takes them all (see Worker._count)
APP = "tickvault-consumer"  # the consumer's application_name in pg_stat_activity


def settings(**consumer: Any) -> Settings:
    return settings_from_mapping(
        {
            "consumer": {
                "batch_ms": 10,
                "block_ms": 50,
                "claim_every_s": 3600,  # no claiming: one consumer holds everything
                "backoff_max_s": 0.2,
                "stop_timeout_s": 2,
                **consumer,
            },
            "feeds": [{"exchange": EXCHANGE, "symbols": ["BTC-USDT"]}],
        },
        {},
    )


def frame(i: int) -> dict[bytes, bytes]:
    body = (
        f'{{"e":"trade","E":1700000000000,"s":"BTCUSDT","t":{i},"p":"1.{i}","q":"1",'
        f'"T":1700000000000,"m":false,"M":true}}'
    ).encode()
    return Envelope(body, False, EXCHANGE, "", "c", i, 1_700_000_000_000_000_000).fields()


def bad_frame(i: int) -> dict[bytes, bytes]:
    """A frame no parser can read: the worker dead-letters it."""
    return Envelope(b"{not json", False, EXCHANGE, "", "c", i, 1_700_000_000_000_000_000).fields()


def add_entry(client: redis.Redis, fields: dict[bytes, bytes]) -> str:
    entry_id: Any = client.xadd(KEY, fields)  # type: ignore[arg-type]
    return str(entry_id.decode())


def add_frames(client: redis.Redis, n: int = N, start: int = 1) -> list[str]:
    return [add_entry(client, frame(i)) for i in range(start, start + n)]


def add_with_a_bad_frame(client: redis.Redis) -> str:
    """N entries, the middle one a frame no parser reads; returns its id. Its dead letter is
    written after the batch's commit, before the ack: a fatal refusal must prevent both."""
    half = N // 2
    add_frames(client, half)
    bad = add_entry(client, bad_frame(half + 1))
    add_frames(client, N - half - 1, start=half + 2)
    return bad


def make_worker(client: redis.Redis, store: Store, **options: Any) -> Worker:
    worker = Worker.from_settings(
        settings(), name="w1", streams=[KEY], redis_client=client, store=store, **options
    )
    worker.sleep = lambda s: time.sleep(min(s, 0.01))  # backoff, but short
    return worker


class Until:
    """A stop flag: set once ``done()`` holds, or ``timeout`` seconds (x SLOW) after it is made
    (the test's assertions then say what did not happen). ``step()`` runs at each look, one
    look at a time: the worker's main loop looks at least every ``block_ms``, and its writers
    look too (the retrier checks for a stop)."""

    def __init__(
        self,
        done: Callable[[], bool] = lambda: False,
        *,
        step: Callable[[], None] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.done, self.step = done, step
        self.deadline = time.monotonic() + timeout * SLOW
        self.lock = threading.Lock()

    def is_set(self) -> bool:
        if self.step is not None:
            with self.lock:
                self.step()
        return self.done() or time.monotonic() > self.deadline


class Tripwire(Store):
    """A store that calls ``trip()`` once, just before the ``at``-th write (counted over it and
    its clones, the other writers): the deployment changes while the worker holds entries."""

    def __init__(self, url: str, trip: Callable[[], object], *, at: int = 1) -> None:
        super().__init__(url)
        self.trip, self.at = trip, at
        self.writes = itertools.count(1)  # shared with the clones (copy.copy), as is the lock
        self.lock = threading.Lock()

    def write(self, trades: Sequence[Trade], quotes: Sequence[Quote]) -> tuple[int, int]:
        with self.lock:  # the other writer waits until the trip is done
            if next(self.writes) == self.at:
                self.trip()
        return super().write(trades, quotes)


def rows(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT trade_id FROM trades ORDER BY ts, trade_id")]


def migrate_as_owner(url: str) -> None:
    store = Store(url)
    store.connect()
    store.close()


def terminate_consumers(url: str) -> int:
    """Terminate the consumer's sessions in the database of ``url``; wait until they are gone."""
    with psycopg.connect(url, autocommit=True) as conn:
        got = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (APP,),
        ).fetchone()
    return int(got[0]) if got else 0


def pending_deliveries(client: redis.Redis) -> list[int]:
    """The delivery count of each pending entry (XPENDING's extended form)."""
    found = client.xpending_range(KEY, GROUP, min="-", max="+", count=10 * N)
    return [int(r["times_delivered"]) for r in found]


def assert_nothing_acked(client: redis.Redis, held: int = N) -> None:
    """``held`` entries still pending with their delivery given back; no dead letter; no error
    recorded against them (that is for bugs, not for a server's refusal)."""
    assert client.xpending(KEY, GROUP)["pending"] == held
    assert pending_deliveries(client) == [0] * held
    assert client.xlen(DEAD) == 0
    assert client.exists(errors_key(KEY)) == 0


def assert_fatal(exc: BaseException, status: ExitStatus, code: str) -> FatalError:
    fatal = fatal_error(exc)
    assert fatal is not None, f"not a fatal refusal: {exc!r}"
    assert (fatal.status, fatal.code) == (status, code), repr(exc)
    return fatal


# -- a role of the test's own ---------------------------------------------------------------------


def grant_all_but_insert(database_url: str, role: Role) -> None:
    """What the consumer needs to start (its migrations are CREATE ... IF NOT EXISTS, which
    PostgreSQL checks against CREATE on the schema even when the table exists), and SELECT on
    the tables, but INSERT on ``trades`` granted and then revoked."""
    ident = sql.Identifier(role.name)
    admin_execute(
        database_url,
        sql.SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(ident),
        sql.SQL("GRANT SELECT ON tickvault_migrations TO {}").format(ident),
        sql.SQL("GRANT SELECT, INSERT ON trades, quotes TO {}").format(ident),
        sql.SQL("REVOKE INSERT ON trades FROM {}").format(ident),
    )


# -- PostgreSQL: fatal ----------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["at-start", "at-write"])
def test_a_missing_privilege_stops_the_worker_with_nothing_acked(
    redis_client: redis.Redis, database_url: str, role: Role, when: str
) -> None:
    """at-start: the role may not create in the schema, so the migrations at connect are refused;
    at-write: INSERT on trades was revoked, so the first batch is refused while the worker holds
    every entry. Both 42501, fatal: nothing acked, nothing dead-lettered."""
    migrate_as_owner(database_url)
    if when == "at-write":
        grant_all_but_insert(database_url, role)
    else:  # PostgreSQL >= 15 grants no CREATE on public to PUBLIC; older ones did
        admin_execute(database_url, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    add_with_a_bad_frame(redis_client)
    store = Store(role.url)
    worker = make_worker(redis_client, store)
    with pytest.raises(psycopg.Error) as info:
        worker.run(Until())
    store.close()
    assert_fatal(info.value, ExitStatus.POSTGRES, "42501")
    if when == "at-write":
        assert "permission denied for table trades" in str(info.value)
        assert_nothing_acked(redis_client)
    else:
        assert "permission denied for schema public" in str(info.value)
        assert redis_client.xpending(KEY, GROUP)["pending"] == 0  # none was even read
        [group] = redis_client.xinfo_groups(KEY)
        assert group["last-delivered-id"] == b"0-0"
    assert rows(database_url) == []


def _read_only(database_url: str) -> None:
    name = urlsplit(database_url).path.lstrip("/")
    admin_execute(
        database_url,
        sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(
            sql.Identifier(name)
        ),
    )


@pytest.mark.parametrize("when", ["at-start", "after-reconnect"])
def test_a_read_only_database_stops_the_worker_with_nothing_acked(
    redis_client: redis.Redis, database_url: str, when: str
) -> None:
    """at-start: the database is read-only before the worker connects; after-reconnect: it
    becomes read-only (a fail-over to a standby) and the worker's sessions are cut just before
    its first write, so the write is retried on a new session, whose migrations are refused.
    25006, fatal: nothing acked, nothing dead-lettered."""
    migrate_as_owner(database_url)
    add_with_a_bad_frame(redis_client)

    def fail_over() -> None:
        _read_only(database_url)
        assert terminate_consumers(database_url) == 2  # one session per writer

    if when == "at-start":
        _read_only(database_url)
        store: Store = Store(database_url)
    else:
        store = Tripwire(database_url, fail_over)
    worker = make_worker(redis_client, store)
    with pytest.raises(psycopg.Error) as info:
        worker.run(Until())
    store.close()
    assert_fatal(info.value, ExitStatus.POSTGRES, "25006")
    assert "read-only transaction" in str(info.value)
    if when == "at-start":
        assert redis_client.xpending(KEY, GROUP)["pending"] == 0
    else:
        assert worker.metrics.counters["retries:postgres-write"] >= 1  # the cut was transient
        assert_nothing_acked(redis_client)
    assert rows(database_url) == []


@pytest.mark.parametrize("when", ["at-start", "at-write"])
def test_a_dropped_table_stops_the_worker_with_nothing_acked(
    redis_client: redis.Redis, database_url: str, when: str
) -> None:
    """``trades`` dropped (with its partitions): at start the migrations, already at their
    version, make today's partition ``LIKE trades``; at write time the INSERT names it. 42P01,
    fatal (the fix says to run the migrations): nothing acked, nothing dead-lettered."""
    migrate_as_owner(database_url)
    add_with_a_bad_frame(redis_client)

    def drop() -> None:
        admin_execute(database_url, "DROP TABLE trades CASCADE")

    if when == "at-start":
        drop()
        store: Store = Store(database_url)
    else:
        store = Tripwire(database_url, drop)
    worker = make_worker(redis_client, store)
    with pytest.raises(psycopg.Error) as info:
        worker.run(Until())
    store.close()
    fatal = assert_fatal(info.value, ExitStatus.POSTGRES, "42P01")
    assert 'relation "trades" does not exist' in str(info.value)
    assert "tickvault migrate" in fatal.fix
    if when == "at-start":
        assert redis_client.xpending(KEY, GROUP)["pending"] == 0
    else:
        assert_nothing_acked(redis_client)


@pytest.mark.parametrize("refusal", ["no-such-role", "no-such-database"])
def test_a_connection_the_server_refuses_stops_the_worker_at_start(
    redis_client: redis.Redis, database_url: str, refusal: str
) -> None:
    """libpq reports these refusals as text without a SQLSTATE; they are fatal all the same
    (28: authentication, 3D: missing database), never retried as an outage."""
    add_frames(redis_client)
    parts = urlsplit(database_url)
    if refusal == "no-such-role":
        url, code = as_user(database_url, f"tv_nobody_{os.getpid()}", "pw"), "28"
    else:
        url, code = urlunsplit(parts._replace(path="/tv_no_such_database")), "3D"
    store = Store(url)
    worker = make_worker(redis_client, store)
    with pytest.raises(psycopg.Error) as info:
        worker.run(Until(timeout=5))
    fatal = fatal_error(info.value)
    assert fatal is not None, repr(info.value)
    assert fatal.status == ExitStatus.POSTGRES and fatal.code.startswith(code), fatal
    assert worker.metrics.counters["retries:postgres-connect"] == 0
    assert redis_client.xpending(KEY, GROUP)["pending"] == 0


# -- the processes' exit statuses -----------------------------------------------------------------


def _pipeline(work: Path, redis_url: str, database_url: str) -> AbstractContextManager[Pipeline]:
    return pipeline(
        work=work, redis_url=redis_url, database_url=database_url,
        feeds=[Feed(EXCHANGE, ["BTC-USDT"])],
    )  # fmt: skip


def _exit_status(p: Pipeline, proc: subprocess.Popen[bytes], name: str, timeout: float) -> int:
    try:
        return proc.wait(timeout * SLOW)
    except subprocess.TimeoutExpired:
        late = f"{name} still running after {timeout * SLOW:.0f} s"
        raise AssertionError(f"{late}:\n{p.log(name)}") from None


def test_the_consumer_process_exits_3_on_a_revoked_privilege(
    redis_client: redis.Redis, redis_url: str, database_url: str, role: Role, work_dir: Path
) -> None:
    migrate_as_owner(database_url)
    grant_all_but_insert(database_url, role)
    add_with_a_bad_frame(redis_client)
    with _pipeline(work_dir, redis_url, role.url) as p:
        consumer = p.start_consumer("c1")
        status = _exit_status(p, consumer, "consumer-c1", timeout=10)
        log = p.log("consumer-c1")
    assert status == ExitStatus.POSTGRES, log
    assert "postgresql refused (42501)" in log
    assert "permission denied for table trades" in log
    assert "Fix: grant the database user" in log
    assert "Traceback" not in log
    assert_nothing_acked(redis_client)
    assert rows(database_url) == []


def test_the_consumer_process_exits_4_on_a_stream_key_of_another_type(
    redis_client: redis.Redis, redis_url: str, database_url: str, work_dir: Path
) -> None:
    redis_client.set(KEY, b"not a stream")
    with _pipeline(work_dir, redis_url, database_url) as p:
        consumer = p.start_consumer("c1")
        status = _exit_status(p, consumer, "consumer-c1", timeout=10)
        log = p.log("consumer-c1")
    assert status == ExitStatus.REDIS, log
    assert "redis refused (WRONGTYPE)" in log
    assert "Fix: the stream key holds another type" in log
    assert redis_client.get(KEY) == b"not a stream"  # left as it was


def test_the_producer_process_exits_4_on_a_stream_key_of_another_type(
    redis_client: redis.Redis, redis_url: str, database_url: str, work_dir: Path
) -> None:
    redis_client.set(KEY, b"not a stream")
    with _pipeline(work_dir, redis_url, database_url) as p:
        p.simulator(rate=50, trades=50)
        producer = p.start_producer()
        status = _exit_status(p, producer, "producer", timeout=10)
        log = p.log("producer")
    assert status == ExitStatus.REDIS, log
    assert "redis refused (WRONGTYPE)" in log
    assert "Fix: the stream key holds another type" in log
    assert redis_client.get(KEY) == b"not a stream"


PACKER = XaddPacker(KEY, EXCHANGE, "", "c")


def publisher(url: str, metrics: Metrics) -> Publisher:
    return Publisher(
        RedisWire(url, timeout=2.0), buffer_frames=10_000, pipeline_max=50, metrics=metrics,
        backoff_max_s=0.2,
    )  # fmt: skip


def put_frames(pub: Publisher, n: int) -> None:
    for i in range(n):
        fields = frame(i)
        assert pub.put(PACKER, fields[b"f"], False, i, int(fields[b"t"]))


def published_seqs(client: redis.Redis) -> list[int]:
    entries: Any = client.xrange(KEY)
    return [env.seq for _, f in entries for env in decode_entry(dict(f))]


async def until(check: Callable[[], bool], task: Awaitable[Any], what: str) -> None:
    """Wait for ``check()`` while ``task`` (the publisher) runs; its failure fails the wait."""
    assert isinstance(task, asyncio.Task)
    deadline = time.monotonic() + 5 * SLOW
    while not check():
        if task.done():
            task.result()  # raises its error
            raise AssertionError(f"the publisher stopped before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_the_publisher_stops_on_wrongtype_and_keeps_its_buffer(
    redis_client: redis.Redis, redis_url: str
) -> None:
    redis_client.set(KEY, b"not a stream")
    metrics = Metrics("producer")
    pub = publisher(redis_url, metrics)
    put_frames(pub, N)
    with pytest.raises(FatalError) as info:
        asyncio.run(asyncio.wait_for(pub.run(asyncio.Event()), 5 * SLOW))
    assert_fatal(info.value, ExitStatus.REDIS, "WRONGTYPE")
    assert pub.buffered == N  # nothing counted as sent
    assert metrics.counters["published"] == 0
    assert metrics.counters["redis_errors"] == 0  # not taken for an outage
    assert redis_client.get(KEY) == b"not a stream"


# -- Redis: fatal, on a server of the test's own --------------------------------------------------


@pytest.fixture
def own_admin(own_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis.url)
    yield client
    client.close()


def test_an_acl_that_forbids_xack_stops_the_worker_after_the_commit_with_nothing_acked(
    own_redis: RedisServer, own_admin: redis.Redis, database_url: str
) -> None:
    """NOPERM on XACK: the rows were committed (harmless: inserts are idempotent), the ack is
    refused, fatal 4; the entries stay pending, their delivery given back (XCLAIM is allowed)."""
    own_admin.acl_setuser(
        "tv", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-xack"],
    )  # fmt: skip
    add_frames(own_admin)
    client = redis.Redis.from_url(f"redis://tv:pw@127.0.0.1:{own_redis.port}/0")
    store = Store(database_url)
    worker = make_worker(client, store)
    try:
        with pytest.raises(redis.RedisError) as info:
            worker.run(Until())
    finally:
        store.close()
        client.close()
    fatal = assert_fatal(info.value, ExitStatus.REDIS, "NOPERM")
    assert "xack" in fatal.problem.lower()
    assert len(rows(database_url)) == N
    assert worker.metrics.counters["acked"] == 0
    assert_nothing_acked(own_admin)


def test_the_consumer_process_exits_4_at_once_without_the_password(
    own_redis: RedisServer, own_admin: redis.Redis, database_url: str, work_dir: Path
) -> None:
    """NOAUTH: the URL lacks the password Redis requires. Fatal at the first command: exit 4
    within seconds, not a retry loop."""
    own_admin.config_set("requirepass", "secret")
    with _pipeline(work_dir, own_redis.url, database_url) as p:
        started = time.monotonic()
        consumer = p.start_consumer("c1")
        status = _exit_status(p, consumer, "consumer-c1", timeout=10)
        took = time.monotonic() - started
        log = p.log("consumer-c1")
    assert status == ExitStatus.REDIS, log
    assert "redis refused (NOAUTH)" in log
    assert "Fix: put the user and password in redis.url" in log
    assert took < 5 * SLOW, f"took {took:.1f} s to give up:\n{log}"


def test_the_publisher_stops_without_the_password(
    own_redis: RedisServer, own_admin: redis.Redis
) -> None:
    """The raw connection sends no AUTH when the URL has no password: its first pipeline is
    refused, fatal 4, and the frames stay in the buffer."""
    own_admin.config_set("requirepass", "secret")
    metrics = Metrics("producer")
    pub = publisher(own_redis.url, metrics)
    put_frames(pub, N)
    with pytest.raises(FatalError) as info:
        asyncio.run(asyncio.wait_for(pub.run(asyncio.Event()), 5 * SLOW))
    assert info.value.status == ExitStatus.REDIS
    assert pub.buffered == N
    assert metrics.counters["redis_errors"] == 0  # not taken for an outage


def test_the_publisher_names_the_password_as_the_fix_without_it(
    own_redis: RedisServer, own_admin: redis.Redis
) -> None:
    own_admin.config_set("requirepass", "secret")
    pub = publisher(own_redis.url, Metrics("producer"))
    put_frames(pub, N)
    with pytest.raises(FatalError) as info:
        asyncio.run(asyncio.wait_for(pub.run(asyncio.Event()), 5 * SLOW))
    fatal = assert_fatal(info.value, ExitStatus.REDIS, "NOAUTH")
    assert "password in redis.url" in fatal.fix


# -- transient: retried, then everything arrives once ---------------------------------------------


def test_the_publisher_buffers_through_oom_and_delivers_every_frame_once(
    own_redis: RedisServer, own_admin: redis.Redis
) -> None:
    """maxmemory below the memory in use (policy noeviction): every XADD is refused with OOM.
    The publisher keeps its frames and retries; when memory is back each arrives once, in
    order."""
    n = 200
    own_admin.config_set("maxmemory", "1")
    metrics = Metrics("producer")

    async def scenario() -> None:
        pub = publisher(own_redis.url, metrics)
        put_frames(pub, n)
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop))
        await until(lambda: metrics.counters["redis_errors"] >= 3, task, "OOM refusals")
        assert pub.buffered == n
        assert own_admin.xlen(KEY) == 0
        own_admin.config_set("maxmemory", "0")
        await until(lambda: metrics.counters["published"] >= n, task, "every frame sent")
        stop.set()
        await task

    asyncio.run(scenario())
    assert published_seqs(own_admin) == list(range(n))


def test_a_dead_letter_refused_by_oom_is_retried_then_written_and_acked(
    own_redis: RedisServer, own_admin: redis.Redis, database_url: str
) -> None:
    """Redis runs out of memory after the batch was read: its rows commit, its dead letter
    (an XADD) is refused with OOM and retried, nothing is acked meanwhile; with memory back the
    dead letter is written once and every entry acked."""
    bad = add_with_a_bad_frame(own_admin)
    store = Tripwire(database_url, lambda: own_admin.config_set("maxmemory", "1"))
    client = redis.Redis.from_url(own_redis.url)
    worker = make_worker(client, store)
    counters = worker.metrics.counters
    seen_pending: list[int] = []

    def memory_back() -> None:
        if counters["retries:dead-letter"] >= 3 and not seen_pending:
            seen_pending.append(int(own_admin.xpending(KEY, GROUP)["pending"]))
            own_admin.config_set("maxmemory", "0")

    try:
        worker.run(Until(lambda: counters["acked"] >= N, step=memory_back))
    finally:
        store.close()
        client.close()
    assert seen_pending == [N]  # while the dead letter was refused, nothing was acked
    assert counters["acked"] == N
    assert own_admin.xpending(KEY, GROUP)["pending"] == 0
    dead_letters: Any = own_admin.xrange(DEAD)
    [(_, dead)] = dead_letters
    assert dead[b"origin"] == bad.encode()
    assert len(rows(database_url)) == N - 1


def test_a_redis_demoted_to_replica_is_waited_out(
    own_redis: RedisServer, own_admin: redis.Redis, database_url: str
) -> None:
    """REPLICAOF a master that is not there: every write is refused with READONLY (XACK, and
    XREADGROUP, which moves the group's cursor). The worker retries its reads and its acks
    without exiting; after REPLICAOF NO ONE everything is stored and acked.

    The worker's reads do not block here (block_ms 0): a read *blocked* when the server is
    demoted gets UNBLOCKED instead, the case of the test after this one."""
    add_frames(own_admin)
    store = Tripwire(database_url, lambda: own_admin.replicaof("127.0.0.1", free_port()))
    client = redis.Redis.from_url(own_redis.url)
    worker = make_worker(
        client, store, block_ms=0, batch_entries=10, batch_ms=1000, flush_when_drained=False
    )
    counters = worker.metrics.counters
    promoted: list[tuple[int, int]] = []  # (acked, pending) when promoted

    def promote() -> None:
        if not promoted and counters["retries:ack"] >= 2 and counters["retries:read"] >= 2:
            promoted.append((counters["acked"], int(own_admin.xpending(KEY, GROUP)["pending"])))
            own_admin.replicaof("NO", "ONE")

    try:
        worker.run(Until(lambda: counters["acked"] >= N, step=promote))
    finally:
        store.close()
        client.close()
    # nothing acked while a replica: what was read by then (a batch or two) stayed pending
    [(acked, pending)] = promoted
    assert acked == 0 and 1 <= pending <= N, (promoted, worker.metrics.summary())
    assert own_admin.xpending(KEY, GROUP)["pending"] == 0
    assert sorted(rows(database_url), key=int) == [str(i) for i in range(1, N + 1)]
    assert own_admin.xlen(DEAD) == 0


def test_a_blocked_read_cut_short_by_a_demotion_is_retried(
    own_redis: RedisServer, own_admin: redis.Redis, database_url: str
) -> None:
    """The worker waits in XREADGROUP BLOCK on an empty stream; the server is demoted (as
    Sentinel does to an old master), which answers that read ``-UNBLOCKED``. A fail-over is
    transient: the worker must retry, then store what comes after the promotion."""
    client = redis.Redis.from_url(own_redis.url)
    store = Store(database_url)
    worker = make_worker(client, store, block_ms=5000)
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(stop)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="worker")
    thread.start()
    try:
        wait_for(
            lambda: int(own_admin.info("clients")["blocked_clients"]) >= 1 or failure,
            timeout=5,
            what="the worker blocked in XREADGROUP",
        )
        own_admin.replicaof("127.0.0.1", free_port())
        wait_for(
            lambda: worker.metrics.counters["retries:read"] >= 1 or failure,
            timeout=5,
            what="a read retried",
        )
        own_admin.replicaof("NO", "ONE")
        add_frames(own_admin)
        wait_for(
            lambda: worker.metrics.counters["acked"] >= N or failure or not thread.is_alive(),
            timeout=5,
            what="every entry acked",
        )
    finally:
        stop.set()
        thread.join(10)
        store.close()
        client.close()
    assert not failure, f"the worker stopped: {type(failure[0]).__name__}: {failure[0]}"
    assert worker.metrics.counters["acked"] == N
    assert len(rows(database_url)) == N


def test_postgres_sessions_terminated_mid_run_are_reconnected_and_nothing_is_lost_or_doubled(
    redis_client: redis.Redis, database_url: str
) -> None:
    """pg_terminate_backend of both writers' sessions after the first batch committed (57P01,
    or the connection just closes): the writes are retried on new sessions; every frame is
    stored exactly once and acked."""
    n = 4 * N
    add_frames(redis_client, n)
    killed: list[int] = []
    store = Tripwire(database_url, lambda: killed.append(terminate_consumers(database_url)), at=2)
    worker = make_worker(redis_client, store, batch_entries=N, batch_ms=1000)
    counters = worker.metrics.counters
    try:
        worker.run(Until(lambda: counters["acked"] >= n))
    finally:
        store.close()
    assert killed == [2]
    assert counters["retries:postgres-write"] >= 1
    assert counters["rows_new"] == n  # each row inserted once: no batch written twice
    stored = rows(database_url)
    assert sorted(stored, key=int) == [str(i) for i in range(1, n + 1)]
    assert redis_client.xpending(KEY, GROUP)["pending"] == 0
    assert redis_client.xlen(DEAD) == 0
