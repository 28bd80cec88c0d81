"""``tickvault run`` / ``make run``: the collector on this machine, against the real venues.

Starts an embedded Redis-protocol server (AOF ``everysec``) and a durable PostgreSQL under
``<dir>/data/`` (unless their URLs are given: ``TICKVAULT_REDIS_URL`` / ``TICKVAULT_DATABASE_URL``,
or ``redis.url`` / ``database.url`` written in the config file), then the producer and one
consumer as supervised child processes, and shows a live table until Ctrl-C or SIGTERM.

Invariants:

- Data is never deleted: the servers' directories are kept across runs (unlike the demo's).
- One run per directory (``<dir>/run.lock``); ``<dir>/run.json`` says what runs (the URLs, the
  children's pids and restarts) and lets the next start stop what a killed run left behind.
- A child that dies unexpectedly is started again after 1, 2, 4 ... 60 s (reset once a child
  lived 60 s); its exit status is logged.
- A stop drains in order, nothing lost: the producer (SIGTERM, its stop budget + 5 s), the
  consumer once the group has no lag and nothing pending (at most 30 s; what is left stays
  pending in Redis' AOF for the next run), then the servers (PostgreSQL fast shutdown, Redis
  SIGTERM, which flushes its AOF). Exit 0 only if every process stopped cleanly.
- The servers run in a session of their own under a small keeper process (``python -m
  common.run --keeper``): a terminal's Ctrl-C reaches ``run`` alone, which stops them last, and
  if ``run`` itself is killed the keeper sees its pipe close and stops them cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import fcntl
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .config import Settings, hide_password, load_settings
from .demo import Stop, _spawn, _terminate
from .errors import ConfigError, ExitStatus, backoff
from .logs import setup_logging

if TYPE_CHECKING:
    from rich.console import RenderableType

    from .redis_url import RedisClient
    from .status.snapshot import Problem, Snapshot

logger = logging.getLogger("tickvault.run")

DEFAULT_CONFIG = """\
# tickvault run: a few liquid markets on the venues' public endpoints.
# Written on the first run; used as it is from then on: edit it freely (README: Configuration
# reference). Without [redis] / [database] url, run starts its own servers under this directory.

[[feeds]]
exchange = "binance"
channels = ["trades", "quotes"]
symbols = ["BTC-USDT", "ETH-USDT"]

[[feeds]]
exchange = "upbit"
channels = ["trades", "quotes"]
symbols = ["BTC-KRW"]
"""

RESTART_INITIAL_S = 1.0
RESTART_CAP_S = 60.0
RESTART_RESET_S = 60.0  # a child that lived this long restarts after RESTART_INITIAL_S again
DRAIN_S = 30.0  # how long the consumer may take to empty the group at a stop
TICK_S = 0.2
TABLE_EVERY_S = 2.0  # as tickvault status --watch: a sample counts the last hour's trades
LINE_EVERY_S = 10.0
_ENV_DROPPED = ("TICKVAULT_CONFIG", "TICKVAULT_REDIS_URL", "TICKVAULT_DATABASE_URL")


# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What a run uses: the config's source, the URLs given (None: start the embedded server)."""

    source: Path
    data: dict[str, Any]  # the source file, parsed
    redis_url: str | None
    database_url: str | None


def config_source(config: str | None, state: Path, env: Mapping[str, str]) -> Path:
    """``--config``, else ``TICKVAULT_CONFIG``, else ``<dir>/tickvault.toml``, written with
    :data:`DEFAULT_CONFIG` when absent (never overwritten: the user may have edited it)."""
    given = config or env.get("TICKVAULT_CONFIG")
    if given:
        return Path(given)
    path = state / "tickvault.toml"
    if not path.exists():
        state.mkdir(parents=True, exist_ok=True)
        path.write_text(DEFAULT_CONFIG)
        logger.info("wrote the default config %s (edit it to change markets)", path)
    return path


def plan(source: Path, env: Mapping[str, str]) -> Plan:
    """Check ``source`` (a ConfigError names the key and the fix) and say which URLs it gives.

    A URL counts as given when the environment sets it or the file has the key itself (even
    with the default value): defaults filled in by the settings never count.
    """
    settings = load_settings(source, env)  # every check the children would make, now
    if not settings.feeds:
        raise ConfigError("feeds", "no feed configured", "add a [[feeds]] table")
    with open(source, "rb") as fh:
        data = tomllib.load(fh)

    def given(section: str, variable: str, url: str) -> str | None:
        table = data.get(section)
        explicit = env.get(variable) or (isinstance(table, dict) and "url" in table)
        return url if explicit else None

    return Plan(
        source=source,
        data=data,
        redis_url=given("redis", "TICKVAULT_REDIS_URL", settings.redis.url),
        database_url=given("database", "TICKVAULT_DATABASE_URL", settings.database.url),
    )


def children_config(
    data: Mapping[str, Any], *, redis_url: str, database_url: str, state: Path
) -> dict[str, Any]:
    """The children's config: the source's keys, the URLs in use, and run's own defaults for a
    spill directory and consumer name the file does not set (stable across restarts: a
    restarted consumer re-reads its own pending entries, a restarted producer its spill)."""
    out = copy.deepcopy(dict(data))
    out.setdefault("redis", {})["url"] = redis_url
    out.setdefault("database", {})["url"] = database_url
    out.setdefault("producer", {}).setdefault("spill_dir", str(state / "data" / "spill"))
    out.setdefault("consumer", {}).setdefault("name", f"{socket.gethostname()}-run")
    return out


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # inf, -inf and nan read back as TOML's own
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's escapes are TOML's basic ones
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_toml(data: Mapping[str, Any]) -> str:
    """``data`` as TOML that ``tomllib`` reads back equal: tables as ``[name]``, lists of tables
    as ``[[name]]``, deeper tables inline."""

    def is_tables(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines = [
        f"{_toml_key(k)} = {_toml_value(v)}"
        for k, v in data.items()
        if not isinstance(v, dict) and not is_tables(v)
    ]
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"\n[{_toml_key(key)}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
        elif is_tables(value):
            for item in value:
                lines.append(f"\n[[{_toml_key(key)}]]")
                lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` atomically, readable by its owner only (it may hold passwords)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


# -- supervision (pure: "now" comes in) -------------------------------------------------------


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
            from .status.snapshot import fmt_age

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


# -- the embedded servers, kept by a process of their own ---------------------------------------


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
        argv = [sys.executable, "-m", "common.run", "--keeper", f"--dir={data}", *names]
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
    """``python -m common.run --keeper --dir=D redis postgres``: start the named servers under
    ``D`` in this process' session, answer ``{"redis": {"url", "pid", "cmdline"}, ...}`` on one
    line, wait for stdin to close (run stopping, or run killed), stop them, answer
    ``{"stopped": {"postgres": status, "redis": status}}``."""
    from .servers import PostgresServer, RedisServer

    parser = argparse.ArgumentParser(prog="tickvault run --keeper")
    parser.add_argument("--keeper", action="store_true")
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
                name: {"url": s.url, "pid": s.proc.pid, "cmdline": _cmdline(s.proc.pid)}
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


# -- the directory: lock, state file, leftovers of a killed run -----------------------------


def _cmdline(pid: int) -> str | None:
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
            if entry.get("phase", 0) != phase or not pid or _cmdline(pid) != cmdline:
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
                if _cmdline(pid) != cmdline:
                    waiting.remove((pid, cmdline, deadline))
                elif now >= deadline:
                    logger.warning("pid %d did not stop in time: SIGKILL", pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    waiting.remove((pid, cmdline, deadline))


# -- the view: tickvault status's snapshot, and the children ----------------------------------


class Watcher:
    """What ``tickvault status`` shows (``common.status``: streams, groups, feeds, trades per
    symbol, dead letters, gaps, problems), gathered for the view, and the group's backlog for
    the stop. Never raises for a server that is away: status records it as a problem."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.previous: Snapshot | None = None  # the last one: status reports growing lags
        self._client: RedisClient | None = None

    def connect(self) -> RedisClient:
        from .redis_url import stream_client

        if self._client is None:
            url = self.settings.redis.url
            self._client = stream_client(url, socket_timeout=5, socket_connect_timeout=3)
        return self._client

    def sample(self) -> tuple[Snapshot, list[Problem]]:
        """(status snapshot, its problems)."""
        from .status.gather import gather
        from .status.problems import find_problems

        snap = gather(self.settings, self.connect)
        problems = find_problems(snap, self.previous)
        self.previous = snap
        return snap, problems

    def drained(self) -> bool | None:
        """Whether the group has been delivered every entry of every stream (its last
        delivered id is the stream's last id) and has acked them all; None: Redis did not
        answer."""
        from .envelope import raw_key
        from .status.gather import REDIS_FAILURES

        def text(value: Any) -> str:
            return value.decode() if isinstance(value, bytes) else str(value)

        try:
            client = self.connect()
            for exchange in self.settings.exchanges:
                key = raw_key(exchange)
                if not client.exists(key):
                    continue
                last: Any = client.xinfo_stream(key)["last-generated-id"]
                groups: Any = client.xinfo_groups(key)
                mine = [g for g in groups if text(g["name"]) == self.settings.consumer.group]
                if not mine or int(mine[0]["pending"]):
                    return False
                if text(mine[0]["last-delivered-id"]) != text(last):
                    return False
        except REDIS_FAILURES as exc:
            logger.warning("cannot read the group's backlog: %s", exc)
            return None
        return True

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None


def _children_text(children: Sequence[Child], now: float) -> str:
    return ", ".join(
        f"{c.name} {c.state(now)} ({c.restarts} restart{'' if c.restarts == 1 else 's'})"
        for c in children
    )


def status_line(
    snap: Snapshot, problems: Sequence[Problem], children: Sequence[Child], group: str, now: float,
    uptime_s: float,
) -> str:  # fmt: skip
    """One line for ``--no-table``: trades in the last minute over the configured symbols, the
    newest one's age, the group's backlog, the children, the problems ``tickvault status``
    finds."""
    from .status.snapshot import fmt_age

    trades = sum(s.rows_1m for s in snap.symbols)
    ages = [s.newest_age_s for s in snap.symbols if s.newest_age_s is not None]
    groups = [g for st in snap.streams for g in st.groups if g.name == group]
    lags = [g.lag_entries for g in groups]
    lag = "?" if None in lags else str(sum(x or 0 for x in lags))
    behind = fmt_age(max((g.behind_s for g in groups), default=0.0))
    pending = sum(g.pending for g in groups)
    newest = f"newest {fmt_age(min(ages))} old" if ages else "none in the last hour"
    line = (
        f"run {fmt_age(uptime_s)}: {trades} trades in the last minute ({newest}), lag {lag} "
        f"entries ({behind} behind), {pending} pending; {_children_text(children, now)}"
    )
    if problems:
        line += f"; {len(problems)} problem(s): " + "; ".join(
            f"{p.subject}: {p.text}" for p in problems
        )
    return line


def status_view(
    snap: Snapshot, problems: Sequence[Problem], children: Sequence[Child], now: float
) -> RenderableType:
    """The live view: ``tickvault status``'s, then the children."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from .status.view import render

    procs = Table(title="processes", title_justify="left", title_style="bold", box=None)
    procs.add_column("process")
    procs.add_column("state")
    procs.add_column("restarts", justify="right")
    for c in children:
        procs.add_row(c.name, Text(c.state(now), style="" if c.proc else "red"), str(c.restarts))
    hint = "Ctrl-C stops cleanly: the producer, the consumer once drained, then the servers"
    return Group(render(snap, problems), Text(), procs, Text(hint, style="dim"))


# -- the run ----------------------------------------------------------------------------------


def _check_given(redis_url: str | None, database_url: str | None) -> None:
    """Servers given by URL must answer now: their errors propagate (cli: status 4 / 3)."""
    if redis_url:
        from .redis_url import redis_client

        client = redis_client(redis_url, socket_connect_timeout=5, socket_timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    if database_url:
        import psycopg

        psycopg.connect(database_url, connect_timeout=5).close()


class RunState:
    """``<dir>/run.json``: the URLs, the processes (pid, command line, how to stop one left
    behind), the children's restarts; rewritten at each change."""

    def __init__(self, path: Path, base: dict[str, Any]) -> None:
        self.path, self.base = path, base

    def write(
        self, children: Sequence[Child], keeper: Keeper | None, *, stopped: bool = False
    ) -> None:
        processes: list[dict[str, Any]] = []
        kids: dict[str, Any] = {}
        for c in children:
            pid = c.proc.pid if c.proc is not None else None
            kids[c.name] = {"pid": pid, "restarts": c.restarts, "last_exit": c.last_exit}
            if pid is not None:
                # A consumer left behind is given 5 s: killed, it loses nothing (what it did not
                # commit stays pending), and without its servers it would wait its whole budget.
                budget = 5.0 if c.name == "consumer" else c.stop_budget_s
                processes.append(
                    {"name": c.name, "pid": pid, "cmdline": c.cmdline,
                     "signal": int(signal.SIGTERM), "budget_s": budget}
                )  # fmt: skip
        servers: dict[str, Any] = {}
        if keeper is not None:
            servers["keeper"] = keeper.proc.pid
            processes.append(
                {"name": "keeper", "pid": keeper.proc.pid, "cmdline": keeper.cmdline,
                 "signal": 0, "budget_s": 90}
            )  # fmt: skip
            stop_with = {"postgres": signal.SIGINT, "redis": signal.SIGTERM}
            for name, info in keeper.servers.items():
                servers[name] = info["pid"]
                processes.append(
                    {"name": name, "pid": info["pid"], "cmdline": info.get("cmdline"),
                     "signal": int(stop_with[name]), "budget_s": 60, "phase": 1}
                )  # fmt: skip
        state = {
            **self.base, "pid": os.getpid(), "stopped": stopped, "children": kids,
            "servers": servers, "processes": [] if stopped else processes,
        }  # fmt: skip
        _write_private(self.path, json.dumps(state, indent=2) + "\n")


def _drain(watcher: Watcher, consumer: Child, budget_s: float) -> bool:
    """Wait, at most ``budget_s``, until the group has read and acked every entry."""
    deadline = time.monotonic() + budget_s
    while not (drained := watcher.drained()):
        if drained is None:
            return False  # Redis is away: nothing can be acked now; the rest stays pending
        if consumer.proc is None or consumer.proc.poll() is not None:
            logger.warning("the consumer is not running: what it did not ack stays pending")
            return False
        if time.monotonic() >= deadline:
            logger.warning(
                "the consumer did not drain in %.0f s: what it has not acked stays pending in "
                "Redis for the next run (nothing is lost)", budget_s,
            )  # fmt: skip
            return False
        time.sleep(TICK_S)
    return True


def _stop_all(
    producer: Child, consumer: Child, keeper: Keeper | None, watcher: Watcher
) -> list[str]:
    """Stop in order; the list of what did not stop cleanly (empty: all did)."""
    bad: list[str] = []
    logger.info("stopping the producer (SIGTERM, up to %.0f s)", producer.stop_budget_s)
    status = producer.stop()
    logger.info("producer stopped: %s", "not running" if status is None else describe_exit(status))
    if status:
        bad.append(f"producer {describe_exit(status)}")
    logger.info("waiting for the consumer to drain the stream (up to %.0f s)", DRAIN_S)
    if _drain(watcher, consumer, DRAIN_S):
        logger.info("the group has read and acked every entry")
    status = consumer.stop()
    logger.info("consumer stopped: %s", "not running" if status is None else describe_exit(status))
    if status:
        bad.append(f"consumer {describe_exit(status)}")
    watcher.close()
    if keeper is not None:
        logger.info("stopping the embedded servers (PostgreSQL fast shutdown, Redis SIGTERM)")
        for name, code in keeper.stop().items():
            logger.info("%s stopped: %s", name, "unknown" if code is None else describe_exit(code))
            if code != 0:
                bad.append(f"{name} {'unknown' if code is None else describe_exit(code)}")
    return bad


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tickvault run",
        description="Embedded Redis and PostgreSQL (kept in --dir), the producer and a consumer "
        "as supervised processes, against the real venues of the config; a live table.",
    )
    parser.add_argument(
        "--config",
        help="TOML config (default: $TICKVAULT_CONFIG, else <dir>/tickvault.toml, written with "
        "a few liquid markets if absent)",
    )
    parser.add_argument("--dir", default=".tickvault", help="state directory (default .tickvault)")
    parser.add_argument(
        "--no-table", action="store_true", help="a status line every 10 s instead of the table"
    )
    args = parser.parse_args(argv)
    setup_logging()
    stop = Stop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop.set)
    state = Path(args.dir).resolve()
    env = os.environ
    the_plan = plan(config_source(args.config, state, env), env)  # ConfigError: exit 2
    lock = lock_dir(state)
    try:
        return _run(the_plan, state, stop, table=not args.no_table)
    except ServersDown as exc:
        print(f"tickvault run: {exc}", file=sys.stderr)
        return exc.status
    finally:
        lock.close()


def _run(the_plan: Plan, state: Path, stop: Stop, *, table: bool) -> int:
    stop_leftovers(state)
    _check_given(the_plan.redis_url, the_plan.database_url)  # unreachable: propagates
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    embedded = [n for n, url in (("redis", the_plan.redis_url),
                                 ("postgres", the_plan.database_url)) if not url]  # fmt: skip
    keeper = None
    if embedded:
        print(f"starting embedded {' and '.join(embedded)} under {state / 'data'} ...", flush=True)
        keeper = Keeper.start(embedded, state / "data", logs / "servers.log")
    children: list[Child] = []
    run_state = RunState(state / "run.json", {})
    try:
        redis_url = the_plan.redis_url or (keeper.url("redis") if keeper else "")
        database_url = the_plan.database_url or (keeper.url("postgres") if keeper else "")
        generated = state / "run.toml"
        config = children_config(
            the_plan.data, redis_url=redis_url, database_url=database_url, state=state
        )
        header = f"# written by tickvault run from {the_plan.source} at each start: edit that\n"
        _write_private(generated, header + dump_toml(config))
        settings = load_settings(generated, {})
        urls = {"redis": redis_url, "postgres": database_url}
        run_state.base = {
            "dir": str(state), "config": str(the_plan.source), "children_config": str(generated),
            "redis": redis_url, "database": database_url,
        }  # fmt: skip
        for name, url in urls.items():
            kind = "embedded" if keeper and name in keeper.servers else "given"
            print(f"{name} {hide_password(url)} ({kind})", flush=True)
        print(f"config {the_plan.source}; logs in {logs}; state in {run_state.path}", flush=True)
        child_env = {k: v for k, v in os.environ.items() if k not in _ENV_DROPPED}
        child_env["PYTHONUNBUFFERED"] = "1"
        consumer = Child("consumer", ["consumer", f"--config={generated}"],
                         logs / "consumer.log", child_env,
                         stop_budget_s=settings.consumer.stop_timeout_s + 5)  # fmt: skip
        producer = Child("producer", ["producer", f"--config={generated}"],
                         logs / "producer.log", child_env,
                         stop_budget_s=settings.producer.stop_timeout_s + 5)  # fmt: skip
        children += [producer, consumer]
        watcher = Watcher(settings)
        if not stop.requested:
            now = time.monotonic()
            consumer.start(now)  # first: it creates the group and the schema
            producer.start(now)
        run_state.write(children, keeper)
        if not stop.requested:
            _watch(children, watcher, stop, run_state, keeper, table=table)
        logger.info("stop requested")
        bad = _stop_all(producer, consumer, keeper, watcher)
        keeper = None
    finally:  # after an error of our own too: leave nothing running, in the same order
        for child in children:
            if child.proc is not None and child.proc.poll() is None:
                child.stop()
        if keeper is not None:
            keeper.stop()
        run_state.write(children, None, stopped=True)
    if bad:
        _say(f"tickvault run: stopped, but not cleanly: {'; '.join(bad)}", sys.stderr)
        return 1
    _say("tickvault run: stopped cleanly")
    return 0


def _say(text: str, stream: IO[str] | None = None) -> None:
    """Print, unless the terminal or pipe is gone (a closed terminal: its SIGHUP stops us; a
    stop in progress must not fail on a write)."""
    with contextlib.suppress(OSError):
        print(text, file=stream or sys.stdout, flush=True)


def _watch(
    children: Sequence[Child],
    watcher: Watcher,
    stop: Stop,
    run_state: RunState,
    keeper: Keeper | None,
    *,
    table: bool,
) -> None:
    """Supervise the children and show the view until a stop is requested."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    live: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if table and console.is_terminal:
        # auto_refresh off: no thread of rich's own; the loop below refreshes it
        live = Live(console=console, auto_refresh=False)
    began = time.monotonic()
    keeper_gone = False
    view_failed_at = -math.inf
    with live as display, _logging_to(sys.stderr if display is not None else None):
        every = TABLE_EVERY_S if display is not None else LINE_EVERY_S
        next_view = began if display is not None else began + every
        while not stop.requested:
            now = time.monotonic()
            if any([c.tick(now) for c in children]):
                run_state.write(children, keeper)
            if keeper is not None and not keeper_gone and keeper.proc.poll() is not None:
                keeper_gone = True
                logger.error("the embedded servers' keeper exited (%s): see logs/servers.log",
                             describe_exit(keeper.proc.returncode))  # fmt: skip
            if now >= next_view:
                try:
                    snap, problems = watcher.sample()
                except Exception:  # the view is not worth stopping the collector for
                    if now >= view_failed_at + 60:  # logged once a minute at most
                        logger.exception("the status view failed; supervising on")
                        view_failed_at = now
                    next_view = now + every
                    continue
                now = time.monotonic()
                if display is not None:
                    display.update(status_view(snap, problems, children, now), refresh=True)
                else:
                    group = watcher.settings.consumer.group
                    line = status_line(snap, problems, children, group, now, now - began)
                    _say(line)
                next_view = now + every
            time.sleep(TICK_S)


@contextlib.contextmanager
def _logging_to(stream: IO[str] | None) -> Iterator[None]:
    """While the live view runs, log lines go through its stderr (printed above the view):
    the handlers hold the stream they were made with, which would draw over it."""
    handlers = [
        h for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream is sys.__stderr__
    ]  # fmt: skip
    if stream is not None:
        for h in handlers:
            h.setStream(stream)
    try:
        yield
    finally:
        if stream is not None:
            for h in handlers:
                h.setStream(sys.__stderr__)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--keeper"]:
        sys.exit(_keeper_main(sys.argv[1:]))
    sys.exit(main(sys.argv[1:]))
