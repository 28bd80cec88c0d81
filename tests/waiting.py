"""Wait on conditions, never on fixed sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import redis

from tests.conftest import SLOW

T = TypeVar("T")


def wait_for(
    check: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> T:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` x SLOW seconds."""
    deadline = time.monotonic() + timeout * SLOW
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout * SLOW:.0f} s waiting for {what}: {last!r}"
            )
        time.sleep(interval)
        last = check()
    return last


def redis_answers(client: redis.Redis) -> bool:
    """Whether a (re)started Redis answers: listening, and done loading its AOF."""
    try:
        return bool(client.ping())
    except (redis.BusyLoadingError, redis.ConnectionError):
        return False
