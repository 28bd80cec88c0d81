"""tickvault on a real Redis Cluster: three primaries of the embedded Redis-protocol server in
cluster mode (AOF on) on loopback ports, the streams of three exchanges spread over them by their
hash tags, a producer and two consumers as real processes, one consumer SIGKILLed mid-run, and a
slot moved from one node to another (MOVED and ASK) while the producer writes into it."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from common.envelope import dead_key, raw_key
from common.servers import RedisClusterServers, RedisServer, free_port
from tests.conftest import SLOW
from tests.e2e.harness import Feed, Pipeline, pipeline
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.own_servers]

EXCHANGES = ("binance", "okx", "coinbase")
SYMBOLS = {"binance": "BTC-USDT", "okx": "BTC-USDT", "coinbase": "BTC-USD"}
FEEDS = [
    Feed("binance", [SYMBOLS["binance"]]),
    Feed("okx", [SYMBOLS["okx"]], options={"trades": "trades-all"}),  # consecutive ids
    Feed("coinbase", [SYMBOLS["coinbase"]]),
]
CROSS_SLOT = ("CROSSSLOT", "must map to the same key slot", "Traceback")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(tmp_path_factory.mktemp("cluster")).start(timeout=30 * SLOW)
    try:
        yield servers
    finally:
        servers.kill()


def _nodes(cluster: RedisClusterServers) -> list[redis.Redis]:
    return [redis.Redis(host="127.0.0.1", port=port) for port in cluster.ports]


@pytest.fixture
def cluster_url(cluster: RedisClusterServers) -> Iterator[str]:
    """The cluster, emptied (every node) for this test."""
    for node in _nodes(cluster):
        node.flushall()
        node.close()
    yield cluster.url


def _owner(cluster: RedisClusterServers, slot: int) -> int:
    """The port of the node that serves ``slot``."""
    node = redis.Redis(host="127.0.0.1", port=cluster.ports[0])
    try:
        for first, last, (_, port, *_), *_ in node.cluster("SLOTS"):
            if first <= slot <= last:
                return int(port)
    finally:
        node.close()
    raise AssertionError(f"no node serves slot {slot}")


def _keyslot(cluster: RedisClusterServers, key: str) -> int:
    node = redis.Redis(host="127.0.0.1", port=cluster.ports[0])
    try:
        return int(node.cluster("KEYSLOT", key))
    finally:
        node.close()


def test_the_exchanges_streams_live_on_different_nodes(cluster: RedisClusterServers) -> None:
    slots = {ex: _keyslot(cluster, raw_key(ex)) for ex in EXCHANGES}
    assert len(set(slots.values())) == len(EXCHANGES), slots
    owners = {ex: _owner(cluster, slot) for ex, slot in slots.items()}
    assert len(set(owners.values())) >= 2, owners  # a cluster spreads exchanges over nodes
    for ex in EXCHANGES:  # raw and dead of one exchange: one slot (a pipeline stays on it)
        assert _keyslot(cluster, dead_key(ex)) == slots[ex]
        assert _keyslot(cluster, f"tickvault:errors:{{{ex}}}") == slots[ex]


def _stored(p: Pipeline) -> dict[str, tuple[int, int, int, int]]:
    """Per exchange: (rows, distinct ids, smallest id, largest id)."""
    rows = p.query(
        "SELECT exchange, count(*), count(DISTINCT trade_id), min(trade_id::bigint),"
        " max(trade_id::bigint) FROM trades GROUP BY exchange"
    )
    return {r[0]: (int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}


def _complete(p: Pipeline, total: int) -> bool:
    p.check_alive()
    return _stored(p) == {ex: (total, total, 1, total) for ex in EXCHANGES}


def _pending(client: Any, consumer: str) -> int:
    """Entries ``consumer`` holds in the group, over every stream."""
    return sum(
        len(
            client.xpending_range(
                raw_key(ex), "tickvault", min="-", max="+", count=10_000, consumername=consumer
            )
        )
        for ex in EXCHANGES
    )


def _no_cross_slot(p: Pipeline) -> None:
    for log in p.work.glob("*.log"):
        text = log.read_text(errors="replace")
        for word in CROSS_SLOT:
            assert word not in text, f"{word!r} in {log.name}:\n{text[-3000:]}"


def _stop_holding(consumer: subprocess.Popen[bytes], client: Any, name: str) -> None:
    """SIGSTOP ``consumer`` at a moment it holds entries it has not acked."""
    deadline = time.monotonic() + 20 * SLOW
    while time.monotonic() < deadline:
        consumer.send_signal(signal.SIGSTOP)
        if _pending(client, name) > 0:
            return
        consumer.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError(f"{name} never held an entry")


def test_a_producer_and_two_consumers_store_every_trade_once_on_a_cluster(
    cluster_url: str, database_url: str, work_dir: Path
) -> None:
    from common.redis_url import stream_client

    total = 1_200
    client: Any = stream_client(cluster_url)
    with contextlib.closing(client), pipeline(
        work=work_dir, redis_url=cluster_url, database_url=database_url, feeds=FEEDS,
        backfill={"auto": False},
    ) as p:  # fmt: skip
        p.simulator(rate=150, trades=total)
        c1, c2 = p.start_consumer("c1"), p.start_consumer("c2")
        producer = p.start_producer()
        wait_for(lambda: len(_stored(p)) == len(EXCHANGES), timeout=30, what="rows of each")
        _stop_holding(c1, client, "c1")
        held = _pending(client, "c1")
        c1.kill()  # with what it held: c2 claims it after claim_idle_ms
        c1.wait(10)
        wait_for(lambda: _complete(p, total), timeout=60, what="every trade stored once")
        wait_for(lambda: _pending(client, "c1") == 0, timeout=20, what="c1's entries claimed")
        assert p.stop(producer) == 0 and p.stop(c2) == 0
        assert held > 0
        assert "claimed" in (work_dir / "consumer-c2.log").read_text(), p.log("consumer-c2")
        for ex in EXCHANGES:  # everything acked, nothing dead-lettered
            assert client.xpending(raw_key(ex), "tickvault")["pending"] == 0
            assert client.xlen(dead_key(ex)) == 0
        _no_cross_slot(p)


def _move_slot(cluster: RedisClusterServers, slot: int, to_port: int) -> None:
    """Reshard one slot as ``valkey-cli --cluster reshard`` does: IMPORTING on the target,
    MIGRATING on the source, MIGRATE its keys, then the slot's new owner to every node."""
    from_port = _owner(cluster, slot)
    nodes = {port: redis.Redis(host="127.0.0.1", port=port) for port in cluster.ports}
    try:
        ids = {port: node.cluster("MYID").decode() for port, node in nodes.items()}
        src, dst = nodes[from_port], nodes[to_port]
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[from_port])
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[to_port])
        time.sleep(0.3)  # its keys are still on the source: it serves them as before
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
        time.sleep(0.5)  # the keys are on the target, the slot not yet: the source says ASK
        for node in (dst, src, *nodes.values()):
            node.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[to_port])
    finally:
        for node in nodes.values():
            node.close()


def _start_storing(
    p: Pipeline, total: int
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """A consumer and a producer storing ``total`` trades of each exchange: both started, and
    every exchange has rows."""
    p.simulator(rate=150, trades=total)
    consumer = p.start_consumer("c1")
    producer = p.start_producer()
    wait_for(lambda: len(_stored(p)) == len(EXCHANGES), timeout=30, what="rows of each")
    return consumer, producer


def _finish_storing(
    p: Pipeline, total: int, consumer: subprocess.Popen[bytes], producer: subprocess.Popen[bytes]
) -> None:
    """Every trade stored once, then both stop with status 0."""
    wait_for(lambda: _complete(p, total), timeout=60, what="every trade stored once")
    assert p.stop(producer) == 0 and p.stop(consumer) == 0


def test_a_slot_moved_under_the_producer_and_consumer_loses_nothing(
    cluster: RedisClusterServers, cluster_url: str, database_url: str, work_dir: Path
) -> None:
    """The producer follows MOVED (and ASK while the slot migrates) to the stream's new node,
    the consumer (redis-py's cluster client) too; every trade is stored once."""
    total = 900
    slot = _keyslot(cluster, raw_key("okx"))
    before = _owner(cluster, slot)
    target = next(port for port in cluster.ports if port != before)
    with pipeline(
        work=work_dir, redis_url=cluster_url, database_url=database_url, feeds=FEEDS,
        backfill={"auto": False},
    ) as p:  # fmt: skip
        consumer, producer = _start_storing(p, total)
        _move_slot(cluster, slot, target)
        assert _owner(cluster, slot) == target
        _finish_storing(p, total, consumer, producer)
        for name in ("producer", "consumer-c1"):
            assert "Traceback" not in p.log(name), p.log(name)
        log = p.log("producer")
        assert f"slot {slot} migrating to 127.0.0.1:{target}" in log, log  # ASK followed
        assert f"slot {slot} moved to 127.0.0.1:{target}" in log, log  # MOVED followed
        node = redis.Redis(host="127.0.0.1", port=target)
        assert node.xlen(raw_key("okx")) > 0  # the stream lives on its new node
        node.close()


# -- bad cases --------------------------------------------------------------------------------


def _cli(config: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.cli", *args, f"--config={config}"],
        capture_output=True, text=True, timeout=timeout * SLOW,
    )  # fmt: skip


def _config(work: Path, url: str) -> Path:
    path = work / "tickvault.toml"
    path.write_text(
        f'[redis]\nurl = "{url}"\n[database]\nurl = "postgresql://127.0.0.1:1/x"\n'
        '[[feeds]]\nexchange = "binance"\nsymbols = ["BTC-USDT"]\nurl = "ws://127.0.0.1:1"\n'
        "[backfill]\nauto = false\n"
        f'[producer]\nspill_dir = "{work / "spill"}"\n'
    )
    return path


def test_a_cluster_url_to_a_server_not_in_cluster_mode_stops_both_at_start(
    own_redis: RedisServer, work_dir: Path
) -> None:
    config = _config(work_dir, f"redis+cluster://127.0.0.1:{own_redis.port}/0")
    consumer = _cli(config, "consumer")
    assert consumer.returncode == 2, consumer.stderr
    assert "not a usable Redis Cluster" in consumer.stderr
    producer = _cli(config, "producer")
    assert producer.returncode == 4, producer.stdout + producer.stderr
    assert "cluster support disabled" in producer.stdout + producer.stderr


def test_a_consumer_waits_for_a_cluster_that_is_down_and_stops_cleanly(work_dir: Path) -> None:
    config = _config(work_dir, f"redis+cluster://127.0.0.1:{free_port()}/0")
    with subprocess.Popen(
        [sys.executable, "-m", "common.cli", "consumer", f"--config={config}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            line = ""
            while "unreachable" not in line:
                line = proc.stdout.readline()
                assert line or proc.poll() is None, "the consumer exited instead of waiting"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10 * SLOW) == 0
            assert "stopped before it could start" in proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()


def test_other_commands_refuse_a_cluster_url_clearly(cluster_url: str) -> None:
    from common.errors import ConfigError
    from common.redis_url import redis_client

    with pytest.raises(ConfigError, match="Redis Cluster URL"):
        redis_client(cluster_url)


def test_the_acl_the_readme_gives_is_enough_on_a_cluster(
    cluster: RedisClusterServers, cluster_url: str, database_url: str, work_dir: Path
) -> None:
    rules = (
        "on >secret ~tickvault:* +@stream +@connection +hset +hmget +hdel +expire +info"
        " +cluster|slots +asking +command"
    ).split()
    for node in _nodes(cluster):
        node.acl_setuser("tickvault", reset=True)
        node.execute_command("ACL SETUSER", "tickvault", *rules)
        node.close()
    url = cluster_url.replace("redis+cluster://", "redis+cluster://tickvault:secret@")
    total = 300
    try:
        with pipeline(
            work=work_dir, redis_url=url, database_url=database_url, feeds=FEEDS,
            backfill={"auto": False},
        ) as p:  # fmt: skip
            p.simulator(rate=150, trades=total)
            consumer = p.start_consumer("c1")
            producer = p.start_producer()
            wait_for(lambda: _complete(p, total), timeout=60, what="every trade stored once")
            assert p.stop(producer) == 0 and p.stop(consumer) == 0
            for log in p.work.glob("*.log"):
                assert "NOPERM" not in log.read_text(), log.read_text()[-3000:]
    finally:
        for node in _nodes(cluster):
            node.acl_deluser("tickvault")
            node.close()


def test_a_node_restarted_mid_run_loses_nothing(
    cluster: RedisClusterServers, cluster_url: str, database_url: str, work_dir: Path
) -> None:
    """The node of one exchange's stream stops (its slots are down: no replicas) and comes
    back from its AOF: the producer keeps the frames meanwhile (spill), the consumers retry;
    every trade is stored once and both exit 0."""
    total = 900
    port = _owner(cluster, _keyslot(cluster, raw_key("coinbase")))
    index = cluster.ports.index(port)
    with pipeline(
        work=work_dir, redis_url=cluster_url, database_url=database_url, feeds=FEEDS,
        backfill={"auto": False},
    ) as p:  # fmt: skip
        consumer, producer = _start_storing(p, total)
        cluster.stop_node(index)
        time.sleep(1.0)  # the outage (not a synchronisation)
        cluster.start_node(index, timeout=30 * SLOW)
        _finish_storing(p, total, consumer, producer)
        _no_cross_slot(p)


def test_a_replay_and_a_dead_letter_on_a_cluster(cluster_url: str, database_url: str) -> None:
    """``consumer.replay`` through redis-py's cluster client (the per-slot reads without a
    block), and a frame that cannot be parsed dead-lettered next to its raw stream."""
    from common.config import settings_from_mapping
    from common.envelope import Envelope
    from common.redis_url import stream_client
    from consumer.replay import replay
    from consumer.store import Store

    settings = settings_from_mapping(
        {"feeds": [{"exchange": "binance", "symbols": ["BTC-USDT"]}]}, {}
    )
    key = raw_key("binance")

    def frame(i: int, body: bytes | None = None) -> Any:
        body = (
            body
            or (
                f'{{"e":"trade","E":1700000000000,"s":"BTCUSDT","t":{i},"p":"1.{i}","q":"1",'
                f'"T":1700000000000,"m":false,"M":true}}'
            ).encode()
        )
        return Envelope(body, False, "binance", "", "c", i, 1_700_000_000_000_000_000).fields()

    client: Any = stream_client(cluster_url)
    ids = [client.xadd(key, frame(i)).decode() for i in range(1, 11)]
    bad = client.xadd(key, frame(11, b"not json")).decode()
    store = Store(database_url)
    try:
        counts = replay(settings, [key], start=ids[0], end=None, client=client, store=store)
    finally:
        store.close()
    assert counts["rows_new"] == 10 and counts["dead"] == 1
    [(_, fields)] = client.xrange(dead_key("binance"))
    assert fields[b"origin"] == bad.encode() and fields[b"stream"] == key.encode()
    assert client.xinfo_groups(key) == []  # the replay's group is gone
    client.close()
