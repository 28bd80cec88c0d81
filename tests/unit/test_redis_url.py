"""``common.redis_url``: one reading of ``redis.url`` for the producer's raw connection and for
redis-py, and a ConfigError at start for a URL that has no one meaning."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis
import trustme

from common.config import hide_password, settings_from_mapping
from common.errors import ConfigError
from common.redis_url import RedisOptions, TlsOptions, redis_client, redis_options
from producer.wire import RedisWire

ACCEPTED = [
    "redis://127.0.0.1:6379/0",
    "redis://localhost",
    "redis://:secret@host:6380/3",
    "redis://tv:p%40ss@host/1",
    "redis://tv@host/1",  # a user without a password: AUTH tv "" (redis-py's choice)
    "redis://host/3?db=5",  # the query wins (redis-py's rule)
    "redis://host?username=tv&password=pw&db=2",
    "unix:///run/redis.sock",
    "unix:///run/redis.sock?db=2&password=secret",
    "unix://tv:pw@/run/redis.sock?db=7",
    "rediss://host:6380/0",
    "rediss://:pw@host/4?ssl_ca_certs=/etc/ca.pem",
    "rediss://host?ssl_cert_reqs=none",
    "rediss://host?ssl_cert_reqs=optional&ssl_check_hostname=false&ssl_ca_path=/etc/cas",
    "rediss://host?ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_password=kp",
]


def _reading(conn: Any) -> dict[str, Any]:
    """What a redis-py connection (not connected) would connect with."""
    out = {"db": conn.db, "username": conn.username, "password": conn.password}
    if isinstance(conn, redis.UnixDomainSocketConnection):
        return {**out, "path": conn.path}
    out.update(host=conn.host, port=conn.port)
    if isinstance(conn, redis.SSLConnection):
        out.update(
            cert_reqs=conn.cert_reqs,
            ca_certs=conn.ca_certs,
            ca_path=conn.ca_path,
            check_hostname=conn.check_hostname,
            certfile=conn.certfile,
            keyfile=conn.keyfile,
            key_password=conn.certificate_password,
        )
    return out


def _our_reading(options: RedisOptions) -> dict[str, Any]:
    out = {"db": options.db, "username": options.username, "password": options.password}
    if options.path is not None:
        return {**out, "path": options.path}
    out.update(host=options.host, port=options.port)
    tls = options.tls
    if tls is not None:
        out.update(
            cert_reqs=tls.cert_reqs,
            ca_certs=tls.ca_certs,
            ca_path=tls.ca_path,
            check_hostname=tls.check_hostname and tls.cert_reqs != ssl.CERT_NONE,
            certfile=tls.certfile,
            keyfile=tls.keyfile,
            key_password=tls.key_password,
        )
    return out


@pytest.mark.parametrize("url", ACCEPTED)
def test_every_part_means_what_it_means_to_redis_py(url: str) -> None:
    theirs = redis.ConnectionPool.from_url(url).make_connection()  # Redis.from_url's
    assert _our_reading(redis_options(url)) == _reading(theirs)
    client = redis_client(url)
    ours = client.connection_pool.make_connection()
    assert isinstance(ours, type(theirs))
    assert _reading(ours) == _reading(theirs)
    client.close()


def _commands(wire: RedisWire) -> list[list[bytes]]:
    reader = hiredis.Reader()
    reader.feed(wire._setup)
    out = []
    while (command := reader.gets()) is not False:
        out.append(command)
    return out


@pytest.mark.parametrize(
    ("url", "setup"),
    [
        ("redis://h", [[b"PING"]]),
        ("redis://h/0", [[b"PING"]]),
        ("redis://:secret@h/3", [[b"AUTH", b"secret"], [b"SELECT", b"3"], [b"PING"]]),
        ("redis://tv:p%40ss@h/1", [[b"AUTH", b"tv", b"p@ss"], [b"SELECT", b"1"], [b"PING"]]),
        ("redis://tv@h", [[b"AUTH", b"tv", b""], [b"PING"]]),
        (
            "unix:///run/redis.sock?db=2&password=secret",
            [[b"AUTH", b"secret"], [b"SELECT", b"2"], [b"PING"]],
        ),
        ("redis://h/3?db=5", [[b"SELECT", b"5"], [b"PING"]]),
    ],
)
def test_the_raw_connection_authenticates_and_selects_as_redis_py_does(
    url: str, setup: list[list[bytes]]
) -> None:
    assert _commands(RedisWire(url)) == setup


def test_the_options_hide_the_passwords() -> None:
    options = redis_options("rediss://tv:hunter2@h/1?ssl_certfile=/c&ssl_password=keypass")
    assert "hunter2" not in repr(options) and "keypass" not in repr(options)
    assert options.where() == "h:6379 db 1 (TLS)"
    assert redis_options("unix:///s.sock?db=2&password=x").where() == "unix:/s.sock db 2"
    assert hide_password("unix:///s.sock?db=2&password=hunter2&x=1") == (
        "unix:///s.sock?db=2&password=***&x=1"
    )
    assert hide_password("redis://tv:hunter2@h/0") == "redis://tv:***@h/0"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h", "scheme 'http'"),
        ("localhost:6379", "not a Redis URL"),
        ("REDIS://h", "scheme 'REDIS'"),
        ("redis://h:port/0", "redis-py cannot read it"),
        ("redis://h?db=two", "redis-py cannot read it"),
        ("redis://h/tickvault", "not a database number"),  # redis-py: quietly database 0
        ("redis://h?db=-1", "negative"),
        ("redis://h/0?socket_timeout=1", "'socket_timeout' not supported"),
        ("redis://h/0?protocol=3", "'protocol' not supported"),
        ("redis://h/0?ssl_ca_certs=/ca.pem", "with rediss:// only"),
        ("unix:///s.sock?ssl_cert_reqs=none", "with rediss:// only"),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs='maybe'"),
        ("rediss://h?ssl_keyfile=/k.pem", "ssl_keyfile without ssl_certfile"),
        ("unix://", "without a socket path"),
    ],
)
def test_a_url_without_one_meaning_is_a_config_error(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        redis_options(url)
    assert info.value.key == "redis.url"
    assert says in str(info.value)
    assert info.value.fix
    with pytest.raises(ConfigError, match=r"redis\.url"):
        settings_from_mapping({"redis": {"url": url}}, env={})
    with pytest.raises(ConfigError, match=r"redis\.url"):
        RedisWire(url)
    with pytest.raises(ConfigError, match=r"redis\.url"):
        redis_client(url)


def test_a_config_error_never_shows_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"redis": {"url": "redis://tv:hunter2@h:port/0"}}, env={})
    assert "hunter2" not in str(info.value)


def test_a_tls_file_that_does_not_load_is_a_config_error_at_start(tmp_path: Path) -> None:
    url = f"rediss://h/0?ssl_ca_certs={tmp_path / 'missing.pem'}"
    with pytest.raises(ConfigError, match="a TLS file does not load"):
        settings_from_mapping({"redis": {"url": url}}, env={})
    with pytest.raises(ConfigError, match="a TLS file does not load"):
        RedisWire(url)


def _context_redis_py_builds(url: str, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """The context redis-py's SSLConnection wraps its socket with (caught at the wrap)."""
    seen: list[ssl.SSLContext] = []

    def wrap_socket(self: ssl.SSLContext, sock: object, **kwargs: object) -> None:
        seen.append(self)
        raise ssl.SSLError("caught")

    conn: Any = redis.ConnectionPool.from_url(url).make_connection()
    with monkeypatch.context() as patch:
        patch.setattr(ssl.SSLContext, "wrap_socket", wrap_socket)
        with pytest.raises(ssl.SSLError, match="caught"):
            conn._wrap_socket_with_ssl(None)
    return seen[0]


@pytest.mark.parametrize(
    "query",
    [
        "ssl_ca_certs={ca}",
        "ssl_ca_certs={ca}&ssl_certfile={cert}&ssl_keyfile={key}",
        "ssl_ca_certs={ca}&ssl_check_hostname=false",
        "ssl_ca_certs={ca}&ssl_cert_reqs=optional",
        "ssl_cert_reqs=none",
        "",
    ],
)
def test_the_tls_context_is_the_one_redis_py_builds(
    query: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = ca.issue_cert("client.example")
    client.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    url = "rediss://127.0.0.1:6380/0?" + query.format(
        ca=tmp_path / "ca.pem", cert=tmp_path / "cert.pem", key=tmp_path / "key.pem"
    )
    ours = redis_options(url).ssl_context()
    theirs = _context_redis_py_builds(url, monkeypatch)
    assert ours is not None
    assert ours.verify_mode == theirs.verify_mode
    assert ours.check_hostname == theirs.check_hostname
    assert ours.verify_flags == theirs.verify_flags
    assert ours.minimum_version == theirs.minimum_version
    assert ours.get_ca_certs() == theirs.get_ca_certs()
    assert ours.cert_store_stats() == theirs.cert_store_stats()


def test_tls_defaults_are_redis_pys() -> None:
    options = redis_options("rediss://h")
    assert options.tls == TlsOptions()
    assert options.tls.cert_reqs == ssl.CERT_REQUIRED and options.tls.check_hostname
    assert options.port == 6379 and options.host == "h"
