"""Group-level gauges (lag, pending, lag in seconds per stream), exported once per group, and
the Redis server's memory as the group sees it: how full it is (``used_memory`` over
``maxmemory``, the fullest server of a cluster) and whether it may evict the streams
(``maxmemory-policy allkeys-*``, refused at start; a ``CONFIG SET`` or a restart with another
config later is seen here, logged, and alerted on).

Every consumer of a group sees the same XINFO numbers; exported by all of them, a sum over the
group would count them N times. One consumer is elected with a short Redis lease
(``SET tickvault:metrics-leader:<group> <name> NX PX``, renewed by its holder); the others drop
the gauges. A dead leader's lease runs out and another takes over at its next status tick.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from common.envelope import exchange_of_key
from common.metrics import Metrics
from common.redis_checks import eviction_problems, per_server
from common.redis_url import RedisClient

logger = logging.getLogger(__name__)

LEASE_MS = 30_000  # three status ticks


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


class GroupMetrics:
    def __init__(self, client: RedisClient, group: str, name: str, metrics: Metrics) -> None:
        self.client = client
        self.group = group
        self.name = name
        self.metrics = metrics
        self.key = f"tickvault:metrics-leader:{group}"
        self._evicting: list[str] = []  # the eviction problems last seen (logged on a change)

    def leader(self) -> bool:
        """Take or renew the lease; True while this consumer holds it."""
        if self.client.set(self.key, self.name, nx=True, px=LEASE_MS):
            return True
        if _s(self.client.get(self.key) or b"") == self.name:
            self.client.pexpire(self.key, LEASE_MS)
            return True
        return False

    def update(self, streams: Sequence[str]) -> None:
        if not self.leader():
            for name in ("lag", "pending", "lag_seconds", "redis_memory_used", "redis_may_evict"):
                self.metrics.drop(name)
            return
        self._memory()
        now_ms = time.time() * 1000
        for key in streams:
            exchange = exchange_of_key(key)
            for info in self.client.xinfo_groups(key):
                if _s(info["name"]) != self.group:
                    continue
                lag = int(info.get("lag") or 0)
                pending = int(info.get("pending") or 0)
                oldest = self._oldest_ms(key, _s(info.get("last-delivered-id") or "0-0"), pending)
                self.metrics.set(f"lag:{exchange}", lag)
                self.metrics.set(f"pending:{exchange}", pending)
                age = 0.0 if oldest is None else max(0.0, (now_ms - oldest) / 1000)
                self.metrics.set(f"lag_seconds:{exchange}", age)

    def _oldest_ms(self, key: str, last_delivered: str, pending: int) -> int | None:
        """Time of the oldest entry the group has not acked: its oldest pending one, else the
        first after its last delivered one; None when it is all done."""
        if pending:
            summary = self.client.xpending(key, self.group)
            if summary and summary.get("min"):
                return _ms(_s(summary["min"]))
        after = self.client.xrange(key, min=f"({last_delivered}", count=1)
        return _ms(_s(after[0][0])) if after else None

    def _memory(self) -> None:
        try:
            reply: Any = self.client.info("memory")
        except redis.ResponseError:  # NOPERM: INFO is not this user's (the README's ACL has it)
            return
        ratio = memory_used(reply)
        if ratio is None:
            self.metrics.drop("redis_memory_used")
        else:
            self.metrics.set("redis_memory_used", ratio)
        problems = eviction_problems(reply)
        self.metrics.set("redis_may_evict", 1 if problems else 0)
        if problems != self._evicting:
            if problems:
                logger.error("redis: %s (set maxmemory-policy noeviction)", problems[0])
            else:
                logger.info("redis: maxmemory-policy no longer evicts the streams")
            self._evicting = problems


def memory_used(memory: Mapping[str, Any]) -> float | None:
    """``used_memory`` over ``maxmemory`` of the fullest server of an ``INFO memory`` reply;
    None when no server has a ``maxmemory`` (it then grows until the host's memory is gone)."""
    ratios = [
        int(info.get("used_memory", 0)) / int(info["maxmemory"])
        for info in per_server(memory)
        if int(info.get("maxmemory", 0) or 0) > 0
    ]
    return max(ratios) if ratios else None
