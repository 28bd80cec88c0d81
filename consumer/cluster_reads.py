"""XREADGROUP on a Redis Cluster: one read per hash slot, sent straight to its node; while every
stream is drained, the blocking reads wait side by side."""

from __future__ import annotations

import logging
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

from redis.cluster import RedisCluster
from redis.crc import key_slot

from .reads import xreadgroup_args

logger = logging.getLogger(__name__)


def raw_reply(response: Any, **options: Any) -> Any:
    """A response callback that leaves a reply as it came (the worker decodes entries itself)."""
    return response


class ClusterReads:
    """XREADGROUP on a Redis Cluster, where one command may not name keys of several hash
    slots (CROSSSLOT): one XREADGROUP per slot (a stream's key has its exchange's hash tag, so
    per stream), sent straight to the slot's node (which also spares redis-py a ``COMMAND
    GETKEYS`` round trip per read to find the keys of XREADGROUP).

    Without a block all are read in turn. To block while every stream is drained, a read per
    slot waits on its own thread; the first to answer returns, the others go on waiting and are
    collected by a later read (whatever they deliver is this consumer's: it is never lost, only
    read later), or by :meth:`finish` at the stop.
    """

    def __init__(self, client: RedisCluster, group: str, name: str) -> None:
        self.client: Any = client  # (redis-py's cluster client is mostly untyped)
        self.group = group
        self.name = name
        self._waiting: dict[int, Future[list[Any]]] = {}  # slot -> its blocked read
        self._ready: list[Any] = []  # answers collected when another read failed
        self._threads: ThreadPoolExecutor | None = None

    def read(self, live: dict[str, str], count: int, block_ms: int) -> list[Any]:
        """(key, entries) pairs, as one XREADGROUP over ``live`` would answer."""
        by_slot: dict[int, dict[str, str]] = {}
        for key, last in live.items():
            by_slot.setdefault(key_slot(key.encode()), {})[key] = last
        pairs, self._ready = self._ready, []
        try:
            self._collect(pairs, 0.0)
            idle = {slot: s for slot, s in by_slot.items() if slot not in self._waiting}
            for streams in idle.values():
                pairs += self._xreadgroup(streams, count, 0)
            if block_ms <= 0 or any(entries for _, entries in pairs):
                return pairs
            if len(idle) == 1 and not self._waiting:  # one slot: wait on this thread
                [streams] = idle.values()
                return pairs + self._xreadgroup(streams, count, block_ms)
            if self._threads is None:
                self._threads = ThreadPoolExecutor(len(live), thread_name_prefix="xreadgroup")
            for slot, streams in idle.items():
                self._waiting[slot] = self._threads.submit(
                    self._xreadgroup, streams, count, block_ms
                )
            self._collect(pairs, block_ms / 1000)
        except BaseException:
            self._ready = pairs  # read, so delivered to us: handed out by the next read
            raise
        return pairs

    def finish(self, timeout: float) -> list[Any]:
        """The answers of the reads still waiting (each ends within its block time, so
        ``timeout`` is only a bound for a server that hangs)."""
        pairs, self._ready = self._ready, []
        if self._waiting:
            wait_futures(list(self._waiting.values()), timeout)
            try:
                self._collect(pairs, 0.0)
            except Exception as exc:  # their entries stay pending for a claim
                logger.warning("a blocked read failed at the stop: %s", exc)
        return pairs

    def held(self) -> list[Any]:
        """(key, entries) pairs answered to this consumer and not yet handed out: kept after
        another slot's read failed, or a blocked read's answer not yet collected."""
        pairs = list(self._ready)
        for future in list(self._waiting.values()):
            if future.done() and future.exception() is None:
                pairs += future.result()
        return pairs

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None

    def _collect(self, pairs: list[Any], timeout: float) -> None:
        """Add the answers of the blocked reads that are done (waiting up to ``timeout`` for
        one) to ``pairs``; then raise the first error one of them met."""
        if not self._waiting:
            return
        if timeout > 0:
            wait_futures(list(self._waiting.values()), timeout, return_when=FIRST_COMPLETED)
        failure: BaseException | None = None
        for slot, future in list(self._waiting.items()):
            if not future.done():
                continue
            del self._waiting[slot]
            try:
                pairs += future.result()
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def _xreadgroup(self, streams: dict[str, str], count: int, block_ms: int) -> list[Any]:
        node = self.client.get_node_from_key(next(iter(streams)))
        if node.redis_connection is not None:  # the node's client parses replies first
            node.redis_connection.set_response_callback("XREADGROUP", raw_reply)
        args = xreadgroup_args(self.group, self.name, streams, count, block_ms)
        reply = self.client.execute_command("XREADGROUP", *args, target_nodes=node)
        # RESP2 [[key, entries], ...]; RESP3 a map
        return list(reply.items()) if isinstance(reply, dict) else list(reply or [])
