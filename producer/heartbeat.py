"""The producer's heartbeat: every few seconds, each feed's state in a Redis hash with a TTL.

Key ``tickvault:feeds:{<producer name>}``, one field per feed session (its label, e.g.
``binance/0``), each a JSON object::

    exchange, context, symbols, channels
    state            "connected" | "connecting" | "backoff" | "stopped"
    connected_since  ns since the epoch (a connection has been open since then), or null
    last_frame_ns    when the heartbeat first saw the feed's frame count move, or null: it is
                     sampled each tick, so it is up to one tick late (no clock read per frame)
    reconnects_1h    reconnects in the last hour
    conn             the newest open connection's id, or null
    heartbeat_ns     when this heartbeat was written (the same in every field of one write)
    every_s          the heartbeat's interval

One ``HSET`` and one ``EXPIRE`` in one round trip, every ``every_s``: a producer that dies stops
renewing the key and it disappears after ``ttl_s``; ``tickvault status`` calls a heartbeat older
than three intervals stale before that. A clean stop writes a last heartbeat with every feed
``stopped``. Fields of an earlier run of the same producer name with other feeds stay in the
hash (no ``DEL``: the ACL needs only ``+hset +expire``); their ``heartbeat_ns`` is older than the
newest, so readers skip them (:func:`current_fields`).

Invariant: the heartbeat never disturbs the producer. It has its own connection (the producer's
``redis.url``, read the same way), a write is bounded by the interval, and a Redis that is away
or refuses is logged once and tried again at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import hiredis

from common.errors import TickvaultError

from .wire import RedisWire, command

if TYPE_CHECKING:
    from .session import FeedSession

logger = logging.getLogger(__name__)

FEEDS_PREFIX = "tickvault:feeds:"
EVERY_S = 5.0
TTL_S = 30
HOUR_S = 3600.0
STOP_WRITE_S = 1.0  # the last ("stopped") heartbeat may take this long at most


def feeds_key(producer: str) -> str:
    return f"{FEEDS_PREFIX}{{{producer}}}"


def producer_of_key(key: str) -> str:
    """``tickvault:feeds:{p1}`` -> ``p1``."""
    start, end = key.find("{"), key.rfind("}")
    return key[start + 1 : end] if 0 <= start < end else key.removeprefix(FEEDS_PREFIX)


def current_fields(fields: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The fields of a hash's newest write: older ones are feeds of an earlier run."""
    stamps = [f.get("heartbeat_ns") for f in fields.values()]
    newest = max((s for s in stamps if isinstance(s, int)), default=None)
    return {label: f for label, f in fields.items() if f.get("heartbeat_ns") == newest}


@dataclass
class FrameClock:
    """When each feed's frame count last moved, from samples of its open connections'
    counters: ``(conn id, frames)`` pairs. Nothing is added to the receive path."""

    seen: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> conn -> frames
    last_ns: dict[str, int] = field(default_factory=dict)

    def observe(self, label: str, counts: Mapping[str, int], now_ns: int) -> int | None:
        """Record a sample taken at ``now_ns``; return the feed's last frame time (or None)."""
        before = self.seen.get(label, {})
        if any(n > before.get(conn, 0) for conn, n in counts.items()):
            self.last_ns[label] = now_ns
        self.seen[label] = dict(counts)
        return self.last_ns.get(label)


def feed_record(
    session: FeedSession, frames: FrameClock, *, now_ns: int, now: float, every_s: float
) -> dict[str, Any]:
    """One feed's field (a JSON-able dict), sampled at ``now_ns`` (wall) / ``now`` (monotonic)."""
    counts = {gen.conn_id: gen.frames for gen in session.open}
    last = frames.observe(session.label, counts, now_ns)
    return {
        "exchange": session.venue.exchange,
        "context": session.plan.context,
        "symbols": list(session.plan.symbols),
        "channels": [str(c) for c in session.plan.channels],
        "state": session.state,
        "connected_since": session.connected_since_ns,
        "last_frame_ns": last,
        "reconnects_1h": session.reconnects_within(HOUR_S, now),
        "conn": session.open[-1].conn_id if session.open else None,
        "heartbeat_ns": now_ns,
        "every_s": every_s,
    }


def pack(key: str, records: Mapping[str, Mapping[str, Any]], ttl_s: int) -> bytes:
    """``HSET key label json ...`` and ``EXPIRE key ttl_s``, packed for one round trip."""
    parts = [b"HSET", key.encode()]
    for label, record in records.items():
        parts += [label.encode(), json.dumps(record, separators=(",", ":")).encode()]
    return command(*parts) + command(b"EXPIRE", key.encode(), str(int(ttl_s)).encode())


async def publish(
    url: str,
    producer: str,
    sessions: Sequence[FeedSession],
    stop: asyncio.Event,
    *,
    every_s: float = EVERY_S,
    ttl_s: int = TTL_S,
    wire: RedisWire | None = None,
) -> None:
    """Write the heartbeat every ``every_s`` until ``stop`` is set, then once more with every
    feed ``stopped``. Never raises for Redis: a failure is logged once, and retried next tick.

    Raises:
        ConfigError: ``url`` is not a valid ``redis.url`` (the producer checked it already).
    """
    if wire is None:
        wire = RedisWire(url, timeout=max(0.5, min(every_s, 5.0)))
    key = feeds_key(producer)
    frames = FrameClock()
    failing = False
    try:
        while True:
            stopping = stop.is_set()
            now_ns, now = time.time_ns(), time.monotonic()
            records = {
                s.label: feed_record(s, frames, now_ns=now_ns, now=now, every_s=every_s)
                for s in sessions
            }
            if stopping:
                for record in records.values():
                    record.update(state="stopped", conn=None, connected_since=None)
            try:
                async with asyncio.timeout(STOP_WRITE_S if stopping else every_s):
                    await wire.execute(pack(key, records, ttl_s), 2)
            except (TickvaultError, hiredis.ReplyError, OSError, TimeoutError) as exc:
                if not failing:  # once per outage: the producer's own logs say the rest
                    logger.warning("heartbeat: cannot write %s: %s (retrying)", key, exc)
                failing = True
                await wire.close()  # a timed-out round trip leaves the connection unusable
            else:
                if failing:
                    logger.info("heartbeat: writing %s again", key)
                failing = False
            if stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
    finally:
        await wire.close()
