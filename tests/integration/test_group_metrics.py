"""Group-level gauges against a real Redis: exported by one elected consumer of the group only,
taken over when its lease runs out, with the lag in entries and in seconds; and Redis' memory:
how full it is, and whether its policy may evict the streams (a change after the start is seen,
logged once, and cleared)."""

from __future__ import annotations

import logging
import time

import pytest
import redis

from common.envelope import raw_key
from common.metrics import Metrics
from common.servers import RedisServer
from consumer.group_metrics import GroupMetrics, memory_used

pytestmark = pytest.mark.integration

KEY = raw_key("binance")


def test_one_consumer_exports_the_group_gauges_and_another_takes_over(
    redis_client: redis.Redis,
) -> None:
    old_ms = int(time.time() * 1000) - 5_000
    for i in range(5):
        redis_client.xadd(KEY, {b"f": b"x"}, id=f"{old_ms + i}-0")
    redis_client.xgroup_create(KEY, "tickvault", id="0")
    redis_client.xreadgroup("tickvault", "a", {KEY: ">"}, count=2)  # 2 pending, 3 undelivered
    a, b = Metrics("consumer"), Metrics("consumer")
    ga = GroupMetrics(redis_client, "tickvault", "a", a)
    gb = GroupMetrics(redis_client, "tickvault", "b", b)
    ga.update([KEY])
    gb.update([KEY])
    assert a.gauges["lag:binance"] == 3 and a.gauges["pending:binance"] == 2
    assert 4.5 <= a.gauges["lag_seconds:binance"] <= 30  # the oldest pending is ~5 s old
    assert not any(k.startswith(("lag", "pending")) for k in b.gauges)
    assert "tickvault_group_lag{" in a.prometheus() and "tickvault_group_lag{" not in b.prometheus()
    redis_client.pexpire(ga.key, 1)  # a died: its lease runs out
    time.sleep(0.05)
    gb.update([KEY])
    ga.update([KEY])
    assert b.gauges["lag:binance"] == 3
    assert not any(k.startswith("lag") for k in a.gauges)  # a is no longer the one


def test_a_group_with_nothing_left_has_no_lag_in_seconds(redis_client: redis.Redis) -> None:
    redis_client.xadd(KEY, {b"f": b"x"})
    redis_client.xgroup_create(KEY, "tickvault", id="$")
    m = Metrics("consumer")
    GroupMetrics(redis_client, "tickvault", "a", m).update([KEY])
    assert (m.gauges["lag:binance"], m.gauges["lag_seconds:binance"]) == (0, 0.0)


def test_memory_used_is_the_fullest_servers_share_of_its_maxmemory() -> None:
    assert memory_used({"used_memory": 50, "maxmemory": 200}) == 0.25
    assert memory_used({"used_memory": 50, "maxmemory": 0}) is None  # no limit: no ratio
    assert memory_used({"used_memory": 50}) is None
    cluster = {  # a cluster client's reply: a map per node
        "127.0.0.1:7000": {"used_memory": 10, "maxmemory": 100},
        "127.0.0.1:7001": {"used_memory": 90, "maxmemory": 100},
        "127.0.0.1:7002": {"used_memory": 999, "maxmemory": 0},
    }
    assert memory_used(cluster) == 0.9


def test_redis_memory_and_a_policy_that_may_evict_are_gauges_and_logged_once(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(own_redis.url)
    client.xadd(KEY, {b"f": b"x"})
    client.xgroup_create(KEY, "tickvault", id="0")
    m = Metrics("consumer")
    g = GroupMetrics(client, "tickvault", "a", m)
    g.update([KEY])
    assert "redis_memory_used" not in m.gauges  # the embedded server has no maxmemory
    assert m.gauges["redis_may_evict"] == 0
    client.config_set("maxmemory", 64 << 20)
    client.config_set("maxmemory-policy", "allkeys-lru")  # after the start check
    with caplog.at_level(logging.INFO, logger="consumer.group_metrics"):
        g.update([KEY])
        g.update([KEY])
    used = int(client.info("memory")["used_memory"])
    assert m.gauges["redis_memory_used"] == pytest.approx(used / (64 << 20), rel=0.2)
    assert m.gauges["redis_may_evict"] == 1
    text = m.prometheus()
    assert 'tickvault_redis_may_evict{process="consumer"} 1.0' in text
    assert "tickvault_redis_memory_used_ratio{" in text
    assert caplog.text.count("maxmemory-policy is allkeys-lru") == 1  # on the change only
    client.config_set("maxmemory-policy", "noeviction")
    with caplog.at_level(logging.INFO, logger="consumer.group_metrics"):
        g.update([KEY])
    assert m.gauges["redis_may_evict"] == 0 and "no longer evicts" in caplog.text
    client.close()


def test_a_user_without_info_still_gets_the_group_gauges(own_redis: RedisServer) -> None:
    admin = redis.Redis.from_url(own_redis.url)
    admin.xadd(KEY, {b"f": b"x"})
    admin.xgroup_create(KEY, "tickvault", id="0")
    admin.acl_setuser(
        "noinfo", enabled=True, passwords=["+pw"], keys=["tickvault:*"],
        commands=["+@stream", "+@connection", "+set", "+get", "+pexpire"],
    )  # fmt: skip
    host, port = own_redis.url.removeprefix("redis://").split("/")[0].split(":")
    client = redis.Redis(host=host, port=int(port), username="noinfo", password="pw")
    m = Metrics("consumer")
    GroupMetrics(client, "tickvault", "a", m).update([KEY])
    assert m.gauges["lag:binance"] == 1 and "redis_may_evict" not in m.gauges
    client.close()
    admin.close()
