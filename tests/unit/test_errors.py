"""One classification of every error, by what it means: SQLSTATE for PostgreSQL, the reply code
for Redis (the same table for redis-py's exceptions and the producer's raw hiredis replies)."""

from __future__ import annotations

import random
import ssl

import hiredis
import psycopg
import psycopg.errors as pg
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis._parsers.base import BaseParser

from common.errors import (
    Action,
    ConfigError,
    ExitStatus,
    FatalError,
    PoisonFrame,
    TransientError,
    backoff,
    classify,
    fatal_error,
    redis_code,
)


def sql(state: str, message: str = "refused") -> psycopg.Error:
    return pg.lookup(state)(message)


@pytest.mark.parametrize(
    ("state", "action"),
    [
        ("22003", Action.DATA),  # numeric value out of range
        ("22021", Action.DATA),  # invalid byte sequence (a NUL)
        ("22P02", Action.DATA),  # invalid text representation
        ("23502", Action.DATA),  # not null violation
        ("54000", Action.DATA),  # index row too large: an OperationalError, yet no retry helps
        ("08006", Action.RETRY),  # connection failure
        ("40001", Action.RETRY),  # serialization failure
        ("40P01", Action.RETRY),  # deadlock
        ("53100", Action.RETRY),  # disk full
        ("53300", Action.RETRY),  # too many connections
        ("57P01", Action.RETRY),  # admin shutdown
        ("57P02", Action.RETRY),
        ("57P03", Action.RETRY),  # cannot connect now
        ("55P03", Action.RETRY),  # lock not available
        ("25P02", Action.RETRY),  # in a failed transaction: a fresh connection clears it
        ("25P03", Action.RETRY),  # idle-in-transaction timeout: the server ended the session
        ("57014", Action.RETRY),  # query cancelled
        ("42501", Action.FATAL),  # insufficient privilege
        ("42P01", Action.FATAL),  # undefined table
        ("25006", Action.FATAL),  # read-only transaction (a standby after fail-over)
        ("28P01", Action.FATAL),  # invalid password
        ("3D000", Action.FATAL),  # database does not exist
        ("57P04", Action.FATAL),  # database dropped
        ("XX000", Action.FATAL),  # internal error
    ],
)
def test_postgres_errors_by_sqlstate(state: str, action: Action) -> None:
    assert classify(sql(state)) is action


def test_postgres_errors_without_a_sqlstate() -> None:
    refused = "connection to server at ... failed: Connection refused"
    assert classify(psycopg.OperationalError(refused)) is Action.RETRY
    missing = 'connection failed: FATAL:  database "nope" does not exist'
    assert classify(psycopg.OperationalError(missing)) is Action.FATAL
    auth = "FATAL:  password authentication failed for user x"
    assert classify(psycopg.OperationalError(auth)) is Action.FATAL
    # libpq's own refusals of database.url, before any server says anything: no retry helps
    for text, code in [
        ('connection to server at "db", port 5432 failed: server does not support SSL, but SSL '
         "was required", "TLS"),
        ('root certificate file "/ca.pem" does not exist\nEither provide the file, ...', "TLS"),
        ('could not read root certificate file "/ca.pem": permission denied', "TLS"),
        ('could not open certificate file "/c.pem": No such file or directory', "TLS"),
        ('could not load private key file "/k.pem": bad decrypt', "TLS"),
        ('certificate present, but not private key file "/k.pem"', "TLS"),
        ("SSL error: certificate verify failed", "TLS"),
        ('server certificate for "a" does not match host name "b"', "TLS"),
        ('connection is bad: invalid sslmode value: "bogus"', "URL"),
        ('invalid target_session_attrs value: "x"', "URL"),
        ('invalid port number: "99999"', "URL"),
        ('invalid connection option "nope"', "URL"),
    ]:  # fmt: skip
        exc = psycopg.OperationalError(text)
        assert classify(exc) is Action.FATAL, text
        fatal = fatal_error(exc)
        assert fatal is not None and fatal.code == code and fatal.status == ExitStatus.POSTGRES
        assert "database.url" in fatal.fix
    # psycopg's own refusal before sending: the data
    assert classify(psycopg.DataError("text cannot contain NUL (0x00) bytes")) is Action.DATA
    assert classify(psycopg.ProgrammingError("query parameter missing")) is Action.FATAL


REPLIES = [
    ("OOM command not allowed when used memory > 'maxmemory'.", Action.RETRY),
    ("READONLY You can't write against a read only replica.", Action.RETRY),
    ("LOADING Redis is loading the dataset in memory", Action.RETRY),
    ("MASTERDOWN Link with MASTER is down", Action.RETRY),
    ("TRYAGAIN Multiple keys request during rehashing of slot", Action.RETRY),
    ("CLUSTERDOWN The cluster is down", Action.RETRY),
    ("BUSY Redis is busy running a script.", Action.RETRY),
    ("NOGROUP No such key 'x' or consumer group 'g'", Action.RETRY),
    ("ERR max number of clients reached", Action.RETRY),
    ("WRONGTYPE Operation against a key holding the wrong kind of value", Action.FATAL),
    ("NOPERM this user has no permissions to run the 'xack' command", Action.FATAL),
    ("NOAUTH Authentication required.", Action.FATAL),
    ("WRONGPASS invalid username-password pair or user is disabled.", Action.FATAL),
    ("ERR unknown command 'XAUTOCLAIM', with args beginning with:", Action.FATAL),
    ("SOMETHINGNEW the server says so", Action.FATAL),
]


@pytest.mark.parametrize(("reply", "action"), REPLIES)
def test_redis_replies_one_table_for_both_clients(reply: str, action: Action) -> None:
    as_redis_py = BaseParser.parse_error(reply)  # what redis-py raises for this reply
    as_hiredis = hiredis.ReplyError(reply)  # what the producer's raw connection reads
    assert classify(as_redis_py) is action
    assert classify(as_hiredis) is action
    code = reply.split(" ", 1)[0]
    assert redis_code(as_redis_py) == code and redis_code(as_hiredis) == code


def test_lost_connections_are_transient_and_bugs_are_fatal() -> None:
    for exc in (
        redis.ConnectionError("Connection refused"),
        redis.TimeoutError("Timeout reading"),
        ConnectionResetError(),
        TimeoutError(),
        EOFError(),
        TransientError("x"),
    ):
        assert classify(exc) is Action.RETRY, exc
    assert classify(PoisonFrame("x")) is Action.DATA
    assert classify(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogate")) is Action.DATA
    for exc in (
        ValueError("a bug"),
        KeyError("k"),
        ConfigError("k", "p"),
        ssl.SSLCertVerificationError("bad cert"),
        redis.AuthenticationError("invalid password"),
    ):
        assert classify(exc) is Action.FATAL, exc


def test_fatal_errors_name_the_server_the_code_and_the_fix() -> None:
    f = fatal_error(sql("42501", "permission denied for table trades"))
    assert isinstance(f, FatalError) and f.status is ExitStatus.POSTGRES
    assert f.code == "42501" and "grant" in f.fix and "permission denied" in f.problem
    ro = fatal_error(sql("25006", "cannot execute INSERT in a read-only transaction"))
    assert ro is not None and "primary" in ro.fix
    wt = fatal_error(BaseParser.parse_error("WRONGTYPE Operation against a key"))
    assert wt is not None and wt.status is ExitStatus.REDIS and wt.code == "WRONGTYPE"
    noperm = fatal_error(BaseParser.parse_error("NOPERM no permissions to run 'xack'"))
    assert noperm is not None and noperm.code == "NOPERM" and "ACL" in noperm.fix
    assert fatal_error(ValueError("a bug")) is None  # not a server's refusal: status 1
    assert fatal_error(sql("08006")) is None  # transient: never fatal
    assert fatal_error(sql("22003")) is None  # data: the frame's problem


@settings(max_examples=200, database=None, deadline=None)
@given(
    initial=st.floats(0.001, 100),
    factor=st.floats(1.0, 10),
    cap=st.floats(0.001, 100),
    jitter=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_backoff_never_exceeds_its_cap(
    initial: float, factor: float, cap: float, jitter: float, seed: int
) -> None:
    rng = random.Random(seed)
    delays = backoff(initial=initial, factor=factor, cap=cap, jitter=jitter, rng=rng)
    values = [next(delays) for _ in range(30)]
    assert all(0.0 <= v <= cap for v in values)
