"""Group-level gauges against a real Redis: exported by one elected consumer of the group only,
taken over when its lease runs out, with the lag in entries and in seconds."""

from __future__ import annotations

import time

import pytest
import redis

from common.envelope import raw_key
from common.metrics import Metrics
from consumer.group_metrics import GroupMetrics

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
