"""Who holds which pending entry, and how often it was delivered.

- **Claiming.** Entries idle for ``claim_idle_ms`` on *another* consumer (a dead or stuck one) are
  found with ``XPENDING ... IDLE`` (which also gives each one's delivery count) and taken with
  ``XCLAIM`` (which counts one more delivery). Entries this consumer holds in memory are never
  claimed by it again; its *other* entries idle that long are taken back the same way: their
  delivery was lost (an XREADGROUP or XCLAIM that ran on the server, its reply lost with the
  connection), and nothing else would ever deliver them again while the process lives.
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
- **A vanished group.** A command that answers NOGROUP (the stream and its group are gone: a
  deleted key, a FLUSHDB, a Redis restarted without its data) calls ``on_nogroup``, which
  creates the groups again, before the error is raised: the caller's retry finds them.

Every command names one stream (on a Redis Cluster: one slot); ``release`` pipelines several
without a transaction, which redis-py's cluster client splits per node.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from common.errors import redis_code
from common.redis_url import RedisClient

logger = logging.getLogger(__name__)

PAGE = 1_000  # XPENDING page size

T = TypeVar("T")


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Claimed:
    entries: list[tuple[str, Any]]  # (id, fields) as XCLAIM returns them
    deliveries: dict[str, int]  # id -> times delivered, this delivery included
    gone: int  # ids pending but no longer in the stream (trimmed)
    own: int = 0  # of ``entries``, ours taken back (their delivery was lost)


class Claims:
    def __init__(
        self,
        client: RedisClient,
        group: str,
        name: str,
        on_nogroup: Callable[[], object] | None = None,
    ) -> None:
        self.client = client
        self.group = group
        self.name = name
        self.on_nogroup = on_nogroup  # NOGROUP: create the groups again (module docstring)

    def _grouped(self, command: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``command(*args, **kwargs)``, which names the group; on NOGROUP ``on_nogroup`` runs
        first, then the error is raised for the caller to retry (or, for a lease, to log)."""
        try:
            return command(*args, **kwargs)
        except redis.ResponseError as exc:
            if self.on_nogroup is not None and redis_code(exc) == "NOGROUP":
                self.on_nogroup()
            raise

    def own_deliveries(self, key: str, ids: list[str]) -> dict[str, int]:
        """Delivery counts of our own pending ``ids`` (just read again with id 0)."""
        if not ids:
            return {}
        rows: Any = self._grouped(
            self.client.xpending_range, key, self.group, min=ids[0], max=ids[-1],
            count=len(ids) + PAGE, consumername=self.name,
        )  # fmt: skip
        wanted = set(ids)
        return {
            _s(r["message_id"]): int(r["times_delivered"])
            for r in rows
            if _s(r["message_id"]) in wanted
        }

    def claim(
        self, key: str, min_idle_ms: int, count: int, held: Container[str] | None = None
    ) -> Claimed:
        """Claim up to ``count`` entries idle for ``min_idle_ms`` on other consumers, and, with
        ``held`` (the ids of ``key`` this consumer holds in memory, taken before this call),
        its own entries idle that long that are not held. ``held`` None: none of ours (they
        are still being read again from id 0)."""
        out = Claimed([], {}, 0)
        start = "-"
        while len(out.entries) + out.gone < count:
            rows: Any = self._grouped(
                self.client.xpending_range, key, self.group, min=start, max="+", count=PAGE,
                idle=min_idle_ms,
            )  # fmt: skip
            if not rows:
                break
            takeable: dict[str, int] = {}
            ours: set[str] = set()
            for r in rows:
                entry_id = _s(r["message_id"])
                if _s(r["consumer"]) == self.name:
                    if held is None or entry_id in held:
                        continue
                    ours.add(entry_id)
                takeable[entry_id] = int(r["times_delivered"])
            ids: list[Any] = list(takeable)[: count - len(out.entries) - out.gone]
            if ids:
                got: Any = self._grouped(
                    self.client.xclaim, key, self.group, self.name, min_idle_ms, ids
                )
                taken = {_s(raw_id) for raw_id, _ in got}
                out.entries += [(_s(raw_id), fields) for raw_id, fields in got]
                for entry_id in taken:
                    out.deliveries[entry_id] = takeable[entry_id] + 1
                out.own += len(taken & ours)
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
                self._grouped(
                    self.client.xclaim, key, self.group, self.name, min_idle_ms, ids,
                    justid=True,
                )  # fmt: skip

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
