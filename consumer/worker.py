"""The consumer-group worker's main loop: read, process, batch, hand over to the writers.

Invariants (the modules named keep them):
- an entry is acked only after the transaction holding its rows has committed, and for a bad
  frame after its dead letter was added (``consumer.commit``);
- no frame stops the worker: processing runs under one guard (``consumer.process``), a frame
  PostgreSQL refuses is found by halving its batch (``consumer.isolation``), and an entry
  delivered more than ``max_deliveries`` times is dead-lettered unprocessed, so nothing can
  crash-loop or stall the group;
- errors are classified once (``common.errors.classify``): transient ones are retried with
  capped backoff, data errors cost their frames, fatal ones stop the worker (nothing more is
  acked) and surface as its exit status;
- on stop (SIGTERM/SIGINT) it stops reading, then commits and acks what it can within one
  deadline, ``stop_timeout_s``, for everything together (``consumer.retry``); what is not
  committed by then stays pending, its delivery count given back (``consumer.claims``).

Reading and processing run on the main thread; committing on ``writers`` writer threads
(``consumer.writers``), each with its own PostgreSQL connection, so the next batch is read and
parsed while PostgreSQL commits the previous ones. A small batch with every writer idle is
committed on the main thread instead. Either way its XACK goes with the next XREADGROUP, in one
round trip (``consumer.reads``; while a writer commits, reads block ``ACK_WAIT_MS`` at most),
unless the main thread is in a read that may block longer: then the writer sends it.

At start it re-reads its own pending entries (id ``0``), then new ones (``>``). Every
``claim_every_s`` it claims entries idle for ``claim_idle_ms`` on other consumers
(``consumer.claims``), and takes back its own entries idle that long that it does not hold in
memory (``_held_ids``): a read or a claim that ran on the server but whose reply was lost with
the connection delivered them to no one, and they would otherwise stay pending, pinning the
stream's retention, until the process restarts. A stream's claims wait until its own pending
entries are all re-read (a claimed entry would be read again with them: one delivery more).
On NOGROUP anywhere (a read, a claim, a lease renewal: the stream and its group were deleted,
or Redis restarted without its data) the groups are created again before the retry.

An entry delivered three times or more is handled alone: everything before it is committed and
acked first, then it is committed and acked in a batch of its own, so that a frame that kills
its process takes no other frame's delivery budget with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import redis
from redis.cluster import RedisCluster

from common.config import Settings
from common.errors import Action, classify, fatal_error, redis_code
from common.metrics import Metrics, Progress
from common.redis_url import RedisClient

from .batching import Batch, Batcher
from .claims import Claims
from .cluster_reads import ClusterReads, raw_reply
from .commit import Committer
from .deadletter import DeadLetters, over_budget_reason
from .flags import flag_names, flagger_from
from .group_metrics import GroupMetrics
from .process import Outcome, Processor, bounded
from .reads import GroupReads, ReadSize, fields_bytes
from .retry import GaveUp, Retrier, StopFlag
from .store import Store
from .writers import WriterPool

logger = logging.getLogger(__name__)

STATUS_EVERY_S = 10.0
PROGRESS_WITHIN_S = 120.0  # /healthz fails past this without a cycle or an empty read
SUSPECT_DELIVERIES = 3  # an entry delivered this often is handled alone
# A batch this small, with every writer idle, is committed on the main thread: at low rates the
# hand-off to a writer thread costs more than the commit. So is one of up to INLINE_DRAINED_MAX
# frames when the read that ended it drained the stream (nothing waits to be read meanwhile).
# Bigger ones, and any batch while a backlog is read, go to the writers, so reading and parsing
# overlap the commit under load.
INLINE_MAX_FRAMES = 32
INLINE_DRAINED_MAX = 128
# While a writer commits, a read blocks this long at most, so that the batch's ack can ride the
# next read (a read that may block longer lets the writer send its XACK itself).
ACK_WAIT_MS = 2
# A read that carries acks blocks this long at most: their replies are read with the read's
# (``consumer.reads``), so on a quiet stream the last batch is counted acked within this.
ACKS_BLOCK_MS = 100
# ... and one made while a batch's commit is in flight (``consumer.defer_commits``), so that on a
# quiet stream the commit is confirmed, and acked with the read after, this soon.
INFLIGHT_BLOCK_MS = 20


@dataclass(kw_only=True)
class WorkerOptions:
    group: str
    name: str
    streams: Sequence[str]
    batch_entries: int
    batch_ms: int
    block_ms: int
    claim_idle_ms: int
    claim_every_s: float
    backoff_max_s: float
    flush_when_drained: bool = True
    claim: bool = True
    read_pending_first: bool = True
    # replay: stop once every stream is drained; entries past these ids are left alone
    until: dict[str, str] | None = None
    stop_when_drained: bool = False
    stop_timeout_s: float = 20.0
    writers: int = 2
    max_deliveries: int = 5
    defer_commits: bool = True


def _ids_le(a: str, b: str) -> bool:
    am, _, aseq = a.partition("-")
    bm, _, bseq = b.partition("-")
    return (int(am), int(aseq or 0)) <= (int(bm), int(bseq or 0))


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class Worker:
    options: WorkerOptions
    client: RedisClient
    store: Store
    processor: Processor
    metrics: Metrics = field(default_factory=lambda: Metrics("consumer"))
    sleep: Callable[[float], None] = time.sleep
    writers_finished: bool = True  # False when the stop deadline passed with a writer busy
    _batcher: Batcher = field(init=False)
    _retrier: Retrier = field(init=False)
    _claims: Claims = field(init=False)
    _deadletters: DeadLetters = field(init=False)
    _pool: WriterPool | None = None
    _done: set[str] = field(default_factory=set)
    _dropped: list[Batch] = field(default_factory=list)  # not handed over before the deadline
    _halted: bool = False
    _slot_reads: ClusterReads | None = None  # on a Redis Cluster: one XREADGROUP per slot
    _reads: GroupReads | None = None  # elsewhere: reads that carry the acks (consumer.reads)
    _committer: Committer | None = None
    # committed, acked with the next read (``consumer.reads``)
    _unacked: list[Batch] = field(default_factory=list)
    # Committed by a writer, for the next read to ack: handed back unless the main thread is
    # blocked in a read (or stopping); then the writer acks them itself. Under _acks_lock.
    _committed: list[Batch] = field(default_factory=list)
    _writers_ack: bool = True
    _acks_lock: threading.Lock = field(default_factory=threading.Lock)
    _ack_error: BaseException | None = None  # what the last read's XACKs answered
    # A batch whose statement was sent on the main thread, its outcome read after the next
    # read (``consumer.defer_commits``); and how many were committed so.
    _inflight: Batch | None = None
    deferred_commits: int = 0

    def __post_init__(self) -> None:
        # Raw XREADGROUP replies: entries stay [id, [name, value, ...]] lists instead of being
        # turned into dicts by redis-py, which costs more than parsing the frame.
        self.client.set_response_callback("XREADGROUP", raw_reply)
        o = self.options
        if isinstance(self.client, RedisCluster):
            self._slot_reads = ClusterReads(self.client, o.group, o.name)
        elif isinstance(self.client, redis.Redis):
            self._reads = GroupReads(self.client, o.group, o.name)
        self._batcher = Batcher(o.batch_entries, o.batch_ms / 1000, o.flush_when_drained)
        self._retrier = Retrier(
            metrics=self.metrics,
            backoff_max_s=o.backoff_max_s,
            stop_timeout_s=o.stop_timeout_s,
            sleep=lambda s: self.sleep(s),
        )
        self._claims = Claims(self.client, o.group, o.name, on_nogroup=self._regroup)
        self._deadletters = DeadLetters(self.client)
        # /healthz: a read-commit-ack cycle, or a read that found nothing, this recently
        self.progress = Progress("last read-commit-ack cycle or empty read", PROGRESS_WITHIN_S)
        self.metrics.live["progress"] = self.progress
        self.metrics.ready["running"] = lambda: (
            (self._pool is not None and not self._halted, "reading" if self._pool else "starting")
        )
        self._group_metrics = GroupMetrics(self.client, o.group, o.name, self.metrics)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        name: str,
        streams: Sequence[str],
        redis_client: RedisClient,
        store: Store,
        **overrides: Any,
    ) -> Worker:
        c = settings.consumer
        options = WorkerOptions(
            group=c.group,
            name=name,
            streams=streams,
            batch_entries=c.batch_entries,
            batch_ms=c.batch_ms,
            flush_when_drained=c.flush_when_drained,
            block_ms=c.block_ms,
            claim_idle_ms=c.claim_idle_ms,
            claim_every_s=c.claim_every_s,
            backoff_max_s=c.backoff_max_s,
            writers=c.writers,
            stop_timeout_s=c.stop_timeout_s,
            max_deliveries=c.max_deliveries,
            defer_commits=c.defer_commits,
        )
        for key, value in overrides.items():
            setattr(options, key, value)
        processor = Processor(
            subscribed=settings.subscribed(),
            symbol_maps=settings.symbol_maps(),
            max_future_skew_ns=int(c.max_future_skew_s * 1e9),
            flagger=flagger_from(settings.flags),
        )
        worker = cls(options, redis_client, store, processor)
        processor.on_flag = worker._count_flags
        return worker

    def _count_flags(self, bits: int, exchange: str) -> None:
        for name in flag_names(bits):
            self.metrics.inc(f"flagged:{name}:{exchange}")

    @property
    def lease_ms(self) -> int:
        return max(1, self.options.claim_idle_ms // 3)

    # -- setup ----------------------------------------------------------------------------------
    def ensure_groups(self) -> None:
        for key in self.options.streams:
            try:
                # From 0: nothing already in the stream is skipped.
                self.client.xgroup_create(key, self.options.group, id="0", mkstream=True)
                logger.info("created group %s on %s", self.options.group, key)
            except redis.ResponseError as exc:
                if redis_code(exc) != "BUSYGROUP":
                    raise

    def _regroup(self) -> None:
        """NOGROUP: the stream and its group are gone (a deleted key, a FLUSHDB, a Redis
        restarted without its data, a fail-over to an empty replica). Create the groups again,
        so that the retry that follows (a read, a claim, a lease renewal) finds them. Any
        thread may call it (a writer renewing a lease): XGROUP CREATE answers BUSYGROUP once a
        group exists."""
        logger.warning("group %s is missing (NOGROUP): creating it again", self.options.group)
        self.ensure_groups()

    def _connect(self) -> list[Store]:
        call = self._retrier.call
        call("redis-setup", self.ensure_groups)
        call("postgres-connect", self.store.connect)
        stores = [self.store]
        for _ in range(self.options.writers - 1):
            stores.append(self.store.clone())
            call("postgres-connect", stores[-1].connect_again)
        return stores

    # -- the run --------------------------------------------------------------------------------
    def run(self, stop: StopFlag) -> None:
        """Work until ``stop`` is set (or, for a replay, the streams are drained).

        Raises whatever stopped it otherwise: a fatal server refusal (see
        ``common.errors.fatal_error``) or a bug. Either way nothing more was acked.
        """
        o = self.options
        # options may have been changed since construction (replay, tests)
        self._batcher = Batcher(o.batch_entries, o.batch_ms / 1000, o.flush_when_drained)
        self._retrier.backoff_max_s = o.backoff_max_s
        self._retrier.stop_timeout_s = o.stop_timeout_s
        self._retrier.bind(stop)
        try:
            stores = self._connect()
        except GaveUp as exc:  # asked to stop while a server was still unreachable
            logger.error("consumer %s stopped before it could start: %s", o.name, exc)
            return
        committer = Committer(
            client=self.client,
            group=o.group,
            retrier=self._retrier,
            deadletters=self._deadletters,
            claims=self._claims,
            metrics=self.metrics,
            lease_ms=self.lease_ms,
            halted=lambda: self._halted,
        )
        committer.progress = self.progress
        self._committer = committer
        if self._reads is not None:
            self._writers_ack = False  # their acks ride the reads too
            self._pool = pool = WriterPool(self._writer_commit, stores)
        else:
            self._pool = pool = WriterPool(committer.commit, stores)
        pool.start()
        cursor = {key: "0" if o.read_pending_first else ">" for key in o.streams}
        failure: BaseException | None = None
        try:
            try:
                self._loop(stop, cursor)
                if self._slot_reads is not None:  # reads still waiting hold entries of ours
                    waiting = self._slot_reads.finish(self.options.block_ms / 1000 + 1.0)
                    self._handle_read(waiting, cursor)
                self._flush()
                if self._inflight is not None:  # (the last batch may have been sent just now)
                    self._finish_inflight()
                self._writers_ack_from_now()
                self._ack_unacked()
            except GaveUp as exc:
                logger.warning("stopping with a server unreachable: %s", exc)
        except BaseException as exc:
            failure = exc
            self._halted = True
            raise
        finally:
            if self._slot_reads is not None:
                self._slot_reads.close()
            if self._reads is not None:
                self._reads.close()
            self._writers_ack_from_now()
            # The writers give up at the same deadline; a moment more lets them say so first.
            budget = self._retrier.remaining() + 0.5 if failure is None else 2.0
            self.writers_finished = pool.stop(budget)
            if self.writers_finished:
                for extra in stores[1:]:
                    extra.close()
            self._leave(failure)
        self._status()
        logger.info("consumer %s stopped", o.name)

    def _leave(self, failure: BaseException | None) -> None:
        """Entries still held at the end: give back their delivery when it was not the data's
        fault; record the error when it may have been (a bug outside the frame guard)."""
        held = self._held()
        if not held:
            return
        entries = sum(b.entries for b in held)
        self.metrics.inc("left_pending", entries)
        acks: dict[str, list[str]] = {}
        deliveries: dict[tuple[str, str], int] = {}
        for batch in held:
            for key, ids in batch.acks.items():
                acks.setdefault(key, []).extend(ids)
            deliveries.update(batch.deliveries)
        try:
            if failure is None or fatal_error(failure) is not None:
                self._claims.release(acks, deliveries)
                logger.warning("%d entries left pending for the next consumer", entries)
            else:
                self._deadletters.record_errors(acks, f"{type(failure).__name__}: {failure}")
                logger.error("%d entries left pending after an internal error", entries)
        except Exception as exc:
            logger.warning("could not update %d pending entries (%s)", entries, exc)

    def _held(self) -> list[Batch]:
        with self._acks_lock:
            batches = list(self._dropped) + self._unacked + self._committed
        if self._inflight is not None:
            batches.append(self._inflight)
        if self._pool is not None:
            batches += self._pool.held()
        if self._batcher.batch.entries:
            batches.append(self._batcher.take())
        return list({id(b): b for b in batches}.values())  # (a writer may be handing one back)

    def _writer_commit(self, batch: Batch, store: Store) -> bool:
        """A writer's commit when reads carry acks: committed, the batch goes back to the main
        thread, whose next read acks it (no XACK round trip of its own), unless the main
        thread is in a read that may block longer than ACK_WAIT_MS, or stopping: then the
        writer acks it now."""
        committer = self._committer
        assert committer is not None
        if not committer.commit(batch, store, ack=False):
            return False
        with self._acks_lock:
            if not self._writers_ack:
                self._committed.append(batch)
                return True
        return committer.ack_now(batch)

    def _writers_ack_from_now(self) -> None:
        """At the stop: writers ack their own batches; those handed back wait in _unacked."""
        with self._acks_lock:
            self._writers_ack = True
            self._unacked += self._committed
            self._committed = []

    def _loop(self, stop: StopFlag, cursor: dict[str, str]) -> None:
        o = self.options
        pool = self._pool
        assert pool is not None
        logger.info("consumer %s in group %s reading %s", o.name, o.group, ", ".join(o.streams))
        last_claim = last_status = time.monotonic()
        while not stop.is_set():
            if pool.error is not None:
                raise pool.error
            now = time.monotonic()
            if o.claim and now - last_claim >= o.claim_every_s:
                self._retrier.call("claim", lambda: self._claim(time.monotonic(), cursor))
                last_claim = time.monotonic()
            if now - last_status >= STATUS_EVERY_S:
                self._status()
                last_status = now
            live = {k: v for k, v in cursor.items() if k not in self._done}
            if not live:
                break
            if self._batcher.batch.entries == 0:
                block_ms = o.block_ms
            else:
                # A batch waits for the writer: wait for the writer (not for Redis, which
                # polling would keep busy), then collect whatever arrived meanwhile.
                pool.wait_idle(min(0.005, self._batcher.wait_s(now)))
                block_ms = 0
            if any(v != ">" for v in live.values()) or o.stop_when_drained:
                block_ms = 0  # history reads never block
            try:
                reply = self._read(live, block_ms)
            except Exception as exc:
                if classify(exc) is not Action.RETRY:
                    raise
                self.metrics.inc("retries:read")
                ack_error, self._ack_error = self._ack_error, None
                if ack_error is not None and classify(ack_error) is not Action.RETRY:
                    raise ack_error from exc
                if self._unacked:  # they went with the read: sent again with the next one
                    self.metrics.inc("retries:ack")
                logger.warning("redis read failed: %s", exc)
                if redis_code(exc) == "NOGROUP":  # the stream and its group were deleted
                    self._retrier.call("redis-setup", self._regroup)
                self.sleep(min(1.0, o.backoff_max_s, self._retrier.remaining()))
                continue
            got = self._handle_read(reply, cursor)
            if self._inflight is not None:  # its outcome is in by now, or soon (after the
                self._finish_inflight()  # read's entries are in a batch: held if it fails)
            self._settle_acks()
            if got == 0:
                self.progress.beat()  # nothing to do is progress too
            drained = got < self._last_count
            self._drained = drained
            if drained and o.stop_when_drained and all(v == ">" for v in cursor.values()):
                self._done.update(cursor)
            # Drained: hand the batch over as soon as a writer is free. While they are busy the
            # batch keeps growing, so commits get bigger exactly when the load is higher.
            if self._batcher.due(time.monotonic(), drained=drained and pool.idle()):
                self._flush()

    _last_count: int = 0
    _drained: bool = False  # the last read took all there was
    read_size: ReadSize = field(default_factory=ReadSize)

    def _count(self) -> int:
        """Entries to ask for (``consumer.reads.ReadSize``)."""
        return self.read_size.count(self._batcher.room)

    def _read(self, live: dict[str, str], block_ms: int) -> list[Any]:
        count = self._count()
        self._last_count = count
        if self._slot_reads is not None:
            return self._slot_reads.read(live, count, block_ms)
        if self._reads is not None:
            # How long this read may block, for the acks: one that carries some is counted
            # when it returns; a writer's batch committed meanwhile rides the next one, unless
            # this one may block long: the writer then acks it itself.
            if self._pool is not None and self._pool.committing():
                block_ms = min(block_ms, ACK_WAIT_MS)
            with self._acks_lock:
                if self._committed:
                    self._unacked += self._committed
                    self._committed = []
                if self._unacked:
                    block_ms = min(block_ms, ACKS_BLOCK_MS)
                if self._inflight is not None:
                    block_ms = min(block_ms, INFLIGHT_BLOCK_MS)
                self._writers_ack = block_ms > ACK_WAIT_MS
            try:
                return self._read_acking(self._reads, live, count, block_ms)
            finally:
                with self._acks_lock:
                    self._writers_ack = False
        reply = self.client.xreadgroup(
            self.options.group,
            self.options.name,
            live,  # type: ignore[arg-type]
            count=count,
            block=block_ms if block_ms > 0 else None,
        )
        return reply or []  # type: ignore[return-value]

    def _read_acking(
        self, reads: GroupReads, live: dict[str, str], count: int, block_ms: int
    ) -> list[Any]:
        """A read that carries the XACKs of the batches committed and not yet acked."""
        if not self._unacked:
            reply, _ = reads.read(live, count, block_ms)
            return reply or []
        sent = list(self._unacked)
        acks = [pair for batch in sent for pair in batch.acks.items()]
        reply, _ = reads.read(live, count, block_ms, acks, partial(self._acks_answered, sent))
        return reply or []

    def _handle_read(self, reply: Any, cursor: dict[str, str]) -> int:
        now = time.monotonic()
        total = 0
        frames_before = self._batcher.batch.frames
        size = 0  # bytes of the new entries' frames
        seen_keys = set()
        add, process = self._batcher.add, self.processor.process
        until = self.options.until
        # RESP2 replies [[key, entries], ...]; RESP3 (redis-py's default in 8.x) a map
        pairs = reply.items() if isinstance(reply, dict) else reply
        for raw_key, entries in pairs:
            key = _s(raw_key)
            seen_keys.add(key)
            history = cursor.get(key, ">") != ">"
            if history and not entries:
                cursor[key] = ">"  # own pending entries all re-read: switch to new ones
                continue
            total += len(entries)
            if history:
                self._add_history(key, entries, cursor, now)
                continue
            check_until = until is not None and key in until
            for raw_id, fields in entries:
                size += fields_bytes(fields)
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
                if check_until and not _ids_le(entry_id, until[key]):  # type: ignore[index]
                    self._done.add(key)
                    continue
                add(key, entry_id, fields, process(entry_id, fields), now)
        for key, value in cursor.items():
            if value != ">" and key not in seen_keys:
                cursor[key] = ">"  # no pending entries at all on this stream
        self.metrics.inc("entries", total)
        # (history entries are not sized: their reads are few)
        self.read_size.observe(total, self._batcher.batch.frames - frames_before, size)
        return total

    def _acks_answered(self, sent: list[Batch], error: BaseException | None) -> None:
        """The XACKs sent with a read were answered (their replies are read with the read's):
        count the batches acked, or keep them for the next read (``_settle_acks`` sorts the
        error)."""
        if error is None:
            assert self._committer is not None
            done = {id(b) for b in sent}
            self._unacked = [b for b in self._unacked if id(b) not in done]
            for batch in sent:
                self._committer.acked(batch)
        else:
            self._ack_error = error

    def _settle_acks(self) -> None:
        """After a read: an XACK refused is retried with the next read (a transient refusal)
        or stops the worker (a fatal one: ``common.errors``); nothing was acked then."""
        error, self._ack_error = self._ack_error, None
        if error is None:
            return
        if classify(error) is not Action.RETRY:
            raise error
        self.metrics.inc("retries:ack")
        logger.warning("redis refused the acks of %d batches, retrying: %s", len(self._unacked),
                       error)  # fmt: skip
        self.sleep(min(1.0, self.options.backoff_max_s, self._retrier.remaining()))

    def _ack_unacked(self) -> None:
        """Ack what was committed and not yet acked with a read: at the end, and around an
        entry handled alone (``_flush_and_wait``)."""
        with self._acks_lock:  # (handed back by a writer: ``_writer_commit``)
            self._unacked += self._committed
            self._committed = []
        committer = self._committer
        while self._unacked and committer is not None:
            batch = self._unacked[0]
            self._retrier.call("ack", partial(committer.ack, batch))
            self._unacked.pop(0)
            committer.acked(batch)

    def _add_history(self, key: str, entries: Any, cursor: dict[str, str], now: float) -> None:
        """Our own pending entries, read again: with their delivery counts. Those already in
        hand are skipped (not processed twice, nor acked before their own commit): the cursor
        passes each entry read, and a stream's claims wait for its history to end, so only a
        Redis Cluster read answered twice (``consumer.cluster_reads``: a failed read keeps the
        answers of the others for the next) brings one."""
        ids = [_s(raw_id) for raw_id, _ in entries]
        cursor[key] = ids[-1]
        counts = self._retrier.call("pending", lambda: self._claims.own_deliveries(key, ids))
        held = self._held_ids().get(key, set())
        for entry_id, (_, fields) in zip(ids, entries, strict=True):
            if entry_id not in held:
                self._add(key, entry_id, fields, counts.get(entry_id, 1), now)

    def _add(self, key: str, entry_id: str, fields: Any, deliveries: int, now: float) -> None:
        """One redelivered entry: dead-lettered past the budget, alone when suspect."""
        batcher = self._batcher
        if not fields:  # pending entry deleted from the stream by trimming
            self.metrics.inc("deleted_pending")
            batcher.add(key, entry_id, None, _DELETED, now)
            return
        if deliveries > self.options.max_deliveries:
            self._over_budget(key, entry_id, fields, deliveries, now)
            return
        alone = deliveries >= SUSPECT_DELIVERIES
        if alone:
            self._flush_and_wait()
        batcher.add(key, entry_id, fields, self.processor.process(entry_id, fields), now)
        if deliveries > 1:
            batcher.batch.deliveries[(key, entry_id)] = deliveries
        if alone:
            self._flush_and_wait()

    def _over_budget(
        self, key: str, entry_id: str, fields: Any, deliveries: int, now: float
    ) -> None:
        errors = self._retrier.call(
            "errors", lambda: self._deadletters.last_errors(key, [entry_id])
        )
        reason = over_budget_reason(deliveries, errors.get(entry_id))
        self.metrics.inc("over_budget")
        logger.error("entry %s of %s %s: dead-lettered unprocessed", entry_id, key, reason)
        self._batcher.add(key, entry_id, fields, Outcome(dead=reason), now)
        self._batcher.batch.deliveries[(key, entry_id)] = deliveries

    def _flush_and_wait(self) -> None:
        """Commit and ack everything in hand before going on (around an entry handled alone):
        acks that waited for the next read would be lost if the suspect entry kills the
        process, and the entries committed just before it would share its deliveries, and its
        fate once over budget."""
        self._flush()
        if self._inflight is not None:
            self._finish_inflight()
        pool = self._pool
        assert pool is not None
        while not pool.wait_all_idle(0.5):
            if pool.error is not None:
                raise pool.error
            if self._retrier.stopping() and self._retrier.remaining() <= 0:
                raise GaveUp("stop deadline passed while a suspect entry was committed")
        self._ack_unacked()

    def _held_ids(self) -> dict[str, set[str]]:
        """The ids, per stream, of the entries this consumer holds in memory: in the batch
        being built, with a writer, in flight, committed and not yet acked, left pending at the
        stop, or answered to a Redis Cluster read and not yet handled. Pending on this consumer
        in Redis, they must not be taken or processed again. Entries join them only on this
        (the main) thread; a writer moves a batch to ``_committed`` before it leaves the pool,
        so the pool is looked at first."""
        batches = self._pool.held() if self._pool is not None else []
        with self._acks_lock:
            batches += self._committed + self._unacked + self._dropped
        if self._inflight is not None:
            batches.append(self._inflight)
        batches.append(self._batcher.batch)
        held: dict[str, set[str]] = {}
        for batch in batches:
            for key, ids in batch.acks.items():
                held.setdefault(key, set()).update(ids)
        for raw_key, entries in self._unhandled_cluster_answers():
            held.setdefault(_s(raw_key), set()).update(_s(raw_id) for raw_id, _ in entries)
        return held

    def _unhandled_cluster_answers(self) -> list[Any]:
        """(key, entries) pairs a Redis Cluster read was answered and the worker has not
        handled yet: kept after another slot's read failed, or the answer of a blocked read
        not yet collected (``consumer.cluster_reads``)."""
        return self._slot_reads.held() if self._slot_reads is not None else []

    def _claim(self, now: float, cursor: dict[str, str]) -> None:
        o = self.options
        held = self._held_ids()  # before XPENDING: an entry is never taken while in hand
        for key in o.streams:
            if self._batcher.room <= 0:
                break
            if cursor.get(key, ">") != ">":
                continue  # our own pending entries are still read again (module docstring)
            got = self._claims.claim(key, o.claim_idle_ms, self._count(), held.get(key, set()))
            if got.entries:
                self.metrics.inc("claimed", len(got.entries))
                logger.info("claimed %d idle entries on %s", len(got.entries), key)
            if got.own:  # (counted in ``claimed``; the log tells them apart)
                logger.warning(
                    "took back %d entries of ours on %s whose delivery was lost (a reply lost "
                    "with the connection)",
                    got.own,
                    key,
                )
            if got.gone:
                # ids that were pending but are gone from the stream (trimmed): nothing to
                # store; Redis dropped them from the pending list.
                self.metrics.inc("claimed_deleted", got.gone)
                logger.warning("%d pending ids on %s no longer exist", got.gone, key)
            for entry_id, fields in got.entries:
                self._add(key, entry_id, fields, got.deliveries.get(entry_id, 2), now)

    # -- handing over ---------------------------------------------------------------------------
    def _flush(self) -> None:
        """Hand the batch to a writer, which commits it and then acks it."""
        if self._inflight is not None:  # (its connection is a writer's: free it first)
            self._finish_inflight()
        batch = self._batcher.take()
        if batch.entries == 0:
            return
        pool = self._pool
        assert pool is not None
        if batch.frames <= (INLINE_DRAINED_MAX if self._drained else INLINE_MAX_FRAMES):
            committer = self._committer
            assert committer is not None
            if self._reads is None:
                done = pool.commit_here(batch)
            elif self.options.defer_commits and pool.all_idle() and self._send(batch, committer):
                # Its outcome is read after the next read (``_finish_inflight``): the commit's
                # reply wakes no one, and the ack rides the read after that.
                self._inflight = batch
                return
            else:  # the ack goes with the next read
                done = pool.commit_here(batch, partial(committer.commit, ack=False))
                if done:
                    self._unacked.append(batch)
            if done is not None:
                return  # committed here (or left held, for the exit to release)
        retrier = self._retrier
        handed = pool.submit(
            batch,
            give_up=lambda: retrier.stopping() and retrier.remaining() <= 0,
            on_wait=lambda: self._claims.renew(batch.acks, self.lease_ms),
        )
        if not handed:
            logger.error("batch of %d entries left pending: stop deadline", batch.entries)
            self._dropped.append(batch)

    def _send(self, batch: Batch, committer: Committer) -> bool:
        """``Committer.send``; a batch it raises for is held for the exit to release."""
        try:
            return committer.send(batch, self.store)
        except BaseException:
            self._dropped.append(batch)
            raise

    def _finish_inflight(self) -> None:
        """The outcome of the batch whose statement ``_flush`` sent: committed, it is acked
        with the next read; else it was committed again the usual way (``Committer.received``),
        or is held for the exit to release (the stop deadline passed, or a fatal error)."""
        batch, self._inflight = self._inflight, None
        assert batch is not None and self._committer is not None
        try:
            done = self._committer.received(batch, self.store)
        except BaseException:
            self._dropped.append(batch)
            raise
        if done:
            self._unacked.append(batch)
            self.deferred_commits += 1
        else:
            self._dropped.append(batch)

    def _status(self) -> None:
        try:
            self._group_metrics.update(self.options.streams)
        except Exception as exc:  # status is best effort; never stop the worker for it
            logger.debug("status query failed: %s", bounded(str(exc)))
        logger.info("consumer %s: %s", self.options.name, self.metrics.summary())


_DELETED = Outcome(control="deleted")
