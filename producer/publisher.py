"""Frames -> Redis Stream, pipelined, with a disk spill for what Redis cannot take now.

Sessions put frames (with their connection's :class:`~producer.wire.XaddPacker`) in an
in-memory buffer; one task sends everything buffered in one pipelined round trip (at most
``pipeline_max`` frames), then looks again. A lone frame goes out at once; frames that arrive
during a round trip ride the next one, and back-to-back frames of one connection share a stream
entry (a run, see ``common.envelope``). So XADDs batch themselves under load, and Redis' cost per
frame falls, without adding latency when the feed is slow.

When Redis is unreachable, refuses writes (OOM, READONLY: ``common.errors``) or stalls (the
buffer past ``high_water`` frames and no reply for ``STALL_S``), frames go to the spill
(``producer.spill``) instead, in order. Redis that answers, if more slowly than the feeds send,
is not away: the sessions pause at ``high_water`` (TCP backpressure), as a spill would only
spend the CPU that Redis needs. Invariant: every frame in memory is newer than every frame in
the spill, so frames are sent from memory only while the spill is empty; while it is not, it
drains first (oldest first), new frames queue behind it, and the sessions keep reading. Redis is
probed about once a second while away (a fresh connection, within the wire's timeout; frames
keep going to the spill while a probe waits), so the spill drains within seconds of its return.
A stop with Redis away, or a refusal no retry can fix, writes what is in memory to the spill
(nothing is lost; the next start drains it). Only a full spill stops the sessions reading
(policy ``block``) or loses its oldest frames (``drop-oldest``), and without a spill the memory
buffer's ``buffer_frames`` is the bound: frames past it are dropped, counted and logged; the
exit status then says frames were lost.

Trimming is ``producer.retention``'s: it never removes what a consumer group has not acked.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from common.envelope import exchange_of_key
from common.errors import Action, FatalError, TransientError, backoff, classify
from common.metrics import Metrics

from .retention import Retention
from .spill import Record, Spill
from .wire import Pending, RedisWire, XaddPacker, pack_runs

logger = logging.getLogger(__name__)

PROBE_S = 1.0  # while Redis is away, try it about this often
STALL_S = 1.0  # behind by high_water frames and no reply this long: Redis counts as away
BUFFER_BYTES = 256 << 20  # frames' bytes in memory at most (``producer.buffer_bytes``)
PIPELINE_BYTES = 8 << 20  # frames' bytes in one round trip at most (one frame always goes)
CONNECT_S = 2.0  # the first connection's handshake (AUTH, SELECT, PING) at most this long


class Wake:
    """An ``asyncio.Event`` for one waiter whose wait ends after a timeout too.

    The publisher waits on it for every batch (the linger) and between them: one timer handle
    and one future a wait, where ``asyncio.timeout`` costs a context object, the task's
    cancellation when the timer fires, and a ``TimeoutError`` caught (~10 % of the producer's
    Python at 1,000 frames/s)."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[bool] | None = None

    def set(self) -> None:
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self, seconds: float) -> bool:
        """Until set (True) or for ``seconds`` (False)."""
        if self._set:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(seconds, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


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
        retention_s: float | None = None,
        trim_every_s: float = 1.0,
        spill: Spill | None = None,
        linger_ms: float = 0.0,
        linger_frames: int = 100,
        buffer_bytes: int = BUFFER_BYTES,
        pipeline_bytes: int = PIPELINE_BYTES,
    ) -> None:
        self.wire = wire
        # A frame may wait this long for company before it is sent: frames that share a round
        # trip share an XADD entry (a run), a consumer read and a commit (``producer.linger_ms``)
        self.linger_ns = int(linger_ms * 1_000_000)
        # ... unless this many are waiting already (they go at once): at high rates the batch
        # is big enough long before the linger ends, and latency is worth more then
        self.linger_frames = max(1, min(pipeline_max, linger_frames))
        self.buffer_frames = buffer_frames
        self.pipeline_max = pipeline_max
        self.metrics = metrics
        self.backoff_max_s = backoff_max_s
        self.high_water = min(high_water, buffer_frames)
        # The same bounds in bytes: a feed of big frames (each under max_frame_bytes) must not
        # fill memory before the frame counts say so, nor make one round trip of gigabytes.
        self.buffer_bytes = buffer_bytes
        self.high_water_bytes = max(1, buffer_bytes // 10)
        self.pipeline_bytes = pipeline_bytes
        self._bytes = 0  # bytes of the frames in the buffer
        self.spill = spill
        self._buffer: deque[Pending] = deque()
        self._wake = Wake()
        self._room = asyncio.Event()
        self._room.set()
        self.retention = Retention(
            wire, metrics, max_frames=max_frames, max_age_s=retention_s, every_s=trim_every_s
        )
        self.drain_budget_s = 10.0
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._spill_full = False  # the spill refused frames (policy block): sessions wait
        self._unsent_counted = 0  # the oldest frames in memory already counted unsent
        metrics.set("redis_away", 0)  # (both from the start: an alert's series exists)
        metrics.set("spill_blocked", 0)
        self._last_drop_log = self._last_down_log = 0.0
        self._dropped_since_log = 0
        self._packers: dict[tuple[str, str, str, str, bool], XaddPacker] = {}
        self._exchanges: dict[str, str] = {}  # stream key -> exchange (metrics labels)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    @property
    def spilled(self) -> int:
        return self.spill.records if self.spill is not None else 0

    @property
    def full(self) -> bool:
        """True when a session should stop reading: Redis up (answering, if more slowly than
        the feeds send) and ``high_water`` frames queued, or the spill full under ``block``."""
        if self._spill_full:
            return True
        return self._behind() and self._down_since is None

    def _behind(self) -> bool:
        """``high_water`` frames, or their bytes, wait in memory."""
        return len(self._buffer) >= self.high_water or self._bytes >= self.high_water_bytes

    async def room(self) -> None:
        """Wait until a session may read again."""
        while self.full:
            self._room.clear()
            await self._room.wait()

    def mark(self, packer: XaddPacker, payload: bytes) -> None:
        """Queue a coverage marker (``producer.markers``) in order with the frames. Never
        refused: a marker says what was lost, so it may exceed the memory bound."""
        self._buffer.append((packer, payload, False, 0, time.time_ns()))
        self._bytes += len(payload)
        self._wake.set()

    def put(self, packer: XaddPacker, frame: bytes, binary: bool, seq: int, recv_ns: int) -> bool:
        """Queue one frame. Returns False (and counts a drop) when memory is full."""
        size = len(frame)
        if len(self._buffer) >= self.buffer_frames or self._bytes + size > self.buffer_bytes:
            self._drop(1, "memory buffer full")
            return False
        buffer = self._buffer
        buffer.append((packer, frame, binary, seq, recv_ns))
        self._bytes += size
        # Wake the sender for the first frame (it lingers from there), when enough wait, and
        # when the oldest is due within a millisecond: the frame that arrives then takes the
        # batch along in this loop turn, sparing a timer's wake-up (see _linger_left). Not for
        # every frame, which would cost a loop turn each.
        n = len(buffer)
        if (
            n == 1
            or n >= self.linger_frames
            or recv_ns - buffer[0][4] >= self.linger_ns - 1_000_000
        ):
            self._wake.set()
        return True

    def _drop(self, n: int, why: str) -> None:
        self.metrics.inc("dropped", n)
        self._dropped_since_log += n
        now = time.monotonic()
        if now - self._last_drop_log >= 5.0:
            logger.error(
                "%s: dropped %d frames since the last report (%d buffered, %d spilled)",
                why, self._dropped_since_log, len(self._buffer), self.spilled,
            )  # fmt: skip
            self._last_drop_log = now
            self._dropped_since_log = 0

    @property
    def lost(self) -> int:
        """Frames that never reached Redis or the spill: dropped, or unsent at stop."""
        c = self.metrics.counters
        return c["dropped"] + c["unsent_at_stop"] + c["spill_dropped"]

    # -- the loop -----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, *, drain_budget_s: float | None = None) -> None:
        """Publish until ``stop`` is set, then flush what is buffered within ``drain_budget_s``
        (default: :attr:`drain_budget_s`) from the moment the stop is seen; what is left then
        goes to the spill.

        Raises:
            FatalError: Redis refused in a way no retry can fix; what is in memory went to the
                spill first (what cannot, or all of it without a spill, is counted unsent).
        """
        deadline: float | None = None
        delays = None
        stop_wait = asyncio.ensure_future(stop.wait())
        stop_wait.add_done_callback(lambda _: self._wake.set())
        try:
            if self.spill is not None:
                self._count_spill_losses()  # damage the spill found at open
            await self._connect_at_start()
            while True:
                now = time.monotonic()
                if stop.is_set() and deadline is None:
                    budget = self.drain_budget_s if drain_budget_s is None else drain_budget_s
                    deadline = now + budget
                if stop.is_set() and (
                    (not self._buffer and not self.spill)  # all sent
                    or (self.spill is not None and (self._down_since is not None or self.spill))
                    or (deadline is not None and now >= deadline)
                ):  # with a spill, a stop never waits for Redis: the next start sends the rest
                    self.keep_rest()
                    return
                if self._should_spill():
                    self._to_spill()
                if self._down_since is not None and now < self._next_probe:
                    if stop_wait.done():  # (no spill) a wake-up would return at once: sleep
                        assert deadline is not None  # (set above once the stop is)
                        await asyncio.sleep(min(self._next_probe, deadline) - now)
                    else:
                        await self._wait(stop_wait, self._next_probe - now)
                    continue
                idle = not self._buffer and not self.spill
                if idle:
                    await self._wait(stop_wait, self.retention.next_tick_in(now))
                elif not self.spill and not stop.is_set():
                    linger = self._linger_left()
                    if linger > 0:
                        await self._wait(stop_wait, linger)
                        continue
                # Everything that talks to Redis is in here, the idle retention tick too: a
                # lost connection or a refusal worth retrying is never the end of the loop.
                try:
                    if idle:
                        await self._tick_retention()
                        continue
                    if self._down_since is not None and not await self._probe(stop_wait):
                        continue  # the stop came first
                    if self.spill:
                        await self._drain_some()
                    else:
                        await self._send_some()
                    delays = None
                    await self._tick_retention()
                except Exception as exc:
                    if classify(exc) is not Action.RETRY:
                        raise
                    if delays is None:
                        delays = backoff(initial=0.2, cap=min(PROBE_S, self.backoff_max_s))
                    self._note_down(exc)
                    self._next_probe = time.monotonic() + next(delays)
        except Exception as exc:
            # A refusal no retry can fix (or a bug) ends the loop: what is in memory goes to
            # the spill first, as at a stop, so the next start sends it; only what cannot is
            # lost (counted).
            try:
                self.keep_rest(str(exc) if isinstance(exc, FatalError) else f"{exc!r}")
            except Exception:
                logger.exception("the frames in memory could not be kept")
            raise
        finally:
            stop_wait.cancel()
            if self.spill is not None:
                self._count_spill_losses()
                self.spill.sync()
            await self.wire.close()

    async def _connect_at_start(self) -> None:
        """Connect before the first frame: a wrong password or certificate stops the producer
        at start (FatalError), and a Redis that is away is known as such at once."""
        try:
            await asyncio.wait_for(self.wire.connect(), CONNECT_S)
        except Exception as exc:
            if classify(exc) is not Action.RETRY:
                raise
            await self.wire.close()
            self._note_down(exc)
            self._next_probe = time.monotonic() + PROBE_S

    def _linger_left(self) -> float:
        """Seconds the oldest buffered frame may still wait for company (0: send now).

        Whole milliseconds, rounded down: the event loop's timers wake in whole milliseconds
        (epoll), rounded up, so a wait of 0.2 ms would last 1 ms. A frame thus waits between
        ``linger_ms - 1`` and ``linger_ms``, never more (measured: p99 2.47 ms for 2 ms before)."""
        if not self.linger_ns or len(self._buffer) >= self.linger_frames:
            return 0.0
        waited = time.time_ns() - self._buffer[0][4]
        # (a clock stepped back cannot make a frame wait more than the linger)
        left_ms = min(self.linger_ns, self.linger_ns - waited) // 1_000_000
        return max(0, left_ms) / 1e3

    async def _wait(self, stop_wait: asyncio.Future[Any], seconds: float) -> None:
        """Until a frame arrives (or, while lingering, enough frames), the stop, or
        ``seconds``. The stop sets the wake-up too (``run``)."""
        if self._buffer and self._should_spill() and not self._spill_full:
            return
        if stop_wait.done():
            return
        self._wake.clear()
        await self._wake.wait(max(0.0, seconds))

    async def _probe(self, stop_wait: asyncio.Future[Any]) -> bool:
        """While Redis is away: connect afresh (AUTH, SELECT, PING) before sending, within the
        wire's timeout (a slow link's handshake, TLS and all, may take seconds). A server that
        takes the connection and does not answer (stopped, a hung host behind a proxy) would
        hold the loop that long, so the probe runs beside it: frames arriving meanwhile go to
        the spill, not into memory, and a stop with a spill does not wait for it.

        Returns:
            True once Redis answered; False when a stop came first (with a spill, a stop waits
            for no Redis).

        Raises:
            TransientError: no answer within the wire's timeout, or the connection failed.
            FatalError: a refusal no retry can fix (NOAUTH, WRONGPASS, ...).
        """
        probe = asyncio.ensure_future(self.wire.connect())
        probe.add_done_callback(lambda _: self._wake.set())
        try:
            while not probe.done():
                if self._should_spill():
                    self._to_spill()
                if stop_wait.done() and self.spill is not None:
                    return False
                self._wake.clear()
                await self._wake.wait(CONNECT_S)
        finally:
            if not probe.done():
                probe.cancel()  # (the wire closes the half-open connection)
                await asyncio.wait([probe])
        probe.result()  # (the wire's timeout: TransientError, the connection closed)
        return True

    def _should_spill(self) -> bool:
        """Memory goes to the spill while Redis is away (a stall counts: see ``_send_some``),
        or while the spill is not empty (order)."""
        if self.spill is None or not self._buffer:
            return False
        return self._down_since is not None or bool(self.spill)

    def _to_spill(self) -> None:
        assert self.spill is not None
        n = len(self._buffer)
        taken = self.spill.append(_records(itertools.islice(self._buffer, n)))
        self._forget(taken)
        self.metrics.inc("spilled", taken)
        self.metrics.set("spill_bytes", self.spill.bytes)
        self._count_spill_losses()
        was_full = self._spill_full
        self._set_spill_full(taken < n)
        if self._spill_full and not was_full:
            error = self.spill.write_error  # the disk refused: as full, whatever the policy
            logger.error(
                "spill %s: the feeds stop reading until it takes frames again (%d wait in memory)",
                f"cannot be written ({error})" if error is not None
                else f"full ({self.spill.max_bytes} bytes, policy block)",
                len(self._buffer),
            )  # fmt: skip
            if error is not None:
                self.metrics.inc("spill_write_errors")

    def _set_spill_full(self, full: bool) -> None:
        if self._spill_full and not full:
            self._room.set()  # the sessions read again
        self._spill_full = full
        self.metrics.set("spill_blocked", int(full))

    def _count_spill_losses(self) -> None:
        """Frames the spill lost (drop-oldest, an unreadable segment) are the metrics' too."""
        assert self.spill is not None
        if self.spill.dropped:
            self.metrics.inc("spill_dropped", self.spill.dropped)
            self.spill.dropped = 0

    def keep_rest(self, why: str = "redis unreachable") -> None:
        """At the end of :meth:`run` (a stop, a refusal): what is still in memory goes to the
        spill; only what cannot is lost, counted in ``unsent_at_stop``. Called again (by
        ``producer.__main__``, for frames the feeds delivered while the publisher ended), it
        counts only frames it had not counted before."""
        before = len(self._buffer)
        if self._buffer and self.spill is not None:
            self._to_spill()
            self.spill.sync()
        if self.spilled:
            logger.warning(
                "stopping with %d frames in the spill %s: the next start sends them",
                self.spilled, self.spill.directory if self.spill is not None else "",
            )  # fmt: skip
        counted = max(0, self._unsent_counted - (before - len(self._buffer)))
        if len(self._buffer) > counted:
            error = self.spill.write_error if self.spill is not None else None
            logger.error(
                "stopping with %d frames unsent: %s%s", len(self._buffer), why,
                f" and the spill cannot be written ({error})" if error is not None else "",
            )  # fmt: skip
            self.metrics.inc("unsent_at_stop", len(self._buffer) - counted)
        self._unsent_counted = len(self._buffer)  # (the oldest ones: memory pops from the left)

    def _forget(self, n: int) -> None:
        """The oldest ``n`` frames are in Redis or the spill: out of memory. The one place
        memory shrinks, so the one place the sessions paused at ``high_water`` are woken."""
        popleft, size = self._buffer.popleft, 0
        for _ in range(n):
            size += len(popleft()[1])
        self._bytes -= size
        if len(self._buffer) < self.high_water // 2 and self._bytes < self.high_water_bytes // 2:
            self._room.set()

    def _batch(self) -> int:
        """How many of the oldest frames go in the next round trip: ``pipeline_max`` at most,
        and no more bytes than ``pipeline_bytes`` but for a first frame larger than that."""
        n = min(len(self._buffer), self.pipeline_max)
        if self._bytes <= self.pipeline_bytes:
            return n  # (the usual case: no need to count)
        size = taken = 0
        for item in itertools.islice(self._buffer, n):
            size += len(item[1])
            if taken and size > self.pipeline_bytes:
                break
            taken += 1
        return taken

    async def _send_some(self) -> None:
        n = self._batch()
        payload, sizes = pack_runs(itertools.islice(self._buffer, n))
        if self.spill is not None and self._behind():
            # Behind, with the feeds paused: a Redis that answers (if more slowly than the
            # feeds send) keeps them paused; one that does not answer within STALL_S (a stall:
            # a fork, a disk, a fail-over) counts as away, and the frames go to the spill
            # rather than wait in the venues' buffers. (Under a flood, replies keep coming.)
            try:
                replies = await asyncio.wait_for(self.wire.execute(payload, len(sizes)), STALL_S)
            except TimeoutError:
                await self.wire.close()  # a reply may be half read: start afresh
                raise TransientError(f"redis stalled: no reply within {STALL_S:g} s") from None
        else:
            replies = await self.wire.execute(payload, len(sizes))
        self.metrics.inc("bytes_written", len(payload))
        # Only now are they in Redis: drop them from the buffer. (A failure midway may have
        # stored some of them; they are sent again, and the consumer's natural keys dedupe.)
        self._forget(n)
        self._sent(n, sizes, replies)

    async def _drain_some(self) -> None:
        """Send the spill's oldest frames; forget them once Redis has them."""
        assert self.spill is not None
        records = self.spill.take(self.pipeline_max, self.pipeline_bytes)
        self._count_spill_losses()
        if not records:
            return
        pending = [(self._packer(r), r.frame, r.binary, r.seq, r.recv_ns) for r in records]
        payload, sizes = pack_runs(pending)
        try:
            replies = await self.wire.execute(payload, len(sizes))
        except BaseException:
            self.spill.untake()
            raise
        self.spill.consume(len(records))
        self.metrics.inc("bytes_written", len(payload))
        self.metrics.inc("spill_drained", len(records))
        self.metrics.set("spill_bytes", self.spill.bytes)
        self._sent(len(records), sizes, replies)
        if not self.spill:
            logger.info("spill drained; sending from memory again")
            self._set_spill_full(False)

    def _packer(self, r: Record) -> XaddPacker:
        ident = (r.key, r.exchange, r.context, r.conn, r.marker)
        packer = self._packers.get(ident)
        if packer is None:
            if len(self._packers) > 10_000:
                self._packers.clear()
            packer = XaddPacker(r.key, r.exchange, r.context, r.conn, marker=r.marker)
            self._packers[ident] = packer
        return packer

    def _sent(self, frames: int, sizes: list[tuple[str, int]], replies: list[object]) -> None:
        per_key: dict[str, int] = {}
        for key, n in sizes:
            per_key[key] = per_key.get(key, 0) + n
        counts = [("published", frames), ("entries", len(sizes)), ("round_trips", 1)]
        for key, n in per_key.items():
            exchange = self._exchanges.get(key)
            if exchange is None:
                exchange = self._exchanges[key] = exchange_of_key(key)
            counts.append((f"published:{exchange}", n))
        self.metrics.inc_many(counts)
        if self._down_since is not None:
            logger.warning(
                "redis is back after %.1f s; sending %d buffered and %d spilled frames",
                time.monotonic() - self._down_since, len(self._buffer), self.spilled,
            )  # fmt: skip
            self._down_since = None
            self.metrics.set("redis_away", 0)
        if self.retention.enabled:
            for (key, n), entry_id in zip(sizes, replies, strict=True):
                if isinstance(entry_id, bytes):
                    self.retention.add(key, entry_id, n)

    async def _tick_retention(self) -> None:
        if self._down_since is None:
            await self.retention.tick()

    def _note_down(self, exc: BaseException) -> None:
        self.metrics.inc("redis_errors")
        self._room.set()  # sessions keep reading: into the spill, or into memory
        where = f"the spill {self.spill.directory}" if self.spill is not None else "memory"
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.metrics.set("redis_away", 1)
            logger.error("redis refuses or is unreachable (%s): buffering frames in %s", exc, where)
        elif time.monotonic() - self._last_down_log >= 10.0:
            self._last_down_log = time.monotonic()
            logger.warning(
                "redis still away after %.1f s; %d frames in memory, %d spilled",
                time.monotonic() - self._down_since, len(self._buffer), self.spilled,
            )  # fmt: skip


def _records(pending: Iterable[Pending]) -> Iterable[Record]:
    for packer, frame, binary, seq, recv_ns in pending:
        yield Record(
            packer.key,
            packer.exchange,
            packer.context,
            packer.conn_id,
            seq,
            recv_ns,
            binary,
            frame,
            packer.marker,
        )
