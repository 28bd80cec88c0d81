"""Who holds which pending entry, and how often it was delivered.

- **Claiming.** Entries idle for ``claim_idle_ms`` on *another* consumer (a dead or stuck one) are
  found with ``XPENDING ... IDLE`` (which also gives each one's delivery count) and taken with
  ``XCLAIM`` (which counts one more delivery). Entries this consumer holds itself are never
  claimed by it again.
- **Delivery counts.** Entries read the first time (``>``) were delivered once; for our own
  pending entries read again at start and for claimed ones, the count comes from ``XPENDING``.
  The worker dead-letters an entry past ``max_deliveries`` and handles entries delivered more
  than twice one at a time (see ``consumer.worker``).
- **Leases.** While a batch waits for a server that is away, its entries are touched with
  ``XCLAIM ... JUSTID`` (which resets their idle time without counting a delivery) so that other
  consumers, stuck on the same server, do not claim them from a live holder.
- **Release.** When this consumer stops for a reason that is not the data's (a stop while a
  server is away, a fatal server error), the entries it still holds get their delivery count
  set back with ``XCLAIM ... RETRYCOUNT n JUSTID``: an outage or a misconfiguration does not
  spend the delivery budget of the frames it happened to hold.

Every command names one stream (on a Redis Cluster: one slot); ``release`` pipelines several
without a transaction, which redis-py's cluster client splits per node.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from common.redis_url import RedisClient

logger = logging.getLogger(__name__)

PAGE = 1_000  # XPENDING page size


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Claimed:
    entries: list[tuple[str, Any]]  # (id, fields) as XCLAIM returns them
    deliveries: dict[str, int]  # id -> times delivered, this delivery included
    gone: int  # ids pending on another consumer but no longer in the stream (trimmed)


class Claims:
    def __init__(self, client: RedisClient, group: str, name: str) -> None:
        self.client = client
        self.group = group
        self.name = name

    def own_deliveries(self, key: str, ids: list[str]) -> dict[str, int]:
        """Delivery counts of our own pending ``ids`` (just read again with id 0)."""
        if not ids:
            return {}
        rows: Any = self.client.xpending_range(
            key, self.group, min=ids[0], max=ids[-1], count=len(ids) + PAGE,
            consumername=self.name,
        )  # fmt: skip
        wanted = set(ids)
        return {
            _s(r["message_id"]): int(r["times_delivered"])
            for r in rows
            if _s(r["message_id"]) in wanted
        }

    def claim(self, key: str, min_idle_ms: int, count: int) -> Claimed:
        """Claim up to ``count`` entries idle for ``min_idle_ms`` on other consumers."""
        out = Claimed([], {}, 0)
        start = "-"
        while len(out.entries) + out.gone < count:
            rows: Any = self.client.xpending_range(
                key, self.group, min=start, max="+", count=PAGE, idle=min_idle_ms
            )
            if not rows:
                break
            theirs = {
                _s(r["message_id"]): int(r["times_delivered"])
                for r in rows
                if _s(r["consumer"]) != self.name
            }
            ids: list[Any] = list(theirs)[: count - len(out.entries) - out.gone]
            if ids:
                got: Any = self.client.xclaim(key, self.group, self.name, min_idle_ms, ids)
                taken = {_s(raw_id) for raw_id, _ in got}
                out.entries += [(_s(raw_id), fields) for raw_id, fields in got]
                for entry_id in taken:
                    out.deliveries[entry_id] = theirs[entry_id] + 1
                # Redis >= 7 drops ids no longer in the stream from the PEL and omits them;
                # ids claimed by another consumer in between are omitted too (not counted).
                out.gone += sum(1 for i in ids if i not in taken and self._gone(key, i))
            if len(rows) < PAGE:
                break
            start = "(" + _s(rows[-1]["message_id"])
        return out

    def _gone(self, key: str, entry_id: str) -> bool:
        return not self.client.xrange(key, entry_id, entry_id)

    def renew(self, held: Mapping[str, Iterable[str]], min_idle_ms: int) -> None:
        """Reset the idle time of our held entries that have been idle ``min_idle_ms``."""
        for key, held_ids in held.items():
            ids: list[Any] = list(held_ids)
            if ids:
                self.client.xclaim(key, self.group, self.name, min_idle_ms, ids, justid=True)

    def release(
        self, held: Mapping[str, Iterable[str]], deliveries: Mapping[tuple[str, str], int]
    ) -> int:
        """Give back the delivery each held entry spent with us (see the module docstring)."""
        by_count: dict[tuple[str, int], list[Any]] = defaultdict(list)
        for key, ids in held.items():
            for entry_id in ids:
                by_count[(key, deliveries.get((key, entry_id), 1) - 1)].append(entry_id)
        released = 0
        pipe = self.client.pipeline(transaction=False)
        for (key, count), ids in by_count.items():
            for i in range(0, len(ids), PAGE):
                pipe.xclaim(
                    key, self.group, self.name, 0, ids[i : i + PAGE], retrycount=count,
                    justid=True,
                )  # fmt: skip
                released += len(ids[i : i + PAGE])
        pipe.execute()
        return released
