"""The producer and the consumer as supervised children: when one that died is started again
(pure: "now" comes in), and how an exit status reads."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..demo import _spawn, _terminate
from ..errors import ExitStatus, backoff

logger = logging.getLogger("tickvault.run")

RESTART_INITIAL_S = 1.0
RESTART_CAP_S = 60.0
RESTART_RESET_S = 60.0  # a child that lived this long restarts after RESTART_INITIAL_S again


class RestartDelays:
    """Capped exponential delays between restarts of one child: 1, 2, 4 ... 60 s, started
    again from 1 s after a child that lived ``reset_after_s``. No jitter: one supervisor and
    two children make no thundering herd, and the log reads plainly."""

    def __init__(
        self,
        initial_s: float = RESTART_INITIAL_S,
        cap_s: float = RESTART_CAP_S,
        reset_after_s: float = RESTART_RESET_S,
    ) -> None:
        self.initial_s, self.cap_s, self.reset_after_s = initial_s, cap_s, reset_after_s
        self._delays = self._fresh()

    def _fresh(self) -> Iterator[float]:
        return backoff(initial=self.initial_s, cap=self.cap_s, jitter=0.0)

    def after_exit(self, lived_s: float) -> float:
        """The delay before the next start of a child that ran ``lived_s`` seconds."""
        if lived_s >= self.reset_after_s:
            self._delays = self._fresh()
        return next(self._delays)


def describe_exit(status: int) -> str:
    """``-9`` -> ``killed by SIGKILL``; ``5`` -> ``status 5 (LOST)``."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    try:
        return f"status {status} ({ExitStatus(status).name})"
    except ValueError:
        return f"status {status}"


@dataclass
class Child:
    """A supervised ``tickvault <command>`` process."""

    name: str
    args: list[str]
    log: Path
    env: dict[str, str]
    stop_budget_s: float = 25.0  # SIGTERM, then this long, then SIGKILL
    delays: RestartDelays = field(default_factory=RestartDelays)
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0  # monotonic
    restarts: int = 0
    restart_at: float | None = None  # monotonic; set while waiting to start again
    last_exit: int | None = None

    @property
    def cmdline(self) -> str:
        """Its ``/proc/<pid>/cmdline`` (the argv ``_spawn`` gives: read back right after the
        start, /proc can still show an empty one)."""
        return "\0".join([sys.executable, "-m", "common.cli", *self.args]) + "\0"

    def start(self, now: float) -> None:
        self.proc = _spawn(self.args, self.log, self.env)
        self.started, self.restart_at = now, None
        logger.info("%s started (pid %d), log %s", self.name, self.proc.pid, self.log)

    def tick(self, now: float) -> bool:
        """Notice an exit, or start again when due; True when something changed."""
        if self.proc is not None:
            status = self.proc.poll()
            if status is None:
                return False
            lived = now - self.started
            delay = self.delays.after_exit(lived)
            logger.warning(
                "%s (pid %d) exited unexpectedly with %s after %.1f s; starting it again in "
                "%.0f s (restart %d); log %s",
                self.name, self.proc.pid, describe_exit(status), lived, delay,
                self.restarts + 1, self.log,
            )  # fmt: skip
            self.proc, self.last_exit, self.restart_at = None, status, now + delay
            return True
        if self.restart_at is not None and now >= self.restart_at:
            self.restarts += 1
            self.start(now)
            return True
        return False

    def state(self, now: float) -> str:
        if self.proc is not None:
            from ..status.snapshot import fmt_age

            return f"running, pid {self.proc.pid}, up {fmt_age(now - self.started)}"
        if self.restart_at is not None:
            last = describe_exit(self.last_exit) if self.last_exit is not None else "exited"
            return f"{last}; restarting in {max(0.0, self.restart_at - now):.0f} s"
        return "stopped"

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, up to ``timeout`` s (its stop budget), then SIGKILL; the exit status
        (None: not running)."""
        self.restart_at = None
        if self.proc is None:
            return None
        status = _terminate(self.proc, self.stop_budget_s if timeout is None else timeout)
        if status == -signal.SIGTERM:
            # Both children handle SIGTERM from their first lines on (before any connection):
            # dying of it means ours came before that, when nothing was received or held yet.
            logger.info("%s stopped before it was up", self.name)
            status = 0
        self.last_exit = status
        return status
