"""The run's directory: one run at a time (``run.lock``), and what a killed run left running
(recognised by the exact command lines ``run.json`` recorded)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import IO

from ..errors import ConfigError

logger = logging.getLogger("tickvault.run")


def cmdline_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return None  # gone, or no /proc (macOS): leftovers are not recognised there


def lock_dir(state: Path) -> IO[str]:
    """Hold ``<dir>/run.lock`` for this run, or raise ConfigError naming the run holding it."""
    state.mkdir(parents=True, exist_ok=True)
    fh = open(state / "run.lock", "a+")  # held open for the whole run
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise ConfigError(
            "--dir",
            f"another tickvault run (pid {holder}) is using {state}",
            "stop it first, or give another --dir",
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def stop_leftovers(state: Path) -> None:
    """Stop what a killed run left running (its children, its servers), recognised by the
    exact command line recorded in ``<dir>/run.json``: a reused pid is never signalled."""
    try:
        old = json.loads((state / "run.json").read_text())
    except (OSError, ValueError):
        return
    entries = old.get("processes", [])
    # The children and the keeper first (a keeper whose run was killed is stopping its servers
    # itself: waited for, never signalled); then servers still up (their keeper killed too): a
    # second signal would cut Redis' shutdown short.
    for phase in (0, 1):
        waiting: list[tuple[int, str, float]] = []  # pid, command line, deadline
        for entry in entries:
            pid, cmdline, sig = entry.get("pid"), entry.get("cmdline"), entry.get("signal", 0)
            if entry.get("phase", 0) != phase or not pid or cmdline_of(pid) != cmdline:
                continue
            what = f"stopping it with {signal.Signals(sig).name}" if sig else "waiting for it"
            logger.warning(
                "a killed run left %s (pid %d) running: %s", entry.get("name"), pid, what
            )
            if sig:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            waiting.append((pid, cmdline, time.monotonic() + float(entry.get("budget_s", 30))))
        while waiting:  # all at once: one wait, not one after the other
            time.sleep(0.1)
            now = time.monotonic()
            for pid, cmdline, deadline in list(waiting):
                if cmdline_of(pid) != cmdline:
                    waiting.remove((pid, cmdline, deadline))
                elif now >= deadline:
                    logger.warning("pid %d did not stop in time: SIGKILL", pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    waiting.remove((pid, cmdline, deadline))
