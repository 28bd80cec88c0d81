"""A Redis that may evict the streams is refused at start by the producer and the consumer (exit
4, the policy and the fix) before anything is read; a volatile-* policy is not; a server without
AOF is warned about. Pure rules first, then real processes on a server of the test's own."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from common.errors import Action, ExitStatus, FatalError, classify
from common.redis_checks import check_redis, eviction_problem, persistence_warning
from common.servers import RedisServer
from tests.conftest import SLOW

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("policy", "refused"),
    [
        ("noeviction", False), ("volatile-lru", False), ("volatile-lfu", False),
        ("volatile-random", False), ("volatile-ttl", False), ("allkeys-lru", True),
        ("allkeys-lfu", True), ("allkeys-random", True),
    ],
)  # fmt: skip
def test_which_policies_may_evict_a_stream(policy: str, refused: bool) -> None:
    problem = eviction_problem({"maxmemory_policy": policy})
    assert (problem is not None) is refused
    if problem:
        assert policy in problem and "streams" in problem


def test_aof_off_is_a_warning() -> None:
    assert persistence_warning({"aof_enabled": 0}) is not None
    assert persistence_warning({"aof_enabled": 1}) is None
    assert persistence_warning({}) is None  # not told: no warning


def test_a_cluster_clients_info_is_checked_node_by_node() -> None:
    class Cluster:
        def info(self, section: str) -> dict[str, dict[str, object]]:
            return {
                "127.0.0.1:7000": {"maxmemory_policy": "noeviction", "aof_enabled": 1},
                "127.0.0.1:7001": {"maxmemory_policy": "allkeys-lru", "aof_enabled": 1},
            }

    with pytest.raises(FatalError) as info:
        check_redis(Cluster(), "test")
    assert info.value.code == "EVICTION" and classify(info.value) is Action.FATAL


def _config(tmp_path: Path, redis_url: str, database_url: str) -> Path:
    config = tmp_path / "tickvault.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_url}"\n[database]\nurl = "{database_url}"\n'
        f'[producer]\nspill_dir = "{tmp_path / "spill"}"\n[backfill]\nauto = false\n'
        '[[feeds]]\nexchange = "binance"\nsymbols = ["BTC-USDT"]\nurl = "ws://127.0.0.1:1"\n'
    )
    return config


@pytest.mark.parametrize("process", ["producer", "consumer"])
def test_a_server_that_may_evict_the_streams_is_refused_at_start(
    process: str, own_redis: RedisServer, database_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    for name in ("TICKVAULT_CONFIG", "TICKVAULT_REDIS_URL", "TICKVAULT_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    client = redis.Redis.from_url(own_redis.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", process,
         f"--config={_config(tmp_path, own_redis.url, database_url)}"],
        capture_output=True, text=True, timeout=60 * SLOW,
    )  # fmt: skip
    assert done.returncode == ExitStatus.REDIS, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert "maxmemory-policy is allkeys-lru" in out and "noeviction" in out
    assert client.keys("tickvault:*") == []  # nothing was written: no stream, no group
    client.close()


def test_a_volatile_policy_passes_and_aof_off_is_logged(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(own_redis.url)
    client.config_set("maxmemory-policy", "volatile-lru")
    with caplog.at_level(logging.WARNING, logger="common.redis_checks"):
        check_redis(client, "test")
    assert caplog.text == ""  # the embedded server has AOF on
    client.config_set("appendonly", "no")
    with caplog.at_level(logging.WARNING, logger="common.redis_checks"):
        check_redis(client, "test")
    assert "AOF is off" in caplog.text
    client.close()


def test_a_server_away_is_not_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    from common.servers import free_port

    client = redis.Redis(port=free_port(), socket_connect_timeout=1)
    with caplog.at_level(logging.INFO, logger="common.redis_checks"):
        check_redis(client, "test")  # no exception: the spill takes what comes
    assert "not checked" in caplog.text
