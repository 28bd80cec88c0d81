"""``tickvault status`` and the producer's heartbeat (status' pure parts are tested in
``tests/unit/test_status_problems.py``): snapshots of a real Redis and PostgreSQL holding
streams, groups, a heartbeat written by ``producer.heartbeat`` itself, trades, dead letters and
gaps; the exit statuses, the JSON document, servers that are down, and ``--watch`` stopped with
Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql
from websockets.asyncio.server import ServerConnection, serve

from common.config import load_settings
from common.envelope import dead_key, raw_key
from common.errors import ConfigError
from common.metrics import Metrics
from common.servers import RedisServer, free_port
from common.status.command import main
from common.status.gather import gather
from common.status.problems import find_problems
from common.symbols import parse_symbol
from common.venues import Channel, ConnectionPlan, Keepalive, get_venue
from consumer.schema import migrate
from producer.heartbeat import (
    FrameClock,
    current_fields,
    feed_record,
    feeds_key,
    pack,
    producer_of_key,
    publish,
)
from producer.publisher import Publisher
from producer.session import FeedSession, _Generation
from producer.wire import RedisWire
from tests.conftest import SLOW
from tests.e2e.harness import ROOT
from tests.integration.conftest import Role, admin_execute
from tests.unit.test_status_problems import kinds

pytestmark = pytest.mark.integration

NOW_NS = 1_800_000_000_000_000_000


def test_heartbeat_records_sample_the_frame_counters() -> None:
    clock = FrameClock()
    assert clock.observe("b/0", {}, 1) is None  # not connected yet
    assert clock.observe("b/0", {"c1": 0}, 2) is None  # connected, nothing received
    assert clock.observe("b/0", {"c1": 5}, 3) == 3
    assert clock.observe("b/0", {"c1": 5}, 4) == 3  # no new frame since
    assert clock.observe("b/0", {"c1": 5, "c2": 0}, 5) == 3  # a rollover's new connection
    assert clock.observe("b/0", {"c2": 1}, 6) == 6
    fields = {"a": {"heartbeat_ns": 9}, "b": {"heartbeat_ns": 9}, "old": {"heartbeat_ns": 4}}
    assert sorted(current_fields(fields)) == ["a", "b"]  # "old": an earlier run's feed
    assert producer_of_key(feeds_key("host-1")) == "host-1"


def session(label: int = 0) -> FeedSession:
    venue = get_venue("binance")
    plans = venue.plan(
        channels=[Channel.TRADES], symbols=[parse_symbol("BTC-USDT")], url=None, options={}
    )
    return FeedSession(venue, plans[0], None, Metrics("producer"))  # type: ignore[arg-type]


def test_a_sessions_state_and_its_record() -> None:
    s = session()
    assert s.state == "connecting"
    gen = _Generation("binance/0#7@1")
    gen.frames = 12
    s.open.append(gen)
    s.connected_since_ns = NOW_NS - 10**9
    now = time.monotonic()
    s.reconnected_at.extend([now - 4000, now - 100, now - 5])
    record = feed_record(s, FrameClock(), now_ns=NOW_NS, now=now, every_s=5.0)
    assert record == {
        "exchange": "binance", "context": "", "symbols": ["BTC-USDT"], "channels": ["trades"],
        "state": "connected", "connected_since": NOW_NS - 10**9, "last_frame_ns": NOW_NS,
        "reconnects_1h": 2, "conn": "binance/0#7@1", "heartbeat_ns": NOW_NS, "every_s": 5.0,
    }  # fmt: skip
    s.open.clear()
    s.phase = "backoff"
    assert s.state == "backoff"
    assert pack("k", {"binance/0": {"a": 1}}, 30) == (
        b'*4\r\n$4\r\nHSET\r\n$1\r\nk\r\n$9\r\nbinance/0\r\n$7\r\n{"a":1}\r\n'
        b"*3\r\n$6\r\nEXPIRE\r\n$1\r\nk\r\n$2\r\n30\r\n"
    )


# -- the heartbeat against a real Redis -----------------------------------------------------------


def test_the_heartbeat_writes_every_feed_with_a_ttl_then_stopped(
    redis_url: str, redis_client: redis.Redis
) -> None:
    sessions = [session(), session()]
    sessions[1].label = "binance/1"
    sessions[1].phase = "backoff"
    gen = _Generation("binance/0#1@1")
    sessions[0].open.append(gen)

    async def run() -> dict[bytes, bytes]:
        stop = asyncio.Event()
        task = asyncio.create_task(publish(redis_url, "p1", sessions, stop, every_s=0.05, ttl_s=7))
        for _ in range(500):  # the first write: at once
            if redis_client.exists(feeds_key("p1")):
                break
            await asyncio.sleep(0.01)
        gen.frames = 3
        await asyncio.sleep(0.15)
        live = redis_client.hgetall(feeds_key("p1"))
        stop.set()
        await asyncio.wait_for(task, 5)
        return live  # type: ignore[return-value]

    live = asyncio.run(run())
    records = {k.decode(): json.loads(v) for k, v in live.items()}
    assert sorted(records) == ["binance/0", "binance/1"]
    assert records["binance/0"]["state"] == "connected"
    assert records["binance/0"]["conn"] == "binance/0#1@1"
    assert records["binance/0"]["last_frame_ns"] is not None  # the counter moved
    assert records["binance/1"]["state"] == "backoff"
    assert records["binance/1"]["last_frame_ns"] is None
    assert 0 < redis_client.ttl(feeds_key("p1")) <= 7
    final = redis_client.hgetall(feeds_key("p1"))
    assert {json.loads(v)["state"] for v in final.values()} == {"stopped"}  # type: ignore[union-attr]


def test_a_heartbeat_without_redis_logs_once_and_keeps_going(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(publish(down, "p1", [session()], stop, every_s=0.02))
        await asyncio.sleep(0.3)  # a dozen ticks
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 5)  # returns, never raises

    with caplog.at_level(logging.WARNING, logger="producer.heartbeat"):
        asyncio.run(run())
    warnings = [r for r in caplog.records if r.name == "producer.heartbeat"]
    assert len(warnings) == 1 and "cannot write" in warnings[0].getMessage()


def test_a_sessions_state_follows_its_connections_and_the_heartbeat_shows_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A venue that sends three frames and hangs up, again and again: the session goes
    connecting -> connected -> backoff, counts its reconnects, and ends ``stopped``; the
    heartbeat (running beside it, as in the producer) shows the reconnects and a last frame."""

    async def venue(ws: ServerConnection) -> None:
        await ws.recv()  # the subscription
        for i in range(3):
            await ws.send(f'{{"e":"trade","s":"BTCUSDT","t":{i}}}')
        await asyncio.sleep(0.1)  # connected long enough to be seen so
        await ws.close()

    async def scenario() -> tuple[set[str], list[tuple[str, bool]], FeedSession, dict[str, Any]]:
        async with serve(venue, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            plan = ConnectionPlan(
                url=f"ws://127.0.0.1:{port}/ws", subscribe=('{"method":"SUBSCRIBE"}',),
                symbols=("BTC-USDT",), channels=(Channel.TRADES,), name="binance/0",
                keepalive=Keepalive(protocol_ping_s=None),
            )  # fmt: skip
            metrics = Metrics("producer")
            publisher = Publisher(
                RedisWire(redis_url), buffer_frames=100, pipeline_max=100, metrics=metrics
            )
            s = FeedSession(
                get_venue("binance"), plan, publisher, metrics,
                backoff_initial_s=0.2, backoff_max_s=0.2,
            )  # fmt: skip
            stop, pub_stop = asyncio.Event(), asyncio.Event()
            pub = asyncio.ensure_future(publisher.run(pub_stop))
            beat = asyncio.ensure_future(publish(redis_url, "p9", [s], stop, every_s=0.05))
            run = asyncio.ensure_future(s.run(stop))
            seen: list[tuple[str, bool]] = []
            deadline = time.monotonic() + 1.5 * SLOW
            while time.monotonic() < deadline:
                seen.append((s.state, s.connected_since_ns is not None))
                await asyncio.sleep(0.005)
            live: Any = redis_client.hget(feeds_key("p9"), "binance/0")
            stop.set()
            await asyncio.wait_for(asyncio.gather(run, beat), 10)
            pub_stop.set()
            await asyncio.wait_for(pub, 10)
            return {state for state, _ in seen}, seen, s, json.loads(live)

    states, seen, s, live = asyncio.run(scenario())
    assert states == {"connecting", "connected", "backoff"}
    assert all(since == (state == "connected") for state, since in seen)
    assert s.state == "stopped" and not s.open and s.connected_since_ns is None
    assert s.reconnects_within(3600, time.monotonic()) >= 3
    assert live["reconnects_1h"] >= 2 and live["last_frame_ns"] is not None
    assert live["state"] in ("connecting", "connected", "backoff")


# -- snapshots of real servers ---------------------------------------------------------------------


def write_config(path: Path, redis_url: str, database_url: str) -> str:
    path.write_text(
        f'[redis]\nurl = "{redis_url}"\n[database]\nurl = "{database_url}"\n'
        '[[feeds]]\nexchange = "binance"\nsymbols = ["BTC-USDT", "ETH-USDT"]\n'
    )
    return str(path)


@pytest.fixture
def config(tmp_path: Path, redis_url: str, database_url: str) -> Iterator[str]:
    with psycopg.connect(database_url) as conn:
        migrate(conn)
    yield write_config(tmp_path / "tickvault.toml", redis_url, database_url)


def now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()  # type: ignore[misc]
    return int(seconds) * 1000 + int(micros) // 1000


def heartbeat(client: redis.Redis, producer: str = "p1", **changes: Any) -> None:
    """A heartbeat as ``producer.heartbeat`` writes it: a connected feed, a frame just now."""
    now = time.time_ns()
    record = {
        "exchange": "binance", "context": "", "symbols": ["BTC-USDT", "ETH-USDT"],
        "channels": ["trades"], "state": "connected", "connected_since": now - 120 * 10**9,
        "last_frame_ns": now - 10**9, "reconnects_1h": 1, "conn": "binance/0#3@1",
        "heartbeat_ns": now, "every_s": 5.0,
    } | changes  # fmt: skip
    client.hset(feeds_key(producer), "binance/0", json.dumps(record))
    client.expire(feeds_key(producer), 30)


def healthy_stream(client: redis.Redis) -> None:
    """Ten entries, all delivered to the group and acked."""
    key = raw_key("binance")
    for i in range(10):
        client.xadd(key, {"f": f"frame {i}", "k": "t"})
    client.xgroup_create(key, "tickvault", id="0")
    read: Any = client.xreadgroup("tickvault", "c1", {key: ">"})
    client.xack(key, "tickvault", *[entry_id for entry_id, _ in read[0][1]])


def store_trades(database_url: str, ages_s: dict[str, list[float]]) -> None:
    with psycopg.connect(database_url) as conn:
        for symbol, ages in ages_s.items():
            for i, age in enumerate(ages):
                conn.execute(
                    "INSERT INTO trades VALUES ('binance', %s, %s, 1, 1, 'buy', "
                    "now() - make_interval(secs => %s), now())",
                    (symbol, str(i), age),
                )


def test_a_snapshot_of_streams_groups_feeds_trades_dead_letters_and_gaps(
    config: str, redis_client: redis.Redis, database_url: str
) -> None:
    key = raw_key("binance")
    base = now_ms(redis_client)
    ids = [f"{base - 120_000 + i * 1000}-0" for i in range(10)]  # two minutes old, a second apart
    for entry_id in ids:
        redis_client.xadd(key, {"f": "x", "k": "t"}, id=entry_id)
    redis_client.xgroup_create(key, "tickvault", id="0")
    redis_client.xreadgroup("tickvault", "c1", {key: ">"}, count=4)  # 4 pending on c1
    redis_client.xack(key, "tickvault", ids[0])  # 3 left pending; 6 never delivered
    heartbeat(redis_client)
    dead = dead_key("binance")
    for reason in ("binance: undecodable frame: bad", "binance: undecodable frame: worse",
                   "trade 5: price 1e99 is not below 1e20"):  # fmt: skip
        redis_client.xadd(dead, {"f": "x", "reason": reason, "origin": "1-0"})
    store_trades(database_url, {"BTC-USDT": [5, 20, 600, 3000, 7200]})  # the last: > 1 h
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO gaps (exchange, symbol, first_missing, last_missing, after_ts, before_ts,"
            " detected_at, status) VALUES ('binance', 'BTC-USDT', 5, 9, now(), now(),"
            " now() - interval '90 seconds', 'open')"
        )

    snap = gather(load_settings(config), lambda: redis_client)
    [raw] = snap.streams
    assert (raw.exchange, raw.exists, raw.length) == ("binance", True, 10)
    assert raw.memory_bytes and raw.memory_bytes > 0
    assert 119 < (raw.oldest_age_s or 0) < 125 and 110 < (raw.newest_age_s or 0) < 116
    [g] = raw.groups
    assert (g.name, g.pending, g.lag_entries) == ("tickvault", 3, 6)
    assert 115 < g.lag_s < 121  # the first entry not delivered: ids[4]
    assert 118 < (g.oldest_pending_s or 0) < 124  # ids[1]
    assert [(c.name, c.pending) for c in g.consumers] == [("c1", 3)]
    [f] = snap.feeds
    assert (f.producer, f.label, f.state, f.reconnects_1h) == ("p1", "binance/0", "connected", 1)
    assert 119 < (f.connected_s or 0) < 130 and 0.9 < (f.last_frame_age_s or 0) < 10
    [d] = snap.dead_letters
    assert (d.exchange, d.count, d.reasons) == (
        "binance", 3, {"undecodable frame": 2, "bad trade price": 1},
    )  # fmt: skip
    assert [(s.symbol, s.rows_1m, s.rows_1h) for s in snap.symbols] == [
        ("BTC-USDT", 2, 4), ("ETH-USDT", 0, 0),  # configured, no trade: listed anyway
    ]  # fmt: skip
    assert 4 < (snap.symbols[0].newest_age_s or 0) < 30 and snap.symbols[1].newest_age_s is None
    assert [(x.exchange, x.open, x.backfilling) for x in snap.gaps or []] == [("binance", 1, 0)]
    assert snap.failures == [] and snap.redis_ok and snap.database_ok

    problems = find_problems(snap)
    assert kinds(problems) == [
        ("lag", "binance tickvault"), ("dead-letters", "binance"), ("gaps", "binance"),
    ]  # fmt: skip
    assert "6 entries not delivered, 3 pending" in problems[0].text
    assert "undecodable frame (2)" in problems[1].text


def run_json(config: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    status = main([f"--config={config}", "--json", *args])
    return status, json.loads(capsys.readouterr().out)


def test_healthy_is_exit_0_and_a_json_document(
    config: str, redis_client: redis.Redis, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    healthy_stream(redis_client)
    heartbeat(redis_client)
    store_trades(database_url, {"BTC-USDT": [1, 2], "ETH-USDT": [3]})
    status, doc = run_json(config, capsys)
    assert status == 0, doc["problems"]
    assert doc["healthy"] is True and doc["problems"] == []
    assert set(doc) >= {"taken_at", "streams", "feeds", "symbols", "dead_letters", "gaps"}
    [group_doc] = doc["streams"][0]["groups"]
    assert group_doc["lag_entries"] == 0 and group_doc["behind_s"] == 0.0
    assert doc["feeds"][0]["state"] == "connected"
    assert {s["symbol"]: s["rows_1m"] for s in doc["symbols"]} == {"BTC-USDT": 2, "ETH-USDT": 1}
    assert doc["gaps"] == [] and doc["dead_letters"][0]["count"] == 0
    assert main([f"--config={config}"]) == 0  # the tables
    out = capsys.readouterr().out
    assert "healthy" in out and "binance/0" in out and "BTC-USDT" in out


@pytest.mark.parametrize(
    ("changes", "kind"),
    [({"state": "backoff", "conn": None, "connected_since": None}, "down"),
     ({"heartbeat_ns": time.time_ns() - 20 * 10**9}, "stale"),
     ({"last_frame_ns": time.time_ns() - 90 * 10**9}, "silent")],
)  # fmt: skip
def test_a_feed_down_or_silent_is_exit_1(
    config: str, redis_client: redis.Redis, database_url: str,
    capsys: pytest.CaptureFixture[str], changes: dict[str, Any], kind: str,
) -> None:  # fmt: skip
    healthy_stream(redis_client)
    heartbeat(redis_client, **changes)
    store_trades(database_url, {"BTC-USDT": [1]})
    status, doc = run_json(config, capsys)
    assert status == 1
    assert [(p["kind"], p["subject"]) for p in doc["problems"]] == [(kind, "p1 binance/0")]


def test_no_heartbeat_at_all_is_exit_1(
    config: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    healthy_stream(redis_client)
    status, doc = run_json(config, capsys)
    assert status == 1
    assert [p["kind"] for p in doc["problems"]] == ["no-heartbeat"]


def test_a_lagging_group_and_a_dead_consumer_are_exit_1(
    config: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    heartbeat(redis_client)
    key = raw_key("binance")
    old = now_ms(redis_client) - 45_000
    for i in range(5):
        redis_client.xadd(key, {"f": "x"}, id=f"{old + i}-0")
    redis_client.xgroup_create(key, "tickvault", id="0")
    redis_client.xreadgroup("tickvault", "c9", {key: ">"}, count=2)
    status, doc = run_json(config, capsys, "--idle-s=0.001")
    assert status == 1
    assert [(p["kind"], p["subject"]) for p in doc["problems"]] == [
        ("lag", "binance tickvault"), ("idle-consumer", "binance tickvault"),
    ]  # fmt: skip
    assert "c9" in doc["problems"][1]["text"]
    status, doc = run_json(config, capsys, "--lag-s=60")  # a wider threshold
    assert status == 0, doc["problems"]


def test_postgresql_down_is_a_problem_and_redis_is_still_reported(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    healthy_stream(redis_client)
    heartbeat(redis_client)
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    config = write_config(tmp_path / "t.toml", redis_url, down)
    status, doc = run_json(config, capsys)
    assert status == 1
    assert [(p["kind"], p["subject"]) for p in doc["problems"]] == [("unreachable", "postgresql")]
    assert doc["database_ok"] is False and doc["redis_ok"] is True
    assert doc["streams"][0]["length"] == 10 and doc["feeds"][0]["state"] == "connected"
    assert main([f"--config={config}"]) == 1
    assert "cannot reach 127.0.0.1:" in capsys.readouterr().out


def test_redis_down_and_no_schema_are_problems(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "t.toml", f"redis://127.0.0.1:{free_port()}/0", database_url)
    status, doc = run_json(config, capsys)  # a fresh database: never migrated
    assert status == 1
    assert [(p["kind"], p["subject"]) for p in doc["problems"]] == [
        ("unreachable", "redis"), ("error", "postgresql"),
    ]  # fmt: skip
    assert "no trades table" in doc["problems"][1]["text"]


def test_a_schema_a_newer_tickvault_made_is_a_problem(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from consumer.schema import SCHEMA_VERSION, migrate

    healthy_stream(redis_client)
    heartbeat(redis_client)
    config = write_config(tmp_path / "t.toml", redis_url, database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
        status, doc = run_json(config, capsys)  # its own version: no problem of the schema
        assert not [p for p in doc["problems"] if p["subject"] == "postgresql"], doc["problems"]
        newer = SCHEMA_VERSION + 1
        conn.execute("INSERT INTO tickvault_migrations (version) VALUES (%s)", (newer,))
    status, doc = run_json(config, capsys)
    assert status == 1
    assert [(p["kind"], p["subject"]) for p in doc["problems"]] == [("error", "postgresql")]
    assert f"schema at version {SCHEMA_VERSION + 1}, newer than" in doc["problems"][0]["text"]
    assert doc["database_ok"] is True  # reachable, and its rows still listed


def test_a_status_user_without_select_on_the_versions_is_not_told_and_not_refused(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, database_url: str, role: Role,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The README's status user (SELECT on trades and gaps only) sees no error of its own."""
    from consumer.schema import SCHEMA_VERSION, migrate

    healthy_stream(redis_client)
    heartbeat(redis_client)
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
        newer = SCHEMA_VERSION + 1
        conn.execute("INSERT INTO tickvault_migrations (version) VALUES (%s)", (newer,))
    admin_execute(
        database_url,
        sql.SQL("GRANT SELECT ON trades, gaps TO {}").format(sql.Identifier(role.name)),
    )
    config = write_config(tmp_path / "t.toml", redis_url, role.url)
    _, doc = run_json(config, capsys)
    assert not [p for p in doc["problems"] if p["subject"] == "postgresql"], doc["problems"]
    assert doc["database_ok"] is True


def test_a_redis_that_may_evict_the_streams_is_a_problem(
    tmp_path: Path, own_redis: RedisServer, database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Checked at start by the processes, and at every look by status: a policy changed with
    CONFIG SET while they run is seen here."""
    client = redis.Redis.from_url(own_redis.url)
    healthy_stream(client)
    heartbeat(client)
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn)
    config = write_config(tmp_path / "t.toml", own_redis.url, database_url)
    _, doc = run_json(config, capsys)
    assert not [p for p in doc["problems"] if p["subject"] == "redis"], doc["problems"]
    client.config_set("maxmemory-policy", "allkeys-lfu")
    status, doc = run_json(config, capsys)
    assert status == 1
    problems = [p for p in doc["problems"] if p["subject"] == "redis"]
    assert len(problems) == 1 and problems[0]["kind"] == "error"
    assert "maxmemory-policy is allkeys-lfu" in problems[0]["text"]
    assert doc["redis_ok"] is True and doc["streams"][0]["length"] == 10  # the rest reported
    client.close()


def test_bad_arguments_and_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--every=0"])
    assert exc.value.code == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[redis]\nurl = 'http://nope'\n")
    with pytest.raises(ConfigError):
        main([f"--config={bad}"])
    capsys.readouterr()


def test_watch_samples_until_ctrl_c(config: str, redis_client: redis.Redis) -> None:
    """``--watch --json``: a document a line, every ``--every``; SIGINT ends it with the last
    sample's status."""
    healthy_stream(redis_client)
    heartbeat(redis_client)
    with subprocess.Popen(
        [sys.executable, "-m", "common.cli", "status", f"--config={config}", "--watch",
         "--json", "--every=0.2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            first = json.loads(proc.stdout.readline())
            second = json.loads(proc.stdout.readline())
            assert second["taken_ns"] > first["taken_ns"]
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10 * SLOW) == 0  # healthy (ETH-USDT without a trade is fine)
        finally:
            proc.kill()


def test_a_read_only_acl_user_is_enough(
    tmp_path: Path, own_redis: RedisServer, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``+@read +@connection +time`` on ``tickvault:*``: what the README tells operators."""
    admin = redis.Redis.from_url(own_redis.url)
    admin.acl_setuser(
        "status", enabled=True, passwords=["+pw"], keys=["tickvault:*"],
        commands=["+@read", "+@connection", "+time"],
    )  # fmt: skip
    healthy_stream(admin)
    heartbeat(admin)
    admin.close()
    with psycopg.connect(database_url) as conn:
        migrate(conn)
    url = own_redis.url.replace("redis://", "redis://status:pw@")
    status, doc = run_json(write_config(tmp_path / "t.toml", url, database_url), capsys)
    assert status == 0, doc["problems"]
    assert doc["streams"][0]["memory_bytes"] > 0 and doc["feeds"][0]["state"] == "connected"
