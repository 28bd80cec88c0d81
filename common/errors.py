"""One exception hierarchy, and one classification of every error, named by what the caller does.

::

    TickvaultError
    ├── TransientError      back off and retry (lost connection, server restarting)
    ├── PoisonFrame         the frame can never be processed: dead-letter it, then ack it
    ├── ConfigError         the configuration is wrong: exit at start with the key and the fix
    └── FatalError          a server refuses in a way no retry can fix: ack nothing more, exit
                            with the server's status (``ExitStatus``) and the fix in the log

``classify(exc)`` maps any exception (ours, redis-py's, hiredis', psycopg's, OSError) onto an
:class:`Action`, by what the error *means*: PostgreSQL errors by SQLSTATE class, Redis error
replies by their code (the first word of the reply), the same table for the producer's raw
connection and the consumer's redis-py client. ``backoff()`` yields capped, jittered delays that
a caller resets after a success, in the manner of websockets' ``asyncio/client.py``.

The tables (the README shows them too):

==========  =========================================================  =========================
action      PostgreSQL (SQLSTATE)                                      Redis (reply code)
==========  =========================================================  =========================
RETRY       08 connection, 40 rollback, 53 resources, 57P01-57P03,     OOM READONLY LOADING
            57P05, 57014 cancelled, 55P03 lock, lost connections       MASTERDOWN TRYAGAIN
                                                                       CLUSTERDOWN BUSY MISCONF
                                                                       NOREPLICAS NOGROUP
                                                                       UNBLOCKED, lost
                                                                       connections
DATA        22 data exception, 23 constraint, 54 program limit         (none)
FATAL       everything else: 42 privilege / missing object, 25         WRONGTYPE NOPERM NOAUTH
            read-only, 28 authentication, 3D missing database, ...     WRONGPASS ERR (unknown
                                                                       command, syntax) and any
                                                                       other code
==========  =========================================================  =========================
"""

from __future__ import annotations

import enum
import random
import re
import ssl
from collections.abc import Iterator

__all__ = [
    "Action",
    "ConfigError",
    "ExitStatus",
    "FatalError",
    "PoisonFrame",
    "TickvaultError",
    "TransientError",
    "backoff",
    "classify",
    "fatal_error",
    "is_transient",
    "redis_reply_action",
    "sqlstate_action",
]


class Action(enum.Enum):
    """What a caller does with an error."""

    RETRY = "retry"  # a dependency is away for now: back off (capped) and try the same again
    DATA = "data"  # this data can never be written: isolate it, dead-letter it, go on
    FATAL = "fatal"  # the deployment is wrong: ack nothing more, exit with a status


class ExitStatus(enum.IntEnum):
    """Exit statuses of ``tickvault producer`` / ``consumer`` (documented in the README)."""

    OK = 0  # a clean stop; nothing lost (uncommitted entries stay pending for the next run)
    INTERNAL = 1  # a bug: the traceback is in the log
    CONFIG = 2  # the configuration is wrong: the message names the key and the fix
    POSTGRES = 3  # PostgreSQL refused in a way no retry can fix (privilege, read-only, ...)
    REDIS = 4  # Redis refused in a way no retry can fix (WRONGTYPE, NOPERM, NOAUTH, ...)
    LOST = 5  # the producer stopped with frames it could not write (counted in the log)


class TickvaultError(Exception):
    """Root of every error tickvault raises on purpose."""


class TransientError(TickvaultError):
    """A dependency is unavailable for now: back off and try again."""


class PoisonFrame(TickvaultError):
    """A frame that cannot be decoded or fails validation.

    The caller sends it to the dead-letter stream with ``reason`` and acks it; it is never retried
    as-is (a fixed parser can replay it from the dead-letter stream).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigError(TickvaultError):
    """Bad configuration, found at start. The message names the key and the fix."""

    def __init__(self, key: str, problem: str, fix: str = "") -> None:
        message = f"config error at {key}: {problem}"
        if fix:
            message += f" (fix: {fix})"
        super().__init__(message)
        self.key = key
        self.problem = problem
        self.fix = fix


class FatalError(TickvaultError):
    """A server refused in a way retrying cannot fix: stop acking, exit with ``status``."""

    def __init__(self, server: str, code: str, problem: str, fix: str) -> None:
        super().__init__(f"{server} refused ({code}): {problem} (fix: {fix})")
        self.server = server
        self.code = code
        self.problem = problem
        self.fix = fix

    @property
    def status(self) -> ExitStatus:
        return ExitStatus.POSTGRES if self.server == "postgresql" else ExitStatus.REDIS


# -- Redis ---------------------------------------------------------------------------------------

# Reply codes (the first word of an error reply) worth retrying: the server is full, failing
# over, loading, or the cluster is reconfiguring. NOGROUP: the group vanished with its stream
# (a FLUSHDB, a deleted key); the consumer creates it again before retrying.
REDIS_RETRY = frozenset(
    {
        "OOM",
        "READONLY",
        "LOADING",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "BUSY",
        "MISCONF",
        "NOREPLICAS",
        "NOGROUP",
        "UNBLOCKED",  # a blocked XREADGROUP cut short by a fail-over (master -> replica)
    }
)

REDIS_FIXES = {
    "WRONGTYPE": "the stream key holds another type: point redis.url at a database of "
    "tickvault's own, or remove the key",
    "NOPERM": "grant the ACL user tickvault's commands (README: Redis ACL)",
    "NOAUTH": "put the user and password in redis.url (redis://user:password@host:6379/0)",
    "WRONGPASS": "put the right user and password in redis.url",
    "ERR": "Redis >= 6.2 (or Valkey) is needed; check that no command is renamed or disabled",
}


# ERR replies that mean "not now" (redis-py raises ConnectionError for the first one; the
# producer's raw connection reads the reply itself).
REDIS_RETRY_ERR = ("max number of clients reached",)


def redis_reply_action(code: str, message: str = "") -> Action:
    """The action for a Redis error reply's code (``OOM``, ``WRONGTYPE``, ...)."""
    if code in REDIS_RETRY:
        return Action.RETRY
    if code == "ERR" and any(text in message for text in REDIS_RETRY_ERR):
        return Action.RETRY
    return Action.FATAL


_CODE = re.compile(r"[A-Z][A-Z_]+\Z")


def redis_code(exc: BaseException) -> str:
    """The code of a Redis error reply: its first word, or, where redis-py stripped it from the
    text of an exception it maps to a class, the ``status_code`` it kept."""
    first = str(exc).split(" ", 1)[0]
    if _CODE.match(first):
        return first
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, str) and code else "ERR"


# -- PostgreSQL ----------------------------------------------------------------------------------

PG_RETRY_CLASSES = frozenset({"08", "40", "53"})
# 25P02/25P03: the session's transaction is aborted, or the server ended an idle one: a fresh
# connection (the store reconnects on every retried error) clears both.
PG_RETRY_STATES = frozenset(
    {"57P01", "57P02", "57P03", "57P05", "57014", "55P03", "25P02", "25P03"}
)
PG_DATA_CLASSES = frozenset({"22", "23", "54"})

PG_FIXES = {
    "42": "grant the database user what tickvault needs (README: PostgreSQL privileges), or "
    "run `tickvault migrate` if a table is missing",
    "25": "database.url points at a read-only server (a standby after a fail-over?): point it "
    "at the primary",
    "28": "check the user and password in database.url, and pg_hba.conf",
    "3D": "create the database named in database.url",
    "57": "the database is being dropped or shut down for good: check the server",
    "TLS": "database.url's TLS options (sslmode, sslrootcert, sslcert, sslkey) do not fit the "
    "server: fix the files or the mode, or turn on ssl in the server",
    "URL": "database.url holds a value libpq refuses: see its connection parameters",
}


def sqlstate_action(sqlstate: str | None) -> Action:
    """The action for a PostgreSQL SQLSTATE (None: the connection failed before one came)."""
    if sqlstate is None:
        return Action.RETRY
    if sqlstate[:2] in PG_RETRY_CLASSES or sqlstate in PG_RETRY_STATES:
        return Action.RETRY
    if sqlstate[:2] in PG_DATA_CLASSES:
        return Action.DATA
    return Action.FATAL


# libpq reports a refused connection as text without a SQLSTATE. These server refusals cannot be
# cured by retrying: 3D000, 28000/28P01, 42501 (no CONNECT privilege); and two of libpq's own,
# named here as no SQLSTATE is: TLS (database.url's TLS options do not fit the server or its
# files do not load) and URL (a parameter value libpq refuses, e.g. ``sslmode=bogus``).
_PG_CONNECT_FATAL = (
    (re.compile(r'database "[^"]*" does not exist'), "3D000"),
    (re.compile(r'role "[^"]*" does not exist'), "28000"),
    (
        re.compile(r"password authentication failed|no pg_hba\.conf entry|authentication failed"),
        "28P01",
    ),
    (re.compile(r"permission denied for database"), "42501"),
    (
        re.compile(
            r"server does not support SSL, but SSL was required"
            r"|root certificate file .* does not exist|could not read root certificate file"
            r"|could not open certificate file|could not load private key file"
            r"|certificate present, but not private key file"
            r"|certificate verify failed|does not match host name"
        ),
        "TLS",
    ),
    (re.compile(r'invalid [\w ]+ value: "|invalid port number|invalid connection option'), "URL"),
)


def _pg_connect_state(text: str) -> str | None:
    for pattern, state in _PG_CONNECT_FATAL:
        if pattern.search(text):
            return state
    return None


# -- the one classifier --------------------------------------------------------------------------


def classify(exc: BaseException) -> Action:
    """Say what to do about ``exc``: retry, isolate the data, or stop (see the module table).

    Anything not recognised (a bug) is FATAL: never retried forever, never taken for bad data.
    """
    if isinstance(exc, TransientError):
        return Action.RETRY
    if isinstance(exc, PoisonFrame):
        return Action.DATA
    if isinstance(exc, (ConfigError, FatalError)):
        return Action.FATAL
    # Imported here so that pure modules importing this one do not pull in the drivers.
    import hiredis
    import psycopg
    import redis.exceptions as rx

    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is not None:
            return sqlstate_action(state)
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return Action.FATAL if _pg_connect_state(str(exc)) else Action.RETRY
        # Raised by psycopg itself before sending (e.g. a NUL in a text value): the data.
        return Action.DATA if isinstance(exc, psycopg.DataError) else Action.FATAL
    if isinstance(exc, (rx.AuthenticationError, rx.AuthorizationError, rx.NoPermissionError)):
        return Action.FATAL
    # redis-py's cluster client: every node away ("cannot be connected"), a slot no node serves
    # (a fail-over under way), redirected past its TTL (a resharding): the cluster is in flux.
    if isinstance(exc, rx.SlotNotCoveredError) or (
        isinstance(exc, rx.RedisClusterException) and "cannot be connected" in str(exc)
    ):
        return Action.RETRY
    if isinstance(exc, rx.ClusterError) and not isinstance(exc, rx.ResponseError):
        return Action.RETRY
    if isinstance(exc, (rx.ResponseError, hiredis.ReplyError)):
        return redis_reply_action(redis_code(exc), str(exc))
    if isinstance(exc, (rx.ConnectionError, rx.TimeoutError)):
        return Action.RETRY  # includes BusyLoadingError (LOADING) and lost connections
    if isinstance(exc, UnicodeEncodeError):
        return Action.DATA  # a value that cannot be sent as UTF-8 (a lone surrogate)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Action.FATAL  # retrying cannot make a certificate valid
    if isinstance(exc, PermissionError):
        return Action.FATAL  # e.g. a unix socket the process may not open
    if isinstance(exc, (ConnectionError, TimeoutError, OSError, EOFError)):
        return Action.RETRY
    return Action.FATAL


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth retrying after a pause (``classify(exc) is Action.RETRY``)."""
    return classify(exc) is Action.RETRY


def fatal_error(exc: BaseException) -> FatalError | None:
    """``exc`` as a :class:`FatalError` naming the server, the code and the fix; None when it is
    not a server's refusal (a bug, or an error of another action)."""
    if isinstance(exc, FatalError):
        return exc
    if classify(exc) is not Action.FATAL:
        return None
    import hiredis
    import psycopg
    import redis.exceptions as rx

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or _pg_connect_state(str(exc))
        if state is None:
            return None  # raised by psycopg itself: a bug, not a refusal
        fix = PG_FIXES.get(state) or PG_FIXES.get(
            state[:2], "see the PostgreSQL log and the README's error table"
        )
        return FatalError("postgresql", state, text, fix)
    if isinstance(exc, (rx.RedisError, hiredis.ReplyError)):
        if isinstance(exc, rx.AuthenticationError):
            code = "NOAUTH"
        elif isinstance(exc, rx.NoPermissionError):
            code = "NOPERM"
        else:
            code = redis_code(exc)
        fix = REDIS_FIXES.get(code, "see the Redis log and the README's error table")
        return FatalError("redis", code, text, fix)
    if isinstance(exc, (ssl.SSLCertVerificationError, PermissionError)):
        return FatalError("redis", type(exc).__name__, text, "check the TLS CA file / socket mode")
    return None


def backoff(
    *,
    initial: float = 0.2,
    factor: float = 2.0,
    cap: float = 30.0,
    jitter: float = 0.5,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Yield delays growing by ``factor`` up to ``cap``, each spread by +/- ``jitter`` fraction
    but never above ``cap``: the cap is a cap.

    Start a fresh generator after a success: that is the reset.
    """
    rand = rng or random.Random()
    delay = min(initial, cap)
    while True:
        yield rand.uniform(max(0.0, delay * (1 - jitter)), min(cap, delay * (1 + jitter)))
        delay = min(cap, delay * factor)
