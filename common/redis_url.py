"""One reading of ``redis.url`` for every process: redis-py's own parser, checked and typed.

The producer's raw connection (``producer.wire.RedisWire``) and every redis-py client
(:func:`stream_client`: the consumer; :func:`redis_client`: ``tickvault replay``, the demo, the
tools that talk to one server) take their host, port, unix
socket, database, ACL user, password and TLS settings from :func:`redis_options`, which runs
redis-py's ``parse_url``. So ``unix:///run/redis.sock?db=2&password=...`` is database 2 with that
password for both, and ``rediss://`` verifies the server against the same CA in both.

The forms accepted (redis-py's; the query parameters may be combined)::

    redis://[[user]:password@]host[:port][/db]        ?db=N&username=...&password=...
    rediss://...   same, over TLS:                    &ssl_ca_certs=/ca.pem (else the system's)
                                                      &ssl_ca_path=/dir
                                                      &ssl_cert_reqs=required|optional|none
                                                      &ssl_check_hostname=false
                                                      &ssl_certfile=/c.pem&ssl_keyfile=/k.pem
                                                      &ssl_password=... (of the key file)
    unix:///path/to/redis.sock                        ?db=N&username=...&password=...
    redis+cluster://[[user]:password@]host:port[,host:port...][/0]   a Redis Cluster: the nodes
    rediss+cluster://...   same, over TLS              to ask for the slot map (one is enough),
                                                       database 0 only; the same query
                                                       parameters as redis:// / rediss://

A cluster URL (:attr:`RedisOptions.cluster` holds its nodes) makes the producer route each
command to the node serving its key's hash slot (``producer.wire``) and the consumer use
redis-py's ``RedisCluster`` (:func:`stream_client`); :func:`redis_client` refuses it. Every
other part (user, password, TLS) is read from it exactly as from ``redis://`` / ``rediss://``
with its first node as the host.

Invariant: a URL has one meaning or none. Any other query parameter (a timeout, ``protocol=3``,
...) would be read by redis-py and ignored by the raw connection, so it is a
:class:`~common.errors.ConfigError` at start, as is anything redis-py cannot parse, a path that
is not a database number (redis-py would quietly take database 0) and a TLS file that does not
load.

redis-py wraps every ``OSError`` of a connect, a failed certificate check included, in its
``ConnectionError``, which ``common.errors`` must take for an outage. The clients built here
raise the refusals ``classify`` calls fatal (a certificate that does not verify, a socket the
process may not open) as a :class:`~common.errors.FatalError` instead, as the raw connection
does: a wrong CA stops the process with status 4, it is not retried forever.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias
from urllib.parse import parse_qs, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import (
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)

from .errors import ConfigError, fatal_error

__all__ = [
    "RedisClient",
    "RedisOptions",
    "TlsOptions",
    "redis_client",
    "redis_options",
    "stream_client",
]

KEY = "redis.url"
FORMS = (
    "redis://[user:password@]host:6379/0, rediss://host:6379/0?ssl_ca_certs=/ca.pem, "
    "unix:///path/redis.sock?db=0&password=... or redis+cluster://host:7000,host:7001/0"
)
# The cluster forms, and the single-server scheme each one is read as.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

# What the stream processes talk to: one server, or a Redis Cluster (``redis+cluster://``).
# Both have the same command methods; a multi-key command across hash slots is refused by
# RedisCluster (client side) and by the server (CROSSSLOT), so the callers send none.
RedisClient: TypeAlias = "redis.Redis | RedisCluster"

# redis-py's parser (untyped there): what it returns is what ``Redis.from_url`` connects with.
_parse_url: Callable[[str], dict[str, Any]] = parse_url
_cluster_node: Callable[[str, int], ClusterNode] = ClusterNode  # (untyped there too)

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
# Query parameters both connections honour, and (rediss:// only) the TLS ones.
_PARAMS = ("db", "username", "password")
_TLS_PARAMS = (
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_cert_reqs",
    "ssl_check_hostname",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
)


@dataclass(frozen=True, kw_only=True)
class TlsOptions:
    """The TLS settings of a ``rediss://`` URL, with redis-py's defaults (``SSLConnection``)."""

    ca_certs: str | None = None  # None and no ca_path: the system's CAs
    ca_path: str | None = None
    cert_reqs: ssl.VerifyMode = ssl.CERT_REQUIRED
    check_hostname: bool = True  # only where the certificate is verified at all
    certfile: str | None = None  # a client certificate (Redis ``tls-auth-clients``)
    keyfile: str | None = None
    key_password: str | None = field(default=None, repr=False)

    def context(self) -> ssl.SSLContext:
        """The context redis-py's ``SSLConnection._wrap_socket_with_ssl`` builds from the same
        settings, step by step.

        Raises:
            ConfigError: a CA, certificate or key file that does not load.
        """
        context = ssl.create_default_context()
        context.check_hostname = self.check_hostname and self.cert_reqs != ssl.CERT_NONE
        context.verify_mode = self.cert_reqs
        try:
            if self.certfile:  # (a keyfile alone is refused when the URL is read)
                context.load_cert_chain(self.certfile, self.keyfile, self.key_password)
            if self.ca_certs is not None or self.ca_path is not None:
                context.load_verify_locations(cafile=self.ca_certs, capath=self.ca_path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                KEY,
                f"a TLS file does not load: {exc}",
                "check ssl_ca_certs / ssl_ca_path / ssl_certfile / ssl_keyfile: readable PEM",
            ) from None
        return context


@dataclass(frozen=True, kw_only=True)
class RedisOptions:
    """Where and as whom to connect: redis-py's reading of ``redis.url``."""

    host: str = "localhost"  # redis-py's default host and port
    port: int = 6379
    path: str | None = None  # a unix socket (``unix://``): host and port unused
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsOptions | None = None  # ``rediss://``
    # ``redis+cluster://``: the nodes to ask for the cluster's slot map ((host, port), ...);
    # empty for one server. host and port are then the first of them.
    cluster: tuple[tuple[str, int], ...] = ()

    def auth(self) -> tuple[str, ...] | None:
        """AUTH's arguments as redis-py sends them at connect (``on_connect``): with a user or
        a password, ``AUTH [user] password``; else no AUTH at all."""
        if not (self.username or self.password):
            return None
        password = self.password or ""
        return (self.username, password) if self.username else (password,)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for ``rediss://``; None for a plain connection."""
        return self.tls.context() if self.tls is not None else None

    def where(self) -> str:
        """For logs: the socket or host:port, the database, TLS; never the password."""
        tls = " (TLS)" if self.tls else ""
        if self.cluster:
            return "cluster " + ",".join(_address(h, p) for h, p in self.cluster) + tls
        place = f"unix:{self.path}" if self.path is not None else f"{self.host}:{self.port}"
        return f"{place} db {self.db}" + tls

    def connection_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of a redis-py ``ConnectionPool`` for these options."""
        kwargs: dict[str, Any] = {
            "db": self.db,
            "username": self.username,
            "password": self.password,
        }
        if self.path is not None:
            return {**kwargs, "connection_class": _UnixConnection, "path": self.path}
        kwargs.update(host=self.host, port=self.port, connection_class=_TcpConnection)
        if self.tls is not None:
            kwargs.update(
                connection_class=_TlsConnection,
                ssl_ca_certs=self.tls.ca_certs,
                ssl_ca_path=self.tls.ca_path,
                ssl_cert_reqs=self.tls.cert_reqs,
                ssl_check_hostname=self.tls.check_hostname,
                ssl_certfile=self.tls.certfile,
                ssl_keyfile=self.tls.keyfile,
                ssl_password=self.tls.key_password,
            )
        return kwargs


def _scheme(url: str) -> str:
    return url.partition("://")[0] if "://" in url else ""


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def redis_options(url: str) -> RedisOptions:
    """Read ``url`` with redis-py's ``parse_url`` and check that every part of it means the same
    to the producer's raw connection as to redis-py.

    Raises:
        ConfigError: naming the part that is wrong and the fix (the password never shown).
    """
    scheme = _scheme(url)
    if scheme in CLUSTER_SCHEMES:
        return _cluster_options(url, CLUSTER_SCHEMES[scheme])
    if scheme not in ("redis", "rediss", "unix"):
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise ConfigError(KEY, f"{shown}: not a Redis URL", f"use {FORMS}")
    try:
        kwargs = _parse_url(url)
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(KEY, f"redis-py cannot read it: {exc}", f"use {FORMS}") from None
    allowed = _PARAMS + (_TLS_PARAMS if scheme == "rediss" else ())
    unknown = sorted(set(parse_qs(parts.query)) - set(allowed))
    if unknown:
        tls_hint = " (the ssl_ ones with rediss:// only)" if scheme != "rediss" else ""
        raise ConfigError(
            KEY,
            f"query parameter {', '.join(map(repr, unknown))} not supported",
            f"remove it; the parameters both processes read the same: "
            f"{', '.join(_PARAMS + _TLS_PARAMS)}{tls_hint}",
        )
    db = kwargs.get("db", 0)
    if scheme != "unix" and parts.path.strip("/") and "db" not in parse_qs(parts.query):
        if not parts.path.strip("/").isdigit():  # redis-py would quietly use database 0
            raise ConfigError(
                KEY, "the path is not a database number", "end the URL with /0, /1, ..."
            )
    if db < 0:
        raise ConfigError(KEY, f"database {db} is negative", "use a database number >= 0")
    path = kwargs.get("path")
    if scheme == "unix" and not path:
        raise ConfigError(KEY, "a unix:// URL without a socket path", "unix:///path/redis.sock")
    return RedisOptions(
        host=kwargs.get("host", "localhost"),
        port=kwargs.get("port", 6379),
        path=path if scheme == "unix" else None,
        db=db,
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        tls=_tls_options(kwargs) if scheme == "rediss" else None,
    )


def _cluster_options(url: str, single: str) -> RedisOptions:
    """``redis+cluster://[user:password@]h1:p1,h2:p2/0?...``: read as ``<single>://`` with the
    first node as the host (so user, password and TLS mean what they mean there), plus the
    nodes."""
    rest = url.partition("://")[2]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    userinfo, at, hosts = rest[:cut].rpartition("@")
    nodes: list[tuple[str, int]] = []
    for node in hosts.split(","):
        try:
            parts = urlsplit(f"{single}://{node}")
            host, port = parts.hostname, parts.port or 6379
        except ValueError as exc:
            raise ConfigError(
                KEY, f"cluster node {node!r} unreadable: {exc}", "host:port,host:port,..."
            ) from None
        if not node or not host or parts.path or "@" in node:
            raise ConfigError(KEY, f"cluster node {node!r} is not host:port", "host:port,...")
        nodes.append((host, port))
    options = redis_options(f"{single}://{userinfo}{at}{hosts.split(',')[0]}{rest[cut:]}")
    if options.db != 0:
        raise ConfigError(
            KEY, f"database {options.db}: a Redis Cluster has only database 0", "end it with /0"
        )
    return replace(options, host=nodes[0][0], port=nodes[0][1], cluster=tuple(nodes))


def _tls_options(kwargs: dict[str, Any]) -> TlsOptions:
    reqs = kwargs.get("ssl_cert_reqs", "required")
    if reqs not in _CERT_REQS:
        raise ConfigError(
            KEY, f"ssl_cert_reqs={reqs!r}", f"use one of {', '.join(_CERT_REQS)} (default required)"
        )
    if kwargs.get("ssl_keyfile") and not kwargs.get("ssl_certfile"):
        raise ConfigError(KEY, "ssl_keyfile without ssl_certfile", "give both, or neither")
    return TlsOptions(
        ca_certs=kwargs.get("ssl_ca_certs"),
        ca_path=kwargs.get("ssl_ca_path"),
        cert_reqs=_CERT_REQS[reqs],
        check_hostname=bool(kwargs.get("ssl_check_hostname", True)),
        certfile=kwargs.get("ssl_certfile"),
        keyfile=kwargs.get("ssl_keyfile"),
        key_password=kwargs.get("ssl_password"),
    )


def redis_client(url: str, **connection: Any) -> redis.Redis:
    """A redis-py client for ``url`` as :func:`redis_options` reads it, as ``Redis.from_url``
    builds one (a pool of its own, closed with the client); ``connection`` adds settings of the
    code's own (``socket_timeout``, ``health_check_interval``, ...).

    Raises:
        ConfigError: ``url`` is not a URL both processes read the same (see the module doc), or
            is a cluster URL: the callers of this one talk to one server (the stream processes
            use :func:`stream_client`).
    """
    options = redis_options(url)
    if options.cluster:
        raise ConfigError(
            KEY,
            "a Redis Cluster URL, where this command talks to one server",
            "run it with the URL of a single Redis (TICKVAULT_REDIS_URL), or from a version "
            "that reads a cluster here",
        )
    return _single_client(options, connection)


def stream_client(url: str, **connection: Any) -> RedisClient:
    """The client of the processes that read and write the streams: as :func:`redis_client`
    for one server; for ``redis+cluster://`` a ``RedisCluster`` that learns the slot map from
    the URL's nodes (``connection``'s ``health_check_interval`` does not apply to it).

    Raises:
        ConfigError: as :func:`redis_client`.
        redis.exceptions.RedisClusterException: ``cannot be connected``: no node of a cluster
            URL answered (a RedisCluster asks for the slot map when it is built).
    """
    options = redis_options(url)
    if not options.cluster:
        return _single_client(options, connection)
    kwargs = options.connection_kwargs()
    for unused in ("db", "host", "port"):
        kwargs.pop(unused, None)
    (host, port), *others = options.cluster
    # Built as from a URL (its nodes' pools then take ``connection_class``: the one that turns
    # a certificate refusal into a FatalError), with a URL of no credentials or TLS settings:
    # those come from ``kwargs``, read as for one server.
    return RedisCluster(
        url=f"redis://{_address(host, port)}",
        startup_nodes=[_cluster_node(h, p) for h, p in others],
        **{**kwargs, **connection},
    )


def _single_client(options: RedisOptions, connection: dict[str, Any]) -> redis.Redis:
    pool = redis.ConnectionPool(**{**options.connection_kwargs(), **connection})
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


def _fatal_refusals(connect: Callable[[], socket.socket]) -> socket.socket:
    try:
        return connect()
    except OSError as exc:
        fatal = fatal_error(exc)  # None for an outage (refused, reset, timed out)
        if fatal is None:
            raise
        raise fatal from exc


class _TcpConnection(Connection):
    def _connect(self) -> socket.socket:
        return _fatal_refusals(super()._connect)


class _TlsConnection(SSLConnection):
    def _connect(self) -> socket.socket:
        return _fatal_refusals(super()._connect)


class _UnixConnection(UnixDomainSocketConnection):
    def _connect(self) -> socket.socket:
        return _fatal_refusals(super()._connect)
