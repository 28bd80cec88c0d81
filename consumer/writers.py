"""The writer threads: each commits the batches the main thread hands over, on a PostgreSQL
connection of its own, then acks them (or hands them back for the main thread's next read to
ack: ``consumer.worker``).

The queue holds one batch: while every writer is busy and one batch waits, the main thread stops
reading (backpressure), so at most ``writers + 2`` batches are in memory. A batch is *held* from
the moment it is handed over until it is acked; a batch that could not be committed before the
stop deadline stays held (its entries pending in Redis), and the worker releases it on the way
out. A writer that raises (a fatal server error, a bug) records the error and stops; the main
thread sees :attr:`WriterPool.error` and stops too.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from .batching import Batch
from .store import Store

logger = logging.getLogger(__name__)


class WriterPool:
    def __init__(self, commit: Callable[[Batch, Store], bool], stores: list[Store]) -> None:
        """``commit(batch, store)`` returns True once the batch is committed and acked, or
        handed back to be acked."""
        self._commit = commit
        self._stores = stores
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        self._threads: list[threading.Thread] = []
        self._busy = 0  # writers committing a batch
        self._lock = threading.Lock()
        self._idle = threading.Event()  # a writer is free
        self._idle.set()
        self._held: dict[int, Batch] = {}
        self.error: BaseException | None = None

    def start(self) -> None:
        for i, store in enumerate(self._stores):
            thread = threading.Thread(
                target=self._run, args=(store,), name=f"writer-{i}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    @property
    def size(self) -> int:
        return len(self._threads)

    def submit(
        self,
        batch: Batch,
        *,
        give_up: Callable[[], bool],
        on_wait: Callable[[], object] | None = None,
        wait_every_s: float = 5.0,
    ) -> bool:
        """Hand ``batch`` to a writer; False if ``give_up()`` said so while every writer was
        busy (the batch is then held by no one: its entries stay pending)."""
        last_wait = time.monotonic()
        while True:
            if self.error is not None:
                raise self.error
            try:
                with self._lock:
                    self._held[id(batch)] = batch
                self._queue.put(batch, timeout=0.2)
                return True
            except queue.Full:
                with self._lock:
                    del self._held[id(batch)]
            if give_up():
                return False
            if on_wait is not None and time.monotonic() - last_wait >= wait_every_s:
                last_wait = time.monotonic()
                try:
                    on_wait()
                except Exception as exc:  # best effort (renewing a lease)
                    logger.debug("while waiting for a writer: %s", exc)

    def commit_here(
        self, batch: Batch, commit: Callable[[Batch, Store], bool] | None = None
    ) -> bool | None:
        """Commit ``batch`` on the calling (main) thread with an idle writer's connection, when
        every writer is idle: at low rates this spares two thread hand-offs per batch, which
        cost more than the commit. None when a writer is busy (submit it instead); else what
        ``commit`` (default: the pool's) returned. Only the main thread submits, so no writer
        can wake meanwhile."""
        if self.error is not None:
            raise self.error
        with self._lock:
            if self._busy or not self._queue.empty() or self._held:
                return None
            self._held[id(batch)] = batch
        done = False
        try:
            done = (commit or self._commit)(batch, self._stores[0])
        finally:
            if done:
                with self._lock:
                    self._held.pop(id(batch), None)
        return done

    def all_idle(self) -> bool:
        """No writer is committing or holds a batch, none is queued: the first writer's
        connection is free for the main thread (as in ``commit_here``)."""
        with self._lock:
            return not self._busy and self._queue.empty() and not self._held

    def committing(self) -> bool:
        """A batch is being committed, or waits for a writer."""
        return self._busy > 0 or not self._queue.empty()

    def idle(self) -> bool:
        """A writer would take a batch now."""
        return self._busy < len(self._threads) and self._queue.empty()

    def wait_idle(self, timeout: float) -> None:
        """Wait up to ``timeout`` for a free writer (not for Redis: polling would keep it busy)."""
        self._idle.wait(timeout)

    def wait_all_idle(self, timeout: float) -> bool:
        """Wait until no batch is held (all committed, and acked or handed back); False on
        timeout or error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                return False
            with self._lock:
                if not self._held:
                    return True
            time.sleep(0.002)
        return False

    def held(self) -> list[Batch]:
        """Batches handed over and not acked (queued, being committed, or left pending)."""
        with self._lock:
            return list(self._held.values())

    def stop(self, timeout: float) -> bool:
        """Let the writers finish their batches within ``timeout``; True if they all ended."""
        deadline = time.monotonic() + timeout
        for _ in self._threads:  # one None for each: a writer takes one and returns
            while any(t.is_alive() for t in self._threads) and time.monotonic() < deadline:
                try:
                    self._queue.put(None, timeout=0.05)
                    break
                except queue.Full:
                    continue
        for thread in self._threads:
            left = deadline - time.monotonic()
            thread.join(None if left == float("inf") else max(0.0, left))
        return not any(t.is_alive() for t in self._threads)

    def _run(self, store: Store) -> None:
        try:
            while True:
                batch = self._queue.get()
                if batch is None:
                    return
                with self._lock:
                    self._busy += 1
                    if self._busy >= len(self._threads):
                        self._idle.clear()  # no writer left to take the next batch
                done = self._commit(batch, store)
                with self._lock:
                    if done:
                        self._held.pop(id(batch), None)
                    self._busy -= 1
                    if self._queue.empty():
                        self._idle.set()
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            self._idle.set()
