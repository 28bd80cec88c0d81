"""On-CPU time of process trees, exact, from ``/proc/PID/task/TID/schedstat`` (Linux).

The first field of a task's ``schedstat`` is the nanoseconds it has run on a CPU, counted at
every context switch; ``utime``/``stime`` in ``/proc/PID/stat`` are tick samples (4 ms ticks on
this kernel) that over-charge processes woken by timers, which a paced collector is. A tree is a
root PID and its descendants, found again at each sample, so a child started during the window
(a PostgreSQL backend) counts from zero. A thread or process that ends during the window takes
its time with it: the collectors measured here keep theirs to the end.

Parsing is pure (``parse_*``, ``descendants``); ``CpuMeter`` reads ``/proc``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

PROC = Path("/proc")
_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def parse_schedstat(text: str) -> int:
    """Nanoseconds on CPU from one ``schedstat`` line: ``<run ns> <wait ns> <timeslices>``."""
    return int(text.split()[0])


def parse_stat(text: str) -> tuple[int, int]:
    """(parent PID, utime + stime in ticks) from a ``/proc/PID/stat`` line. The command name
    (field 2, in parentheses) may hold spaces and parentheses: split after the last ``)``."""
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3), so field N is fields[N - 3]
    return int(fields[1]), int(fields[11]) + int(fields[12])


def descendants(roots: Iterable[int], parent_of: Mapping[int, int]) -> set[int]:
    """``roots`` and every process below them, given each PID's parent."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_of.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo += children.get(pid, [])
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # the process or thread has just ended
        return None


def parent_map(proc: Path = PROC) -> dict[int, int]:
    """PID -> parent PID of every process now running."""
    out: dict[int, int] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            text = _read(entry / "stat")
            if text is not None:
                out[int(entry.name)] = parse_stat(text)[0]
    return out


def process_cpu_ns(pid: int, proc: Path = PROC) -> int | None:
    """Nanoseconds on CPU of the live threads of ``pid`` (None: it has ended). Without
    ``schedstat`` (a kernel without CONFIG_SCHED_INFO) the tick counts of ``stat`` stand in."""
    try:
        tids = [t.name for t in (proc / str(pid) / "task").iterdir()]
    except OSError:
        return None
    total = 0
    for tid in tids:
        task = proc / str(pid) / "task" / tid
        text = _read(task / "schedstat")
        if text is not None:
            total += parse_schedstat(text)
            continue
        text = _read(task / "stat")
        if text is not None:
            total += parse_stat(text)[1] * _TICK_NS
    return total


def peak_rss_mb(pid: int, proc: Path = PROC) -> float:
    """``VmHWM``, the peak resident set, in MB (0 once the process has ended)."""
    text = _read(proc / str(pid) / "status") or ""
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class CpuMeter:
    """CPU seconds used by named process trees between ``begin()`` and ``end()``."""

    def __init__(self, roots: Mapping[str, Iterable[int]], proc: Path = PROC) -> None:
        self.roots = {name: list(pids) for name, pids in roots.items()}
        self.proc = proc
        self._start: dict[str, dict[int, int]] = {}

    def _sample(self) -> dict[str, dict[int, int]]:
        parents = parent_map(self.proc)
        out: dict[str, dict[int, int]] = {}
        for name, roots in self.roots.items():
            tree = descendants([r for r in roots if r in parents], parents)
            times = {pid: process_cpu_ns(pid, self.proc) for pid in tree}
            out[name] = {pid: ns for pid, ns in times.items() if ns is not None}
        return out

    def begin(self) -> None:
        self._start = self._sample()

    def end(self) -> dict[str, float]:
        now = self._sample()
        return {
            name: sum(ns - self._start.get(name, {}).get(pid, 0) for pid, ns in pids.items()) / 1e9
            for name, pids in now.items()
        }
