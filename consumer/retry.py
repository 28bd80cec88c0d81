"""Retrying transient failures, with one deadline for the whole stop.

Every call to Redis or PostgreSQL in the consumer goes through :meth:`Retrier.call`: an error
that ``classify`` calls RETRY is retried with capped, jittered backoff; any other propagates at
once (DATA to the isolation of bad frames, FATAL to the exit). Once a stop is requested, one
deadline (``stop_timeout_s`` from the moment the stop is first seen) bounds every retry in every
thread together, the way arq's ``handle_sig_wait_for_completion`` does: past it a call gives up
with :class:`GaveUp`, and whatever it held stays pending in the stream (never acked).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from common.errors import Action, TransientError, backoff, classify
from common.metrics import Metrics

logger = logging.getLogger(__name__)

T = TypeVar("T")

LOG_EVERY_S = 10.0  # a retry loop logs its first failure, then at most this often


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


class GaveUp(TransientError):
    """The stop deadline passed while a server was still unreachable."""


class Retrier:
    """Retry policy plus the stop deadline, shared by the main thread and the writers."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        backoff_max_s: float,
        stop_timeout_s: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.backoff_max_s = backoff_max_s
        self.stop_timeout_s = stop_timeout_s
        self.sleep = sleep
        self.clock = clock
        self._stop: StopFlag | None = None
        self._deadline: float | None = None
        self._lock = threading.Lock()

    def bind(self, stop: StopFlag) -> None:
        self._stop = stop
        self._deadline = None

    def stopping(self) -> bool:
        """Whether a stop was requested; the first time it is seen, the deadline starts."""
        if self._deadline is not None:
            return True
        if self._stop is None or not self._stop.is_set():
            return False
        with self._lock:
            if self._deadline is None:
                self._deadline = self.clock() + self.stop_timeout_s
        return True

    def remaining(self) -> float:
        """Seconds left of the stop budget (infinite while no stop is requested)."""
        if not self.stopping():
            return float("inf")
        assert self._deadline is not None
        return max(0.0, self._deadline - self.clock())

    def call(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        on_wait: Callable[[], object] | None = None,
        max_sleep: float | None = None,
    ) -> T:
        """``fn()`` until it succeeds; RETRY errors back off, others propagate.

        ``what`` names the operation in logs and in the ``retries`` counter (a fixed word, never
        data). ``on_wait`` runs before each pause (e.g. to renew the lease on held entries),
        and ``max_sleep`` bounds each pause (so that a lease is renewed in time).

        Raises:
            GaveUp: a stop was requested and its deadline passed while ``fn`` kept failing.
        """
        delays = None
        failures = 0
        last_log = 0.0
        while True:
            try:
                return fn()
            except Exception as exc:
                if classify(exc) is not Action.RETRY:
                    raise
                failures += 1
                self.metrics.inc(f"retries:{what}")
                if delays is None:
                    delays = backoff(initial=0.1, cap=self.backoff_max_s)
                    logger.warning("%s failed, retrying with backoff: %s", what, exc)
                    last_log = self.clock()
                elif self.clock() - last_log >= LOG_EVERY_S:
                    logger.warning("%s still failing after %d tries: %s", what, failures, exc)
                    last_log = self.clock()
                left = self.remaining()
                if left <= 0:
                    raise GaveUp(f"{what}: gave up at stop: {exc}") from exc
                if on_wait is not None:
                    try:
                        on_wait()
                    except Exception as renew:  # best effort: the server is likely away too
                        logger.debug("%s: while waiting: %s", what, renew)
                self.sleep(min(next(delays), left, max_sleep or left))
