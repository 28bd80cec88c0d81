"""One planned connection kept alive: connect, subscribe, keepalive, receive, reconnect, roll over.

Every frame received is handed to the publisher unchanged, with its receive time and its number
within the connection (``common.envelope`` lists the stream entry's fields).
Disconnects are retried with capped, jittered backoff that resets after a
connection that delivered data. Every connection is watched for silence by the feed's
:class:`~producer.liveness.Liveness` rule (configured, or derived from the feed's own rate and
the venue's heartbeats): one silent past its threshold is replaced. A frame larger than
``max_frame_bytes`` ends its connection from its header (both receive paths: websockets'
``max_size`` and the fast path's splitter), logged and counted (``oversized_frames``); a stream
that ends inside a frame is logged and counted (``truncated_frames``); either way the reconnect
is a recorded gap. Frames are bytes end to end: a text frame that is not UTF-8 is kept (the
consumer dead-letters it) and the connection stays up.

A venue that closes connections on schedule is rolled over make-before-break: a new connection
is opened and subscribed, both run for ``overlap_s`` (the duplicates are removed by the
consumer's natural keys), then the old one is closed.

With :class:`~producer.markers.Markers`, every connection's life goes into the stream as
coverage markers: ``subscribed`` once its subscriptions are sent, then ``lost`` (with the
reason), ``rolled`` or ``closed`` when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidURI,
    PayloadTooBig,
)

from common.envelope import raw_key
from common.errors import backoff
from common.metrics import Metrics
from common.venues import ConnectionPlan, Venue

from .frames import FastConnection, RawConnection, TruncatedFrame
from .liveness import Liveness, LivenessRule, Watch
from .markers import Markers
from .publisher import Publisher
from .wire import XaddPacker

logger = logging.getLogger(__name__)

HEALTHY_AFTER_S = 10.0  # a connection that lived this long with data resets the backoff
MAX_FRAME_BYTES = 8 * 2**20  # the largest legitimate frame (Coinbase's snapshot of 100 trades
# for each of 100 products, ~2 MB) with room to spare; producer.max_frame_bytes
SETTLE_S = 5.0  # frames this soon after connecting may be the venue's acks (producer.liveness)
RECONNECTS_KEPT_S = 3600.0  # reconnect times kept for ``reconnects_within`` (the heartbeat's hour)
_ids = itertools.count(1)


@dataclass
class _Generation:
    conn_id: str
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = field(default_factory=time.monotonic)
    frames: int = 0
    received: int = 0  # bytes of the frames (metrics)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    subscribed: bool = False  # its ``subscribed`` marker was queued
    close_reason: str = ""  # why the supervisor closes it ("rolled" or "closed")
    lost_as: str = "closed"  # why it ended: tickvault_reconnects_total's bounded reason label


async def watch_liveness(watch: Watch, frames: Callable[[], int], tick_s: float) -> float:
    """Return the silence, in seconds, once the connection is dead by its rule
    (``producer.liveness``). ``frames()`` is sampled every ``tick_s`` at most, so a verdict
    comes within one tick of the threshold. The receive loop only counts frames: a timeout
    around each receive would cost it more than the rest of a frame's handling."""
    while True:
        now = time.monotonic()
        watch.observe(now, frames())
        remaining = watch.remaining(now)
        if remaining <= 0:
            return watch.silence(now)
        await asyncio.sleep(min(remaining, tick_s))


def loss_reason(exc: BaseException) -> tuple[str | None, str]:
    """``(counter, description)`` of why a connection was lost: ``oversized_frames`` for a frame
    over the limit, ``truncated_frames`` for a stream that ended inside a frame, else None."""
    if isinstance(exc, TruncatedFrame):
        return "truncated_frames", str(exc)
    if isinstance(exc, ConnectionClosed):
        cause = exc.__cause__
        if isinstance(cause, PayloadTooBig) or (exc.sent is not None and exc.sent.code == 1009):
            detail = cause or (exc.sent.reason if exc.sent is not None else "")
            return "oversized_frames", f"frame over the size limit: {detail}"
        if cause is not None:
            return None, f"{exc!r} ({cause})"
    return None, repr(exc)


def loss_class(exc: BaseException) -> str:
    """Why a connection was lost, as a bounded label: ``oversized``, ``truncated``, ``closed``
    (by the venue or the network), ``refused`` (the handshake), ``timeout`` or ``network``."""
    counter, _ = loss_reason(exc)
    if counter is not None:
        return counter.removesuffix("_frames")
    if isinstance(exc, ConnectionClosed):
        return "closed"
    if isinstance(exc, (InvalidHandshake, InvalidURI)):
        return "refused"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "network"


class FeedSession:
    def __init__(
        self,
        venue: Venue,
        plan: ConnectionPlan,
        publisher: Publisher,
        metrics: Metrics,
        *,
        lifetime_s: float | None = None,
        overlap_s: float = 10.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        start_delay_s: float = 0.0,
        fast_frames: bool = True,
        silence_s: float = 0.0,
        liveness: LivenessRule | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        markers: Markers | None = None,
    ) -> None:
        """``silence_s`` > 0 fixes the silence threshold; 0 derives it (``producer.liveness``,
        with the venue's heartbeat bound from ``plan.keepalive.silence_s``). ``liveness``
        replaces the whole rule (tests)."""
        self.venue = venue
        self.plan = plan
        self.publisher = publisher
        self.metrics = metrics
        self.key = raw_key(venue.exchange)
        self.lifetime_s = lifetime_s if lifetime_s else plan.max_lifetime_s
        self.overlap_s = overlap_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.start_delay_s = start_delay_s
        self.fast_frames = fast_frames  # plain data frames bypass websockets' parser
        self.max_frame_bytes = max_frame_bytes
        self.markers = markers
        self.label = plan.name or venue.exchange
        if liveness is None:
            liveness = LivenessRule(fixed_s=silence_s or None, heartbeat_s=plan.keepalive.silence_s)
        self.liveness = Liveness(liveness)  # what this feed has shown, across its connections
        # For the heartbeat (producer.heartbeat), updated per connection, never per frame:
        self.phase = "connecting"  # with no connection open: connecting, backoff or stopped
        self.open: list[_Generation] = []  # open connections, oldest first (two in a rollover)
        self.connected_since_ns: int | None = None  # since when one has been open without a break
        self.down_since = time.monotonic()  # since when none has been open (metrics, /healthz)
        self.frames_closed = 0  # frames of the connections already closed (metrics)
        self.bytes_closed = 0  # and their bytes
        self.reconnected_at: deque[float] = deque()  # monotonic times, the last hour

    @property
    def state(self) -> str:
        """``connected`` while a connection is open, else the phase (``connecting``,
        ``backoff``, ``stopped``)."""
        return "connected" if self.open else self.phase

    def reconnects_within(self, seconds: float, now: float) -> int:
        """Reconnects in the last ``seconds`` (at most ``RECONNECTS_KEPT_S``) before ``now``
        (monotonic)."""
        return sum(1 for t in self.reconnected_at if now - t <= seconds)

    async def run(self, stop: asyncio.Event) -> None:
        if self.start_delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.start_delay_s)
        delays = backoff(initial=self.backoff_initial_s, cap=self.backoff_max_s)
        async with asyncio.TaskGroup() as tg:
            current = self._spawn(tg)
            while not stop.is_set():
                gen, task = current
                timeout = None
                if self.lifetime_s:
                    timeout = max(
                        0.0, gen.started + self.lifetime_s - self.overlap_s - time.monotonic()
                    )
                stopper = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait(
                    {task, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                stopper.cancel()
                if stop.is_set():
                    break
                if task in done:
                    healthy = gen.frames > 0 and time.monotonic() - gen.started >= HEALTHY_AFTER_S
                    if healthy:
                        delays = backoff(initial=self.backoff_initial_s, cap=self.backoff_max_s)
                    delay = next(delays)
                    self.metrics.inc("reconnects")
                    self.metrics.inc(f"reconnects:{self.venue.exchange}:{gen.lost_as}")
                    self.phase = "backoff"
                    now = time.monotonic()
                    self.reconnected_at.append(now)
                    while now - self.reconnected_at[0] > RECONNECTS_KEPT_S:
                        self.reconnected_at.popleft()
                    logger.warning("%s: reconnecting in %.2f s", self.label, delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        break
                    current = self._spawn(tg)
                    continue
                # Lifetime nearly reached: make before break.
                new_gen, new_task = self._spawn(tg)
                logger.info("%s: rolling over %s -> %s", self.label, gen.conn_id, new_gen.conn_id)
                ready = asyncio.ensure_future(new_gen.ready.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait(
                    {ready, new_task, stopper}, timeout=30, return_when=asyncio.FIRST_COMPLETED
                )
                ready.cancel()
                stopper.cancel()
                if stop.is_set() and not new_gen.ready.is_set():
                    # a stop while the new connection still connects: it goes, unused; the old
                    # one is closed below (its markers in the stream before the publisher stops)
                    new_gen.close_reason = "closed"
                    new_gen.closing.set()
                    new_task.cancel()  # (its handshake could take open_timeout)
                    break
                if new_gen.ready.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.overlap_s)
                    gen.close_reason = "rolled"
                    gen.closing.set()
                    self.metrics.inc("rollovers")
                    current = (new_gen, new_task)
                else:
                    logger.warning(
                        "%s: rollover connection failed; keeping the old one", self.label
                    )
                    new_gen.close_reason = "rolled"
                    new_gen.closing.set()
                    gen.started = time.monotonic() - (self.lifetime_s or 0) + self.overlap_s + 5
            current[0].close_reason = "closed"
            current[0].closing.set()
        self.phase = "stopped"

    def _spawn(self, tg: asyncio.TaskGroup) -> tuple[_Generation, asyncio.Task[None]]:
        conn_id = f"{self.label}#{next(_ids)}@{time.time_ns() // 1_000_000}"
        gen = _Generation(conn_id)
        self.phase = "connecting"
        task = tg.create_task(self._connection(gen), name=f"ws {conn_id}")
        return gen, task

    async def _connection(self, gen: _Generation) -> None:
        """One connection's life. Never raises: the supervisor decides what comes next."""
        plan, ka = self.plan, self.plan.keepalive
        loss = "closed by the venue"
        try:
            async with connect(
                plan.url,
                ping_interval=ka.protocol_ping_s,
                ping_timeout=ka.protocol_ping_s,
                open_timeout=15,
                close_timeout=2,
                max_size=self.max_frame_bytes,  # refused from the header: PayloadTooBig, 1009
                max_queue=4096,
                create_connection=FastConnection if self.fast_frames else RawConnection,
            ) as ws:
                assert isinstance(ws, RawConnection)
                self.metrics.inc("connections")
                if not self.open:
                    self.connected_since_ns = time.time_ns()
                self.open.append(gen)
                logger.info("%s: connected to %s as %s", self.label, plan.url, gen.conn_id)
                subscribing_s = max(0, len(plan.subscribe) - 1) * plan.subscribe_interval_s
                watch = self.liveness.watch(
                    time.monotonic(),
                    setup_frames=len(plan.subscribe) + 1,  # an ack each, and a greeting
                    settle_s=SETTLE_S + subscribing_s,
                    subscribing_s=subscribing_s,
                )
                async with asyncio.TaskGroup() as tg:
                    receiver = tg.create_task(self._receive(ws, gen), name=f"recv {gen.conn_id}")
                    tg.create_task(self._subscribe(ws, watch, gen), name=f"subscribe {gen.conn_id}")
                    pinger = None
                    if ka.app_ping:
                        pinger = tg.create_task(self._ping(ws, ka.app_ping, ka.app_ping_s))
                    closer = tg.create_task(gen.closing.wait())
                    watchdog = tg.create_task(
                        watch_liveness(watch, lambda: gen.frames, self.liveness.rule.tick_s),
                        name=f"liveness {gen.conn_id}",
                    )
                    await asyncio.wait(
                        {receiver, closer, watchdog}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if watchdog.done() and not watchdog.cancelled():
                        now = time.monotonic()
                        threshold, why = watch.threshold(now), self.liveness.explain(now)
                        watch.give_up()
                        self.metrics.inc("silence_timeouts")
                        gen.lost_as = "silent"
                        loss = f"silent {watchdog.result():.1f} s (threshold {threshold:.1f} s)"
                        logger.warning(
                            "%s: no frame for %.1f s (threshold %.1f s: %s), reconnecting",
                            self.label, watchdog.result(), threshold, why,
                        )  # fmt: skip
                    for t in (receiver, closer, pinger, watchdog):
                        if t is not None:
                            t.cancel()
                    tg.create_task(ws.close())
        except* (
            OSError, ConnectionClosed, InvalidHandshake, InvalidURI, TimeoutError, TruncatedFrame
        ) as group:  # fmt: skip
            for exc in group.exceptions:
                counter, reason = loss_reason(exc)
                loss, gen.lost_as = reason, loss_class(exc)
                if counter is not None:
                    self.metrics.inc(counter)
                logger.warning("%s: connection %s lost: %s", self.label, gen.conn_id, reason)
        except* Exception as others:  # never let one feed take the producer down
            for err in others.exceptions:
                loss, gen.lost_as = f"failed: {err!r}", "failed"
                logger.error("%s: connection %s failed", self.label, gen.conn_id, exc_info=err)
        finally:
            gen.closing.set()
            if gen in self.open:
                self.open.remove(gen)
                self.frames_closed += gen.frames
                self.bytes_closed += gen.received
                if not self.open:
                    self.connected_since_ns = None
                    self.down_since = time.monotonic()
            if gen.subscribed and self.markers is not None:
                event = gen.close_reason or "lost"
                self._mark(event, gen, "" if gen.close_reason else loss[:500])

    def _mark(self, event: str, gen: _Generation, reason: str = "") -> None:
        assert self.markers is not None
        self.markers.connection(
            event,
            exchange=self.venue.exchange,
            context=self.plan.context,
            conn=gen.conn_id,
            symbols=self.plan.symbols,
            channels=[str(c) for c in self.plan.channels],
            reason=reason,
        )

    async def _subscribe(self, ws: ClientConnection, watch: Watch, gen: _Generation) -> None:
        for i, message in enumerate(self.plan.subscribe):
            if i and self.plan.subscribe_interval_s:
                await asyncio.sleep(self.plan.subscribe_interval_s)
            await ws.send(message)
        watch.subscribed(time.monotonic())
        if self.markers is not None:
            gen.subscribed = True
            self._mark("subscribed", gen)
        logger.info("%s: subscribed (%d messages)", self.label, len(self.plan.subscribe))

    async def _ping(self, ws: ClientConnection, message: str, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            await ws.send(message)

    async def _receive(self, ws: RawConnection, gen: _Generation) -> None:
        """Hand every frame to the publisher, in order, numbered within the connection.

        On a :class:`~producer.frames.FastConnection` most frames arrive through ``deliver``
        straight from the socket; ``recv_raw()`` returns the rest (see ``producer.frames``), as
        bytes, text frames too (never decoded: no UTF-8 check can close the connection)."""
        publisher, reply = self.publisher, self.venue.reply
        put = publisher.put
        # no MAXLEN on XADD: the publisher's retention trims, never past unacked entries
        packer = XaddPacker(self.key, self.venue.exchange, self.plan.context, gen.conn_id)
        answers: asyncio.Queue[str] = asyncio.Queue()
        tasks: set[asyncio.Future[None]] = set()
        paused = False
        fast = ws if isinstance(ws, FastConnection) else None  # frames come through deliver

        async def resume_when_room() -> None:
            nonlocal paused
            await publisher.room()
            paused = False
            ws.transport.resume_reading()

        def deliver(message: bytes, binary: bool) -> None:
            nonlocal paused
            recv_ns = time.time_ns()
            seq = gen.frames + 1
            gen.frames = seq
            gen.received += len(message)
            put(packer, message, binary, seq, recv_ns)
            if seq == 1:
                gen.ready.set()
            answer = reply(message)
            if answer is not None:
                answers.put_nowait(answer)
            if fast is not None and not paused and publisher.full:
                paused = True  # backpressure: stop reading until Redis catches up
                ws.transport.pause_reading()
                resume = asyncio.ensure_future(resume_when_room())
                tasks.add(resume)
                resume.add_done_callback(tasks.discard)

        if fast is not None:
            fast.on_message = deliver
        try:
            tasks.add(asyncio.ensure_future(self._answer(ws, answers)))
            while True:
                message, binary = await ws.recv_raw()
                deliver(message, binary)
                if publisher.full:
                    await publisher.room()  # backpressure: stop reading until Redis catches up
        finally:
            if fast is not None:
                fast.on_message = None
            for task in tasks:
                task.cancel()

    @staticmethod
    async def _answer(ws: ClientConnection, answers: asyncio.Queue[str]) -> None:
        """Send the venue's answers (application pings) in the order they were asked for."""
        while True:
            await ws.send(await answers.get())
