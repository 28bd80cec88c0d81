"""Fixtures of the integration suite: a PostgreSQL role that owns nothing, for the tests of
what tickvault does without a privilege (the consumer's refusals, ``status`` as a read-only
user)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from consumer.store import Store


def admin_execute(url: str, *statements: str | sql.Composed) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


_roles = itertools.count(1)


@dataclass
class Role:
    name: str
    url: str  # the test's database, as this role


def as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:{password}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def role(database_url: str) -> Iterator[Role]:
    """A LOGIN role that owns nothing; the test grants what it needs. Dropped at the end."""
    name, password = f"tv_refusal_{os.getpid()}_{next(_roles)}", "refusal-pw"
    ident = sql.Identifier(name)
    admin_execute(database_url, sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(ident, password))
    try:
        yield Role(name, as_user(database_url, name, password))
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            conn.execute(sql.SQL("DROP ROLE {}").format(ident))


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A consumer's store on the test database, migrated."""
    s = Store(database_url)
    s.connect()
    yield s
    s.close()
