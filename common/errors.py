"""One exception hierarchy, named by what the caller does with it.

::

    TickvaultError
    ├── TransientError      back off and retry (lost connection, server restarting)
    ├── PoisonFrame         the frame can never be processed: dead-letter it, then ack it
    └── ConfigError         the configuration is wrong: exit at start with the key and the fix

``classify(exc)`` maps third-party exceptions (redis-py, psycopg, OSError) onto "retry or not",
and ``backoff()`` yields capped, jittered delays that a caller resets after a success, in the
manner of websockets' ``asyncio/client.py``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

__all__ = [
    "ConfigError",
    "PoisonFrame",
    "TickvaultError",
    "TransientError",
    "backoff",
    "is_transient",
]


class TickvaultError(Exception):
    """Root of every error tickvault raises on purpose."""


class TransientError(TickvaultError):
    """A dependency is unavailable for now: back off and try again."""


class PoisonFrame(TickvaultError):
    """A frame that cannot be decoded or fails validation.

    The caller sends it to the dead-letter stream with ``reason`` and acks it; it is never retried
    as-is (a fixed parser can replay it from the dead-letter stream).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigError(TickvaultError):
    """Bad configuration, found at start. The message names the key and the fix."""

    def __init__(self, key: str, problem: str, fix: str = "") -> None:
        message = f"config error at {key}: {problem}"
        if fix:
            message += f" (fix: {fix})"
        super().__init__(message)
        self.key = key
        self.problem = problem
        self.fix = fix


def is_transient(exc: BaseException) -> bool:
    """Say whether ``exc`` is worth retrying after a pause.

    Lost connections and timeouts to Redis, PostgreSQL or an exchange are; data errors are not.
    """
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, (PoisonFrame, ConfigError)):
        return False
    # Imported here so that pure modules importing this one do not pull in the drivers.
    import psycopg
    import redis.exceptions

    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return True
    if isinstance(exc, redis.exceptions.BusyLoadingError):
        return True
    if isinstance(exc, psycopg.OperationalError):
        return True
    return isinstance(exc, (ConnectionError, TimeoutError, OSError, EOFError))


def backoff(
    *,
    initial: float = 0.2,
    factor: float = 2.0,
    cap: float = 30.0,
    jitter: float = 0.5,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Yield delays growing by ``factor`` up to ``cap``, each with +/- ``jitter`` fraction.

    Start a fresh generator after a success: that is the reset.
    """
    rand = rng or random.Random()
    delay = initial
    while True:
        spread = delay * jitter
        yield max(0.0, delay + rand.uniform(-spread, spread))
        delay = min(cap, delay * factor)
