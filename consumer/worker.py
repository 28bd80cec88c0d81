"""The consumer-group worker: read, process, write, commit, then ack.

Invariants:
- an entry is acked only after the transaction holding its rows has committed (and, for a
  malformed frame, after its dead-letter copy was added);
- a lost Redis or PostgreSQL is retried with capped, jittered backoff; the batch in hand is kept
  and written again (idempotent), nothing is acked meanwhile;
- no frame stops the worker: bad frames are dead-lettered, rows PostgreSQL rejects are found by
  writing frame by frame and those frames dead-lettered;
- on stop (SIGTERM/SIGINT) it stops reading, flushes, commits, acks and returns.

Reading and processing run on the main thread; committing and acking on ``writers`` writer
threads, each with its own PostgreSQL connection, so the next batch is read and parsed while
PostgreSQL commits the previous ones (and, with two writers, two batches commit at once on two
server processes). Batches are independent: each is acked after its own commit.

At start it re-reads its own pending entries (id ``0``), then new ones (``>``). Every
``claim_every_s`` it XAUTOCLAIMs entries idle for ``claim_idle_ms`` from dead consumers; ids the
stream no longer holds (Redis 7's third reply element) are acked and counted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import psycopg
import redis

from common.config import Settings
from common.envelope import RUN_MAX, dead_key, run_frame_fields
from common.errors import TransientError, backoff, is_transient
from common.metrics import Metrics

from .batching import Batch, Batcher, DeadLetter
from .process import Outcome, Processor
from .store import Store

logger = logging.getLogger(__name__)

DEAD_MAXLEN = 1_000_000
READ_MAX = 1_000  # entries per XREADGROUP at most (runs of up to RUN_MAX frames each)
STATUS_EVERY_S = 10.0
PARTITIONS_EVERY_S = 3600.0


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


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
    shutdown_budget_s: float = 20.0
    writers: int = 2


def _ids_le(a: str, b: str) -> bool:
    am, _, aseq = a.partition("-")
    bm, _, bseq = b.partition("-")
    return (int(am), int(aseq or 0)) <= (int(bm), int(bseq or 0))


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class Worker:
    options: WorkerOptions
    client: redis.Redis
    store: Store
    processor: Processor
    metrics: Metrics = field(default_factory=lambda: Metrics("consumer"))
    sleep: Callable[[float], None] = time.sleep
    _batcher: Batcher = field(init=False)
    _done: set[str] = field(default_factory=set)
    _queue: queue.Queue[Batch | None] = field(default_factory=lambda: queue.Queue(maxsize=1))
    _writers: list[threading.Thread] = field(default_factory=list)
    _writer_error: BaseException | None = None
    _busy: int = 0  # writers committing a batch
    _busy_lock: threading.Lock = field(default_factory=threading.Lock)
    _idle: threading.Event = field(default_factory=threading.Event)  # a writer is free

    def __post_init__(self) -> None:
        # Raw XREADGROUP replies: entries stay [id, [name, value, ...]] lists instead of being
        # turned into dicts by redis-py, which costs more than parsing the frame.
        self.client.set_response_callback("XREADGROUP", _raw_reply)
        o = self.options
        self._batcher = Batcher(o.batch_entries, o.batch_ms / 1000, o.flush_when_drained)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        name: str,
        streams: Sequence[str],
        redis_client: redis.Redis,
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
        )
        for key, value in overrides.items():
            setattr(options, key, value)
        processor = Processor(
            subscribed=settings.subscribed(),
            symbol_maps=settings.symbol_maps(),
            max_future_skew_ns=int(c.max_future_skew_s * 1e9),
        )
        return cls(options, redis_client, store, processor)

    # -- retry ----------------------------------------------------------------------------------
    def _retry(self, what: str, call: Callable[[], Any], stop: StopFlag | None = None) -> Any:
        """Run ``call`` until it succeeds, backing off on transient errors.

        With ``stop`` given, gives up (raising TransientError) once stop is set and the shutdown
        budget is spent.
        """
        delays: Iterator[float] | None = None
        deadline: float | None = None
        while True:
            try:
                return call()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.metrics.inc(f"retries:{what}")
                if delays is None:
                    delays = backoff(initial=0.1, cap=self.options.backoff_max_s)
                    logger.warning("%s failed, retrying with backoff: %s", what, exc)
                if stop is not None and stop.is_set():
                    now = time.monotonic()
                    deadline = deadline or now + self.options.shutdown_budget_s
                    if now > deadline:
                        raise TransientError(f"{what}: gave up at shutdown: {exc}") from exc
                self.sleep(next(delays))

    # -- setup ----------------------------------------------------------------------------------
    def ensure_groups(self) -> None:
        for key in self.options.streams:
            try:
                # From 0: nothing already in the stream is skipped.
                self.client.xgroup_create(key, self.options.group, id="0", mkstream=True)
                logger.info("created group %s on %s", self.options.group, key)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # -- main loop ------------------------------------------------------------------------------
    def run(self, stop: StopFlag) -> None:
        o = self.options
        try:
            self._retry("redis-setup", self.ensure_groups, stop)
            self._retry("postgres-connect", self.store.connect, stop)
            stores = [self.store]
            for _ in range(o.writers - 1):
                stores.append(self.store.clone())
                self._retry("postgres-connect", stores[-1].connect_again, stop)
        except TransientError as exc:  # asked to stop while a server was still unreachable
            logger.error("consumer %s stopped before it could start: %s", self.options.name, exc)
            return
        cursor = {key: "0" if o.read_pending_first else ">" for key in o.streams}
        last_claim = last_status = time.monotonic()
        self._start_writers(stop, stores)
        try:
            self._loop(stop, cursor, last_claim, last_status)
            self.flush(stop)
        finally:
            self._stop_writers()
            for extra in stores[1:]:
                extra.close()
        self._status()
        logger.info("consumer %s stopped", o.name)

    def _loop(
        self, stop: StopFlag, cursor: dict[str, str], last_claim: float, last_status: float
    ) -> None:
        o = self.options
        logger.info("consumer %s in group %s reading %s", o.name, o.group, ", ".join(o.streams))
        while not stop.is_set():
            if self._writer_error is not None:
                raise RuntimeError("a writer thread failed") from self._writer_error
            now = time.monotonic()
            if o.claim and now - last_claim >= o.claim_every_s:
                self._retry("claim", partial(self._claim, now), stop)
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
                self._idle.wait(min(0.005, self._batcher.wait_s(now)))
                block_ms = 0
            if any(v != ">" for v in live.values()) or o.stop_when_drained:
                block_ms = 0  # history reads never block
            try:
                reply = self._read(live, block_ms)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.metrics.inc("retries:read")
                logger.warning("redis read failed: %s", exc)
                self.sleep(min(1.0, o.backoff_max_s))
                continue
            got = self._handle_read(reply, cursor)
            drained = got < self._last_count
            if drained and o.stop_when_drained and all(v == ">" for v in cursor.values()):
                self._done.update(cursor)
            # Drained: hand the batch over as soon as the writer is free. While it is busy the
            # batch keeps growing, so commits get bigger exactly when the load is higher.
            if self._batcher.due(time.monotonic(), drained=drained and self._writer_idle()):
                self.flush(stop)

    _last_count: int = 0
    # Frames per entry in the last read (rounded up); until a read tells, assume full runs.
    _run_hint: int = RUN_MAX

    def _count(self) -> int:
        """Entries to ask for: the batch's room is in frames, and an entry may hold a run."""
        return max(1, min(self._batcher.room // self._run_hint, READ_MAX))

    def _read(self, live: dict[str, str], block_ms: int) -> list[Any]:
        count = self._count()
        self._last_count = count
        reply = self.client.xreadgroup(
            self.options.group,
            self.options.name,
            live,  # type: ignore[arg-type]
            count=count,
            block=block_ms if block_ms > 0 else None,
        )
        return reply or []  # type: ignore[return-value]

    def _handle_read(self, reply: Any, cursor: dict[str, str]) -> int:
        now = time.monotonic()
        total = 0
        frames_before = self._batcher.batch.frames
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
            check_until = until is not None and key in until
            for raw_id, fields in entries:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
                if history:
                    cursor[key] = entry_id
                if check_until and not _ids_le(entry_id, until[key]):  # type: ignore[index]
                    self._done.add(key)
                    continue
                if fields is None:  # pending entry deleted from the stream by trimming
                    self.metrics.inc("deleted_pending")
                    add(key, entry_id, None, _DELETED, now)
                    continue
                add(key, entry_id, fields, process(entry_id, fields), now)
        for key, value in cursor.items():
            if value != ">" and key not in seen_keys:
                cursor[key] = ">"  # no pending entries at all on this stream
        self.metrics.inc("entries", total)
        if total:
            self._run_hint = max(1, -(-(self._batcher.batch.frames - frames_before) // total))
        return total

    def _claim(self, now: float) -> None:
        o = self.options
        for key in o.streams:
            start = "0-0"
            while self._batcher.room > 0:
                reply = self.client.xautoclaim(
                    key, o.group, o.name, o.claim_idle_ms, start_id=start,
                    count=self._count(),
                )  # fmt: skip
                start = _s(reply[0])
                claimed = reply[1]
                deleted = reply[2] if len(reply) > 2 else []
                for raw_id, fields in claimed:
                    entry_id = _s(raw_id)
                    self._batcher.add(
                        key, entry_id, fields, self.processor.process(entry_id, fields), now
                    )
                if claimed:
                    self.metrics.inc("claimed", len(claimed))
                    logger.info("claimed %d idle entries on %s", len(claimed), key)
                if deleted:
                    # Redis 7: ids that were pending but are gone from the stream. Nothing to
                    # store; ack them so they leave the PEL, and count them.
                    self.client.xack(key, o.group, *deleted)
                    self.metrics.inc("claimed_deleted", len(deleted))
                    logger.warning("%d pending ids on %s no longer exist", len(deleted), key)
                if start == "0-0":
                    break

    # -- flush ----------------------------------------------------------------------------------
    def flush(self, stop: StopFlag | None = None) -> None:
        """Hand the batch to the writer thread, which commits it and then acks it.

        The queue holds one batch: while one is being committed and one waits, reading stops
        (backpressure), so at most three batches are in memory.
        """
        batch = self._batcher.take()
        if batch.entries == 0:
            return
        if not self._writers:
            self._commit(batch, stop, self.store)
            return
        while True:
            if self._writer_error is not None:
                raise RuntimeError("the writer thread failed") from self._writer_error
            try:
                self._queue.put(batch, timeout=0.5)
                return
            except queue.Full:
                continue

    def _writer_idle(self) -> bool:
        """A writer would take a batch now."""
        return not self._writers or (self._busy < len(self._writers) and self._queue.empty())

    def _start_writers(self, stop: StopFlag, stores: list[Store]) -> None:
        for i, store in enumerate(stores):
            thread = threading.Thread(
                target=self._writer_loop, args=(stop, store), name=f"writer-{i}", daemon=True
            )
            self._writers.append(thread)
            thread.start()

    def _stop_writers(self) -> None:
        for _ in self._writers:  # one None for each: a writer takes one and returns
            while any(t.is_alive() for t in self._writers):
                try:
                    self._queue.put(None, timeout=0.5)
                    break
                except queue.Full:
                    continue
        for thread in self._writers:
            thread.join()
        self._writers = []
        if self._writer_error is not None:
            raise RuntimeError("the writer thread failed") from self._writer_error

    def _writer_loop(self, stop: StopFlag, store: Store) -> None:
        """Commit, then ack, batch after batch, while the main thread reads the next ones."""
        last_partitions = time.monotonic()
        try:
            while True:
                batch = self._queue.get()
                if batch is None:
                    return
                with self._busy_lock:
                    self._busy += 1
                    if self._busy >= len(self._writers):
                        self._idle.clear()  # no writer left to take the next batch
                if time.monotonic() - last_partitions >= PARTITIONS_EVERY_S:
                    self._retry("partitions", store.refresh_partitions, stop)
                    last_partitions = time.monotonic()
                self._commit(batch, stop, store)
                with self._busy_lock:
                    self._busy -= 1
                    if self._queue.empty():
                        self._idle.set()
        except BaseException as exc:
            logger.exception("writer thread failed")
            self._writer_error = exc

    def _commit(self, batch: Batch, stop: StopFlag | None, store: Store) -> None:
        try:
            self._write(batch, stop, store)
            if batch.dead:
                self._retry("dead-letter", lambda: self._dead_letter(batch.dead), stop)
            self._retry("ack", lambda: self._ack(batch), stop)
        except TransientError as exc:
            # Only at shutdown: nothing acked, so the entries stay pending for a later run.
            logger.error("batch of %d entries left pending: %s", batch.entries, exc)
            self.metrics.inc("left_pending", batch.entries)
            return
        m = self.metrics
        m.inc("trades", len(batch.trades))
        m.inc("quotes", len(batch.quotes))
        m.inc("dead", len(batch.dead))
        m.inc("acked", batch.entries)
        m.inc("frames", batch.frames)
        m.inc("batches")
        for kind, n in batch.controls.items():
            m.inc(f"control:{kind}", n)
        if batch.oldest_recv_ns:
            m.latency.observe((time.time_ns() - batch.oldest_recv_ns) / 1e9, batch.frames)

    def _write(self, batch: Batch, stop: StopFlag | None, store: Store) -> None:
        try:
            new = self._retry(
                "postgres-write", lambda: store.write(batch.trades, batch.quotes), stop
            )
            self.metrics.inc("rows_new", new[0] + new[1])
        except psycopg.Error as exc:
            # A row PostgreSQL rejects: find its entries by writing them one by one.
            logger.exception("batch rejected by postgres, isolating bad entries: %s", exc)
            for span in batch.spans:
                trades = batch.trades[span.trades[0] : span.trades[1]]
                quotes = batch.quotes[span.quotes[0] : span.quotes[1]]
                try:
                    self._retry("postgres-write", partial(store.write, trades, quotes), stop)
                except psycopg.Error as one:
                    reason = f"postgres rejected: {str(one).splitlines()[0]}"
                    fields = self._fetch(span.key, span.entry_id)
                    batch.dead.append(DeadLetter(span.key, span.entry_id, fields, reason))

    def _fetch(self, key: str, frame: str) -> dict[bytes, bytes]:
        """The fields of entry ``frame``, or of frame ``<entry id>/<index>`` of a run."""
        entry_id, _, index = frame.partition("/")
        rows = self._retry("fetch", lambda: self.client.xrange(key, entry_id, entry_id))
        if not rows:
            return {}
        return run_frame_fields(dict(rows[0][1]), int(index or 0))

    def _dead_letter(self, dead: list[DeadLetter]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for d in dead:
            fields = dict(d.fields)
            fields[b"reason"] = d.reason.encode()
            fields[b"origin"] = d.entry_id.encode()
            fields[b"stream"] = d.key.encode()
            exchange = d.key[d.key.find("{") + 1 : d.key.rfind("}")] if "{" in d.key else "unknown"
            pipe.xadd(dead_key(exchange), fields, maxlen=DEAD_MAXLEN, approximate=True)  # type: ignore[arg-type]
            logger.warning("dead-lettered %s %s: %s", d.key, d.entry_id, d.reason)
        pipe.execute()

    def _ack(self, batch: Batch) -> None:
        if len(batch.acks) == 1:  # the common case: one stream, one command
            [(key, ids)] = batch.acks.items()
            self.client.xack(key, self.options.group, *ids)
            return
        pipe = self.client.pipeline(transaction=False)
        for key, ids in batch.acks.items():
            pipe.xack(key, self.options.group, *ids)
        pipe.execute()

    def _status(self) -> None:
        try:
            lag = 0
            for key in self.options.streams:
                for group in self.client.xinfo_groups(key):
                    if _s(group["name"]) == self.options.group:
                        lag += int(group.get("lag") or 0)
            self.metrics.set("lag", lag)
        except Exception as exc:  # status is best effort; never stop the worker for it
            logger.debug("status query failed: %s", exc)
        logger.info("consumer %s: %s", self.options.name, self.metrics.summary())


_DELETED = Outcome(control="deleted")


def _raw_reply(response: Any, **options: Any) -> Any:
    return response
