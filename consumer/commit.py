"""One batch's way out: write its rows, dead-letter its bad frames, then ack its entries.

Invariants:
- an entry is acked only after the transaction holding its rows has committed and, for a bad
  frame, after its dead letter was added;
- a transient failure (``Action.RETRY``) is retried with capped backoff until the stop deadline;
  the batch in hand is kept and written again (idempotent), nothing is acked meanwhile;
- a batch PostgreSQL refuses for a data reason (``Action.DATA``: SQLSTATE 22, 23, 54) is split
  in halves until the refused frames are found (``consumer.isolation``); only those are
  dead-lettered, with PostgreSQL's reason, the rest is committed, and all is acked;
- any other refusal (``Action.FATAL``) propagates: nothing more is acked or dead-lettered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial

import psycopg

from common.errors import Action, classify
from common.metrics import Metrics, Progress, reason_class
from common.records import Quote, Trade
from common.redis_url import RedisClient

from .batching import Batch, DeadLetter, Span
from .claims import Claims
from .deadletter import DeadLetters
from .isolation import isolate
from .process import bounded
from .retry import GaveUp, Retrier
from .store import Store

logger = logging.getLogger(__name__)

PARTITIONS_EVERY_S = 3600.0


def refusal_reason(exc: BaseException) -> str:
    """A dead letter's reason for a frame PostgreSQL refused: the SQLSTATE and its message."""
    state = exc.sqlstate if isinstance(exc, psycopg.Error) else None
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return bounded(f"postgres rejected ({state or type(exc).__name__}): {text}")


class Committer:
    def __init__(
        self,
        *,
        client: RedisClient,
        group: str,
        retrier: Retrier,
        deadletters: DeadLetters,
        claims: Claims,
        metrics: Metrics,
        lease_ms: int,
        halted: Callable[[], bool],
    ) -> None:
        self.client = client
        self.group = group
        self.retrier = retrier
        self.deadletters = deadletters
        self.claims = claims
        self.metrics = metrics
        self.lease_ms = lease_ms
        self.halted = halted
        self._partitions: dict[int, float] = {}
        self.progress: Progress | None = None  # /healthz: beats at every acked batch

    def commit(self, batch: Batch, store: Store, *, ack: bool = True) -> bool:
        """Write, dead-letter, ack. True when acked; False when the stop deadline passed first
        (the entries stay pending). Fatal errors and bugs propagate.

        With ``ack=False`` the caller acks (``consumer.reads``: with its next read, in one round
        trip) and then calls :meth:`acked`, or :meth:`ack_now`; True then means written and
        dead-lettered. ``commit_s`` is the write's and dead letters' time, not the ack's."""
        call = self.retrier.call

        def renew() -> None:
            self.claims.renew(batch.acks, self.lease_ms)

        started = time.monotonic()
        try:
            self._refresh_partitions(store)
            self._write(batch, store, renew)
            batch.committed_ns = time.time_ns()
            if batch.markers:
                markers = batch.markers
                self.retrier.call(
                    "ledger-write",
                    lambda: store.write_markers(markers),
                    on_wait=renew,
                    max_sleep=self.lease_ms / 1000,
                )
            if self.halted():
                return False  # another writer hit a fatal error: ack nothing more
            lease = self.lease_ms / 1000
            if batch.dead:
                send = self.deadletters.send
                call("dead-letter", lambda: send(batch.dead), on_wait=renew, max_sleep=lease)
        except GaveUp as exc:  # the worker counts and releases what is left at its exit
            logger.error("batch of %d entries left pending: %s", batch.entries, exc)
            return False
        batch.commit_s = time.monotonic() - started
        return self.ack_now(batch) if ack else True

    def send(self, batch: Batch, store: Store) -> bool:
        """Start committing ``batch`` without waiting for PostgreSQL (``Store.send``): True
        when its statement is sent, and :meth:`received` must follow before ``store`` is used
        again. False (nothing sent) for a batch :meth:`commit` must take: one with dead
        letters, coverage markers or redelivered entries (each written in its order), one
        ``Store.send`` declines, or one whose send failed (``commit`` retries it).

        Raises: a fatal refusal, as ``commit`` does."""
        if batch.dead or batch.markers or batch.deliveries or self.halted():
            return False
        started = time.monotonic()
        try:
            self._refresh_partitions(store)
            sent = store.send(batch.trades, batch.quotes)
        except GaveUp:
            return False
        except Exception as exc:
            if classify(exc) is Action.FATAL:
                raise
            return False  # (commit writes it again: retried, or its bad rows isolated)
        batch.commit_s = started
        return sent

    def received(self, batch: Batch, store: Store) -> bool:
        """The outcome of the statement :meth:`send` sent for ``batch``, as ``commit(batch,
        store, ack=False)`` would give it: True when committed (the ack is the caller's).
        A refused or lost statement committed nothing, or the whole batch (a lost connection
        cannot tell): the batch is committed again the usual way (``commit``: retried, its bad
        rows isolated and dead-lettered; rows already in are not written twice)."""
        started = batch.commit_s
        try:
            new = store.received()
        except Exception as exc:
            if classify(exc) is Action.FATAL:
                raise
            logger.info("a batch of %d frames is written again: %s", batch.frames, exc)
            return self.commit(batch, store, ack=False)
        fresh = new[0] + new[1]
        rows = len(batch.trades) + len(batch.quotes)
        self.metrics.inc_many((("rows_new", fresh), ("rows_duplicate", rows - fresh)))
        batch.committed_ns = time.time_ns()
        if self.halted():
            return False  # another writer hit a fatal error: ack nothing more
        batch.commit_s = time.monotonic() - started
        return True

    def ack_now(self, batch: Batch) -> bool:
        """Ack and count a committed batch (``commit`` does, unless ``ack=False``): False when
        the stop deadline passed first (its entries stay pending, for the worker to release)."""
        try:
            self.retrier.call(
                "ack",
                lambda: self.ack(batch),
                on_wait=lambda: self.claims.renew(batch.acks, self.lease_ms),
                max_sleep=self.lease_ms / 1000,
            )
        except GaveUp as exc:
            logger.error("batch of %d entries left pending: %s", batch.entries, exc)
            return False
        self.acked(batch)
        return True

    def acked(self, batch: Batch) -> None:
        """Count a batch whose entries are acked."""
        m = self.metrics
        counts = [
            ("trades", len(batch.trades)),
            ("quotes", len(batch.quotes)),
            ("dead", len(batch.dead)),
            ("acked", batch.entries),
            ("frames", batch.frames),
            ("batches", 1),
        ]
        counts += [(f"dead:{reason_class(letter.reason)}", 1) for letter in batch.dead]
        counts += [(f"control:{kind}", n) for kind, n in batch.controls.items()]
        m.inc_many(counts)
        if batch.oldest_recv_ns:
            done_ns = batch.committed_ns or time.time_ns()  # (acks may come later)
            m.latency.observe((done_ns - batch.oldest_recv_ns) / 1e9, batch.frames)
        m.batch_frames.observe(batch.frames)
        m.commit_seconds.observe(batch.commit_s)
        if self.progress is not None:
            self.progress.beat()

    def _refresh_partitions(self, store: Store) -> None:
        """At a store's first batch and then hourly: make the coming days' partitions (made at
        connect the first time), then enforce ``database.retention_days`` (``consumer.retention``;
        a busy table is skipped until the next check)."""
        last = self._partitions.get(id(store))
        now = time.monotonic()
        if last is not None and now - last < PARTITIONS_EVERY_S:
            return  # (every batch but one an hour: this much only)
        from common.errors import TransientError

        from .retention import enforce

        if last is None:
            self._partitions[id(store)] = now  # the store made them when it connected
        elif now - last >= PARTITIONS_EVERY_S:
            self.retrier.call("partitions", store.refresh_partitions)
            self._partitions[id(store)] = time.monotonic()
        else:
            return
        days = int(getattr(store, "retention_days", 0))  # database.retention_days; 0: off
        if days <= 0:
            return

        def retention() -> None:
            try:
                report = enforce(store.conn, days)
            except psycopg.Error as exc:  # classified as the store's own calls are
                if classify(exc) is not Action.RETRY:
                    raise
                store.close()
                raise TransientError(f"postgres unreachable: {exc}") from exc
            self.metrics.inc("retention_dropped", len(report.partitions))
            self.metrics.inc("retention_skipped", len(report.busy))  # logged by enforce

        self.retrier.call("retention", retention)

    def _write(self, batch: Batch, store: Store, renew: Callable[[], None]) -> None:
        def write(spans: Sequence[Span]) -> None:
            trades = [t for s in spans for t in batch.trades[s.trades_from : s.trades_to]]
            quotes = [q for s in spans for q in batch.quotes[s.quotes_from : s.quotes_to]]
            self._store(store, trades, quotes, renew)

        try:
            self._store(store, batch.trades, batch.quotes, renew)
            return
        except Exception as exc:
            if classify(exc) is not Action.DATA:
                raise
            logger.warning(
                "postgres refused a batch of %d frames (%s); finding the bad ones",
                batch.frames,
                refusal_reason(exc),
            )
        self.metrics.inc("isolations")
        for span, refusal in isolate(batch.frame_spans(), write):
            fields = self.retrier.call("fetch", partial(self.deadletters.fetch, *span[:2]))
            reason = refusal_reason(refusal)
            batch.dead.append(DeadLetter(span.key, span.entry_id, fields, reason))

    def _store(
        self,
        store: Store,
        trades: Sequence[Trade],
        quotes: Sequence[Quote],
        renew: Callable[[], None],
    ) -> None:
        new = self.retrier.call(
            "postgres-write",
            lambda: store.write(trades, quotes),
            on_wait=renew,
            max_sleep=self.lease_ms / 1000,
        )
        fresh = new[0] + new[1]
        self.metrics.inc_many(
            (("rows_new", fresh), ("rows_duplicate", len(trades) + len(quotes) - fresh))
        )

    def ack(self, batch: Batch) -> None:
        if len(batch.acks) == 1:  # the common case: one stream, one command
            [(key, ids)] = batch.acks.items()
            self.client.xack(key, self.group, *ids)
            return
        pipe = self.client.pipeline(transaction=False)
        for key, ids in batch.acks.items():
            pipe.xack(key, self.group, *ids)
        pipe.execute()
