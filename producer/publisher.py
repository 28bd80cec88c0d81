"""Frames -> Redis Stream, pipelined.

Sessions put frames (with their connection's :class:`~producer.wire.XaddPacker`) in an
in-memory buffer; one task sends everything buffered in one pipelined round trip (at most
``pipeline_max`` frames), then looks again. A lone frame goes out at once; frames that arrive
during a round trip ride the next one, and back-to-back frames of one connection share a stream
entry (a run, see ``common.envelope``). So XADDs batch themselves under load, and Redis' cost per
frame falls, without adding latency when the feed is slow.

Each stream keeps about ``max_frames`` frames (``redis.maxlen``): see ``producer.retention``.

Memory is bounded two ways. While Redis is up but slower than the feeds, sessions wait once the
buffer holds ``high_water`` frames (they stop reading their sockets: TCP backpressure), so a burst
never piles up here. While Redis is unreachable the buffer keeps up to ``buffer_frames`` frames,
in order, the loss of Redis is logged and counted, and they are flushed, oldest first, when
Redis returns; frames that find the buffer full are dropped, counted and logged: a gap, never a
silent one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque

from common.errors import Action, backoff, classify
from common.metrics import Metrics

from .retention import FrameWindow
from .wire import Pending, RedisWire, XaddPacker, command, pack_runs

logger = logging.getLogger(__name__)


class Publisher:
    def __init__(
        self,
        wire: RedisWire,
        *,
        buffer_frames: int,
        pipeline_max: int,
        metrics: Metrics,
        backoff_max_s: float = 30.0,
        high_water: int = 20_000,
        max_frames: int = 0,
        trim_every_s: float = 1.0,
    ) -> None:
        self.wire = wire
        self.buffer_frames = buffer_frames
        self.pipeline_max = pipeline_max
        self.metrics = metrics
        self.backoff_max_s = backoff_max_s
        self.high_water = min(high_water, buffer_frames)
        self._buffer: deque[Pending] = deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.window = FrameWindow(max_frames) if max_frames > 0 else None
        self.trim_every_s = trim_every_s
        self.drain_budget_s = 10.0
        self._last_trim = time.monotonic()
        self._down_since: float | None = None
        self._last_drop_log = 0.0
        self._dropped_since_log = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def full(self) -> bool:
        """True when a session should wait (Redis up and ``high_water`` frames queued)."""
        return len(self._buffer) >= self.high_water and self._down_since is None

    async def room(self) -> None:
        """Wait until the buffer is below ``high_water`` again (or Redis went down)."""
        while self.full:
            self._room.clear()
            await self._room.wait()

    def put(self, packer: XaddPacker, frame: bytes, binary: bool, seq: int, recv_ns: int) -> bool:
        """Queue one frame. Returns False (and counts a drop) when the buffer is full."""
        if len(self._buffer) >= self.buffer_frames:
            self.metrics.inc("dropped")
            self._dropped_since_log += 1
            now = time.monotonic()
            if now - self._last_drop_log >= 5.0:
                logger.error(
                    "buffer full (%d frames, redis down): dropped %d frames since last report",
                    len(self._buffer),
                    self._dropped_since_log,
                )
                self._last_drop_log = now
                self._dropped_since_log = 0
            return False
        self._buffer.append((packer, frame, binary, seq, recv_ns))
        self._wake.set()
        return True

    async def run(self, stop: asyncio.Event, *, drain_budget_s: float | None = None) -> None:
        """Publish until ``stop`` is set, then flush what is buffered within ``drain_budget_s``
        (default: :attr:`drain_budget_s`) from the moment the stop is seen: one deadline for
        every retry of the flush together.

        Raises:
            FatalError: Redis refused in a way no retry can fix; the buffer is kept.
        """
        delays = None
        deadline: float | None = None
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while True:
                if stop.is_set() and deadline is None:
                    budget = self.drain_budget_s if drain_budget_s is None else drain_budget_s
                    deadline = time.monotonic() + budget
                if not self._buffer:
                    if stop.is_set():
                        return
                    self._wake.clear()
                    wake = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait({wake, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                    wake.cancel()
                    continue
                try:
                    await self._send_some()
                    delays = None
                except Exception as exc:
                    if classify(exc) is not Action.RETRY:
                        raise
                    if delays is None:
                        # Redis is local and critical: probe it about every second, not on the
                        # exchange-reconnect backoff, so the buffer drains soon after its return.
                        delays = backoff(initial=0.2, cap=min(1.0, self.backoff_max_s))
                    self._note_down(exc)
                    left = float("inf") if deadline is None else deadline - time.monotonic()
                    if left <= 0:
                        logger.error(
                            "stopping with %d frames unsent: redis unreachable",
                            len(self._buffer),
                        )
                        self.metrics.inc("unsent_at_stop", len(self._buffer))
                        return
                    await asyncio.sleep(min(next(delays), left, 1.0 if stop.is_set() else left))
        finally:
            stop_wait.cancel()
            await self.wire.close()

    @property
    def lost(self) -> int:
        """Frames that never reached Redis: dropped (buffer full) or unsent at stop."""
        return self.metrics.counters["dropped"] + self.metrics.counters["unsent_at_stop"]

    async def _send_some(self) -> None:
        n = min(len(self._buffer), self.pipeline_max)
        payload, sizes = pack_runs(itertools.islice(self._buffer, n))
        replies = await self.wire.execute(payload, len(sizes))
        # Only now are they in Redis: drop them from the buffer. (A failure midway may have
        # stored some of them; they are sent again, and the consumer's natural keys dedupe.)
        for _ in range(n):
            self._buffer.popleft()
        self.metrics.inc("published", n)
        self.metrics.inc("entries", len(sizes))
        self.metrics.inc("round_trips")
        if self._down_since is not None:
            logger.warning(
                "redis is back after %.1f s; flushing %d buffered frames",
                time.monotonic() - self._down_since,
                len(self._buffer) + n,
            )
            self._down_since = None
        if len(self._buffer) < self.high_water // 2:
            self._room.set()
        if self.window is not None:
            for (key, frames), entry_id in zip(sizes, replies, strict=True):
                if isinstance(entry_id, bytes):
                    self.window.add(key, entry_id, frames)
            await self._trim()

    async def _trim(self) -> None:
        """At most once per ``trim_every_s``: XTRIM the streams whose frame window moved."""
        assert self.window is not None
        now = time.monotonic()
        if now - self._last_trim < self.trim_every_s:
            return
        self._last_trim = now
        trims = self.window.trims()
        if trims:
            commands = [
                command(b"XTRIM", key.encode(), b"MINID", b"~", b"%d" % ms) for key, ms in trims
            ]
            await self.wire.execute(b"".join(commands), len(commands))
            self.metrics.inc("trims", len(commands))

    def _note_down(self, exc: BaseException) -> None:
        self.metrics.inc("redis_errors")
        self._room.set()  # sessions keep reading into the buffer while Redis is away
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.error(
                "redis unreachable (%s): buffering frames in memory (up to %d)",
                exc,
                self.buffer_frames,
            )
        else:
            logger.warning(
                "redis still unreachable after %.1f s; %d frames buffered",
                time.monotonic() - self._down_since,
                len(self._buffer),
            )
