"""Real servers for integration and end-to-end tests.

Redis and PostgreSQL come from ``TICKVAULT_TEST_REDIS_URL`` / ``TICKVAULT_TEST_DATABASE_URL``
when set (the Redis database in that URL is FLUSHED before each test; each test gets its own
PostgreSQL database), else embedded servers are started once per session by
``common.servers`` (the same module the demo uses).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis

from common.servers import PostgresServer, RedisServer

# One constant scales every timeout in the suite (a slow machine sets TICKVAULT_TEST_SLOW=3).
SLOW = float(os.environ.get("TICKVAULT_TEST_SLOW", "1"))


@dataclass
class Servers:
    redis_url: str
    postgres_url: str  # the server's maintenance database; tests get their own database
    redis_server: RedisServer | None
    postgres_server: PostgresServer | None


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    base = tmp_path_factory.mktemp("servers")
    redis_url = os.environ.get("TICKVAULT_TEST_REDIS_URL")
    pg_url = os.environ.get("TICKVAULT_TEST_DATABASE_URL")
    redis_server = postgres_server = None
    try:
        if not redis_url:
            redis_server = RedisServer(base / "redis").start()
            redis_url = redis_server.url
        if not pg_url:
            postgres_server = PostgresServer(base / "postgres", durable=False).start()
            pg_url = postgres_server.url
        yield Servers(redis_url, pg_url, redis_server, postgres_server)
    finally:
        if redis_server:
            redis_server.kill()
        if postgres_server:
            postgres_server.stop()


@pytest.fixture
def redis_url(servers: Servers) -> Iterator[str]:
    client = redis.Redis.from_url(servers.redis_url)
    client.flushdb()
    client.close()
    yield servers.redis_url


_db_numbers = itertools.count(1)


def _with_database(url: str, name: str) -> str:
    head, _, _ = url.rpartition("/")
    return f"{head}/{name}"


@pytest.fixture
def database_url(servers: Servers) -> Iterator[str]:
    name = f"tickvault_test_{os.getpid()}_{next(_db_numbers)}"
    with psycopg.connect(servers.postgres_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(servers.postgres_url, name)
    with psycopg.connect(servers.postgres_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server for this test alone: it may be stopped, restarted, or have its ACL,
    CONFIG and REPLICAOF changed (never the shared one, which may be the machine's own)."""
    server = RedisServer(tmp_path / "own-redis").start()
    try:
        yield server
    finally:
        server.kill()
