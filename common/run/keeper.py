"""The embedded servers, kept by a process of their own (``python -m common.run.keeper``):
started in its session, stopped when ``run``'s pipe closes."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ExitStatus
from ..logs import setup_logging
from .directory import cmdline_of

logger = logging.getLogger("tickvault.run")


class ServersDown(RuntimeError):
    """An embedded server did not start: ``status`` is the exit status to use (3 or 4)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Keeper:
    """The keeper process of the embedded servers (see :func:`_keeper_main`)."""

    proc: subprocess.Popen[bytes]
    servers: dict[str, dict[str, Any]]  # name -> {"url", "pid", "cmdline"}
    cmdline: str

    @classmethod
    def start(cls, names: Sequence[str], data: Path, log: Path) -> Keeper:
        argv = [sys.executable, "-m", "common.run.keeper", f"--dir={data}", *names]
        with open(log, "ab") as err:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                start_new_session=True,  # a terminal's Ctrl-C reaches run, which stops it last
            )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks while they start (servers.py bounds it)
        answer = json.loads(line) if line.strip() else {}
        if "error" in answer or not answer:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=90)  # it stops what did start
            which = answer.get("server", "postgres" if "postgres" in names else "redis")
            status = ExitStatus.REDIS if which == "redis" else ExitStatus.POSTGRES
            what = "Redis-protocol server" if which == "redis" else "PostgreSQL"
            problem = answer.get("error") or f"its keeper exited with {proc.returncode}"
            raise ServersDown(
                status,
                f"cannot start the embedded {what}: {problem}; see {data / which}/server.log "
                f"and {log}",
            )
        return cls(proc, answer, "\0".join(argv) + "\0")

    def url(self, name: str) -> str:
        return str(self.servers[name]["url"])

    def stop(self) -> dict[str, int | None]:
        """Close the keeper's stdin: it stops PostgreSQL (fast), then Redis (SIGTERM, AOF
        flushed), and answers their exit statuses."""
        try:
            out, _ = self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return dict.fromkeys(self.servers)
        for line in out.splitlines():
            with contextlib.suppress(ValueError):
                answer = json.loads(line)
                if "stopped" in answer:  # in the order they stopped
                    return {
                        **answer["stopped"],
                        **{k: None for k in self.servers if k not in answer["stopped"]},
                    }
        return dict.fromkeys(self.servers)


class _StopRequested(Exception):
    pass


def _keeper_main(argv: list[str]) -> int:
    """``python -m common.run.keeper --dir=D redis postgres``: start the named servers under
    ``D`` in this process' session, answer ``{"redis": {"url", "pid", "cmdline"}, ...}`` on one
    line, wait for stdin to close (run stopping, or run killed), stop them, answer
    ``{"stopped": {"postgres": status, "redis": status}}``."""
    from ..servers import PostgresServer, RedisServer

    parser = argparse.ArgumentParser(prog="python -m common.run.keeper")
    parser.add_argument("--dir", required=True)
    parser.add_argument("servers", nargs="+", choices=["redis", "postgres"])
    args = parser.parse_args(argv)
    setup_logging()
    base = Path(args.dir)

    def request_stop(*_: object) -> None:
        raise _StopRequested

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, request_stop)
    servers: dict[str, RedisServer | PostgresServer] = {}
    if "redis" in args.servers:
        servers["redis"] = RedisServer(base / "redis")
    if "postgres" in args.servers:
        servers["postgres"] = PostgresServer(base / "postgres", durable=True)
    statuses: dict[str, int | None] = {}
    try:
        current = ""
        try:
            for name, server in servers.items():
                current = name
                server.start()
        except _StopRequested:
            raise
        except Exception as exc:  # ServerError, initdb, a port taken: say which, then stop
            logger.exception("the embedded %s did not start", current)
            _answer({"error": str(exc).strip(), "server": current})
            return 1
        _answer(
            {
                name: {"url": s.url, "pid": s.proc.pid, "cmdline": cmdline_of(s.proc.pid)}
                for name, s in servers.items()
                if s.proc is not None
            }
        )
        sys.stdin.buffer.read()  # until EOF
    except _StopRequested:
        logger.info("keeper: stop requested by a signal")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a stop in progress is not interrupted
        for name in ("postgres", "redis"):
            started = servers.get(name)
            if started is not None and started.proc is not None:
                started.stop()
                statuses[name] = started.proc.returncode
                logger.info("keeper: %s stopped with %s", name, statuses[name])
        _answer({"stopped": statuses})
    return 0 if all(s == 0 for s in statuses.values()) else 1


def _answer(message: Mapping[str, Any]) -> None:
    with contextlib.suppress(BrokenPipeError, ValueError):  # run is gone: nobody to tell
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(_keeper_main(sys.argv[1:]))
