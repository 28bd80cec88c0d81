"""How much of each stream to keep, and trimming it without ever losing an unconsumed frame.

The window: ``redis.maxlen`` frames (the replay window) and, with ``redis.retention``, no older
than that. Redis' own ``MAXLEN`` counts entries, and an entry holds one frame or a run of up to
``RUN_MAX``, so the publisher counts the frames it wrote per stream in one-second buckets of
entry id time (:class:`FrameWindow`, pure) and trims older seconds with
``XTRIM key MINID ~ <id>``.

The rule (:class:`Retention`): a trim never passes the oldest entry that any consumer group on
the stream has not acknowledged: its oldest pending entry, else its last delivered one
(``XINFO GROUPS``, ``XPENDING``; computed, so it works on every server version; Redis 8.2's
``XTRIM ... ACKED`` would say the same). A stream without a group keeps everything until the
first consumer creates one. A stream that is gone (deleted, or a Redis restarted without its
data: ``XINFO GROUPS`` answers ``ERR no such key``) or a group deleted between the two questions
(``NOGROUP``) is nothing to trim now, not an error: the stream is forgotten until this producer
writes to it again. While consumers are behind, the stream grows past its window,
loudly: the gauge ``retention_held_back`` (entries the slowest group has not acked) and a
warning with the lag, at most once a minute. When Redis' memory then fills, XADD is refused
(OOM) and the spill takes the frames.

A slow stream would need many buckets to hold ``max_frames`` (5 frames a second: 1,000,000
seconds); past ``MAX_BUCKETS`` a stream's buckets merge pairwise into buckets twice as wide, so
memory stays bounded and the window overshoots by at most one bucket.

Trimming never removes one of the newest ``max_frames`` frames this producer wrote. Another
producer writing to the same stream only makes the window longer (its frames are not counted
here); a restarted producer counts from zero, so until it has written ``max_frames`` frames only
the entry cap trims.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.errors import FatalError, TransientError
from common.metrics import Metrics

from .wire import RedisWire, command

logger = logging.getLogger(__name__)

MAX_BUCKETS = 4096


@dataclass
class _Stream:
    buckets: deque[list[int]] = field(default_factory=deque)  # [start ms, frames]
    frames: int = 0
    trim_ms: int = 0  # entries with ids below this ms may go
    width_ms: int = 1000  # each bucket's span

    def coarsen(self) -> None:
        """Merge buckets pairwise: twice as wide, half as many."""
        self.width_ms *= 2
        merged: deque[list[int]] = deque()
        for start, frames in self.buckets:
            start = start // self.width_ms * self.width_ms
            if merged and merged[-1][0] == start:
                merged[-1][1] += frames
            else:
                merged.append([start, frames])
        self.buckets = merged


class FrameWindow:
    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames
        self._streams: dict[str, _Stream] = {}
        self._moved: set[str] = set()

    def add(self, key: str, entry_id: bytes, frames: int) -> None:
        """Count an entry of ``frames`` frames that Redis stored as ``entry_id``."""
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream()
        start = int(entry_id.partition(b"-")[0]) // stream.width_ms * stream.width_ms
        buckets = stream.buckets
        if buckets and buckets[-1][0] >= start:
            buckets[-1][1] += frames  # same bucket (or a clock step back: keep it in the last)
        else:
            buckets.append([start, frames])
            if len(buckets) > MAX_BUCKETS:
                stream.coarsen()
                buckets = stream.buckets
        stream.frames += frames
        # Drop whole buckets from the front while the rest still holds max_frames.
        while len(buckets) > 1 and stream.frames - buckets[0][1] >= self.max_frames:
            stream.frames -= buckets.popleft()[1]
            stream.trim_ms = buckets[0][0]
            self._moved.add(key)

    def target_ms(self, key: str) -> int:
        """Entries of ``key`` with ids below this ms may go (0: none)."""
        stream = self._streams.get(key)
        return stream.trim_ms if stream else 0

    def trims(self) -> list[tuple[str, int]]:
        """(key, MINID ms) for each stream whose window moved since the last call."""
        out = [(key, self._streams[key].trim_ms) for key in sorted(self._moved)]
        self._moved.clear()
        return out

    def forget(self, key: str) -> None:
        """``key`` is gone (deleted): the frames counted in it with it."""
        self._streams.pop(key, None)
        self._moved.discard(key)

    def frames(self, key: str) -> int:
        """Frames counted in ``key``'s window."""
        stream = self._streams.get(key)
        return stream.frames if stream else 0

    def buckets(self, key: str) -> int:
        stream = self._streams.get(key)
        return len(stream.buckets) if stream else 0


StreamId = tuple[int, int]
WARN_EVERY_S = 60.0


def parse_id(raw: bytes | str) -> StreamId:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _fields(flat: list[Any]) -> dict[str, Any]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): v
        for k, v in zip(flat[::2], flat[1::2], strict=False)
    }


@dataclass(frozen=True)
class GroupState:
    name: str
    pending: int
    last_delivered: StreamId
    lag: int | None  # entries not yet delivered (None: Redis cannot tell)
    oldest_pending: StreamId | None = None

    @property
    def unacked_from(self) -> StreamId:
        """Entries below this id are acknowledged by this group."""
        return self.oldest_pending if self.oldest_pending is not None else self.last_delivered

    @property
    def behind(self) -> int:
        return self.pending + (self.lag or 0)


def consumed_bound(groups: list[GroupState]) -> StreamId | None:
    """The highest MINID that removes no entry any group still needs; None: no group yet, so
    nothing may go."""
    if not groups:
        return None
    return min(g.unacked_from for g in groups)


def parse_groups(reply: list[Any]) -> list[GroupState]:
    """``XINFO GROUPS`` (RESP2: a list of flat name/value lists)."""
    out = []
    for flat in reply:
        f = _fields(flat)
        lag = f.get("lag")
        out.append(
            GroupState(
                name=f["name"].decode() if isinstance(f["name"], bytes) else str(f["name"]),
                pending=int(f["pending"]),
                last_delivered=parse_id(f["last-delivered-id"]),
                lag=int(lag) if lag is not None else None,
            )
        )
    return out


def stream_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis saying the stream (``XINFO GROUPS``: ``ERR no such key``) or
    one of its groups (``XPENDING``: ``NOGROUP``) does not exist, rather than a refusal or an
    outage."""
    if isinstance(exc, FatalError):
        return exc.code == "ERR" and "no such key" in exc.problem.lower()
    return isinstance(exc, TransientError) and "NOGROUP" in str(exc)


class Retention:
    """Trims the streams this producer writes (see the module docstring)."""

    def __init__(
        self,
        wire: RedisWire,
        metrics: Metrics,
        *,
        max_frames: int,
        max_age_s: float | None,
        every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.wire = wire
        self.metrics = metrics
        self.window = FrameWindow(max_frames) if max_frames > 0 else None
        self.max_age_ms = int(max_age_s * 1000) if max_age_s else None
        self.every_s = every_s
        self.clock = clock
        self.wall_ms = wall_ms
        self._keys: set[str] = set()
        self._trimmed: dict[str, StreamId] = {}
        self._last = clock()
        self._last_warning = 0.0

    @property
    def enabled(self) -> bool:
        return self.window is not None or self.max_age_ms is not None

    def add(self, key: str, entry_id: bytes, frames: int) -> None:
        """Count an entry of ``frames`` frames that Redis stored as ``entry_id``."""
        self._keys.add(key)
        if self.window is not None:
            self.window.add(key, entry_id, frames)

    def next_tick_in(self, now: float) -> float:
        return max(0.0, self._last + self.every_s - now) if self._keys else self.every_s

    def target(self, key: str) -> StreamId:
        """The MINID the window alone asks for."""
        ms = self.window.target_ms(key) if self.window is not None else 0
        if self.max_age_ms is not None:
            ms = max(ms, self.wall_ms() - self.max_age_ms)
        return ms, 0

    async def tick(self) -> None:
        """At most once per ``every_s``: trim each stream as far as the rule allows."""
        now = self.clock()
        if now - self._last < self.every_s:
            return
        self._last = now
        held_back = 0
        for key in sorted(self._keys):
            target = self.target(key)
            if target <= self._trimmed.get(key, (0, 0)):
                continue
            try:
                groups = await self._groups(key)
            except (FatalError, TransientError) as exc:
                if not stream_gone(exc):
                    raise
                self._gone(key, exc)
                continue
            bound = consumed_bound(groups)
            minid = target if bound is None or target <= bound else bound
            if bound is None:
                minid = (0, 0)  # no group yet: nothing may go
            if target > minid:
                behind = max((g.behind for g in groups), default=0)
                held_back = max(held_back, behind)
                self._warn(key, groups, target)
            if minid > self._trimmed.get(key, (0, 0)):
                trim = command(b"XTRIM", key.encode(), b"MINID", b"~", b"%d-%d" % minid)
                await self.wire.execute(trim, 1)
                self._trimmed[key] = minid
                self.metrics.inc("trims")
        self.metrics.set("retention_held_back", held_back)

    def _gone(self, key: str, exc: FatalError | TransientError) -> None:
        """Nothing to trim in ``key`` now. A deleted stream took every frame counted in it:
        forgotten until the next :meth:`add`, so it is not asked about every second."""
        if isinstance(exc, TransientError):  # NOGROUP: a group went between two questions
            logger.info("%s: a consumer group is gone (%s): trimming at the next tick", key, exc)
            return
        logger.warning("%s: the stream is gone (deleted? %s): nothing to trim", key, exc.problem)
        self._keys.discard(key)
        self._trimmed.pop(key, None)
        if self.window is not None:
            self.window.forget(key)

    async def _groups(self, key: str) -> list[GroupState]:
        [reply] = await self.wire.execute(command(b"XINFO", b"GROUPS", key.encode()), 1)
        assert isinstance(reply, list)
        groups = parse_groups(reply)
        busy = [g for g in groups if g.pending]
        if not busy:
            return groups
        payload = b"".join(command(b"XPENDING", key.encode(), g.name.encode()) for g in busy)
        summaries = await self.wire.execute(payload, len(busy))
        oldest = {}
        for g, summary in zip(busy, summaries, strict=True):
            assert isinstance(summary, list)
            if summary and summary[1] is not None:
                oldest[g.name] = parse_id(summary[1])
        return [
            GroupState(g.name, g.pending, g.last_delivered, g.lag, oldest.get(g.name))
            for g in groups
        ]

    def _warn(self, key: str, groups: list[GroupState], target: StreamId) -> None:
        now = self.clock()
        if now - self._last_warning < WARN_EVERY_S:
            return
        self._last_warning = now
        if not groups:
            logger.warning("%s: no consumer group yet: keeping every frame until one exists", key)
            return
        slowest = max(groups, key=lambda g: g.behind)
        logger.warning(
            "%s: consumers are behind (group %s: %d pending, lag %s): keeping frames past the "
            "retention window until they are acked",
            key, slowest.name, slowest.pending, slowest.lag,
        )  # fmt: skip
