"""Process plumbing for the benchmark: spawn tickvault commands, read their CPU and memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    cpu_marks: list[tuple[float, float]] = field(default_factory=list)

    def mark(self) -> None:
        """Record (wall, cpu) now; CPU % between marks comes from these."""
        if self.popen.poll() is None:
            self.cpu_marks.append((time.monotonic(), cpu_seconds(self.popen.pid)))

    def cpu_percent(self) -> float:
        if len(self.cpu_marks) < 2:
            return 0.0
        (w0, c0), (w1, c1) = self.cpu_marks[0], self.cpu_marks[-1]
        return 100.0 * (c1 - c0) / max(1e-9, w1 - w0)

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.popen.pid) if self.popen.poll() is None else 0.0

    def stop(self, timeout: float = 60) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(10)


def spawn(name: str, args: list[str], work: Path, config: Path | None = None) -> Proc:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TICKVAULT_LOG_LEVEL="WARNING")
    if config is not None:
        env["TICKVAULT_CONFIG"] = str(config)
    log = work / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "common.cli", *args],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    return Proc(name, popen, log)
