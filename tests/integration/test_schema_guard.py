"""A database migrated by a newer tickvault: this one stops with the reason before it reads or
writes a table whose meaning may have changed, and changes nothing (real PostgreSQL and Redis)."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
import redis

from common.cli import main as cli
from common.envelope import raw_key
from common.errors import Action, ExitStatus, classify, fatal_error
from consumer.schema import SCHEMA_VERSION, NewerSchema, migrate
from consumer.store import Store
from tests.conftest import SLOW

pytestmark = pytest.mark.integration

FUTURE = SCHEMA_VERSION + 1


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TICKVAULT_DATABASE_URL", raising=False)
    monkeypatch.delenv("TICKVAULT_REDIS_URL", raising=False)
    monkeypatch.delenv("TICKVAULT_CONFIG", raising=False)


def _migrated_by_a_newer_tickvault(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert migrate(conn) == SCHEMA_VERSION
        conn.execute("INSERT INTO tickvault_migrations (version) VALUES (%s)", (FUTURE,))


def _state(database_url: str) -> tuple[list[int], int]:
    """The versions recorded and the tables there are: what a refusal must leave alone."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM tickvault_migrations")]
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        row = tables.fetchone()
        assert row is not None
        return sorted(versions), int(row[0])


def _sessions(database_url: str, application: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application,)
        ).fetchone()
        assert row is not None
        return int(row[0])


def test_migrate_refuses_a_newer_schema_and_changes_nothing(database_url: str) -> None:
    _migrated_by_a_newer_tickvault(database_url)
    before = _state(database_url)
    with psycopg.connect(database_url) as conn, pytest.raises(NewerSchema) as info:
        migrate(conn)
    exc = info.value
    assert exc.version == FUTURE
    assert classify(exc) is Action.FATAL  # never retried, never taken for bad data
    assert fatal_error(exc) is exc and exc.status == ExitStatus.POSTGRES
    assert f"schema is at version {FUTURE}" in str(exc)
    assert f"this tickvault's ({SCHEMA_VERSION})" in str(exc)
    assert _state(database_url) == before


def test_the_same_or_an_older_schema_still_migrates(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert migrate(conn) == SCHEMA_VERSION
        assert migrate(conn) == SCHEMA_VERSION  # its own version: nothing to do, no refusal


def test_a_store_keeps_no_connection_to_a_newer_schema(database_url: str) -> None:
    _migrated_by_a_newer_tickvault(database_url)
    store = Store(database_url)
    with pytest.raises(NewerSchema):
        store.connect()
    assert store._conn is None
    assert _sessions(database_url, "tickvault-consumer") == 0  # closed, not leaked
    with pytest.raises(NewerSchema):  # and again on every reconnect: not once only
        store.conn  # noqa: B018


def test_the_migrate_command_exits_with_the_reason(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _migrated_by_a_newer_tickvault(database_url)
    config = tmp_path / "tickvault.toml"
    config.write_text(f'[database]\nurl = "{database_url}"\n')
    assert cli(["migrate", "--config", str(config)]) == ExitStatus.POSTGRES
    err = capsys.readouterr().err
    assert f"schema version {FUTURE}" in err and "run the tickvault that migrated it" in err


def test_a_consumer_stops_at_start_and_takes_nothing_from_the_stream(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    _migrated_by_a_newer_tickvault(database_url)
    client = redis.Redis.from_url(redis_url)
    key = raw_key("binance")
    client.xadd(key, {b"f": b"{}", b"k": b"d"})
    config = tmp_path / "tickvault.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_url}"\n[database]\nurl = "{database_url}"\n'
        '[[feeds]]\nexchange = "binance"\nsymbols = ["BTC-USDT"]\nurl = "ws://127.0.0.1:1"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", "consumer", f"--config={config}"],
        capture_output=True, text=True, timeout=60 * SLOW,
    )  # fmt: skip
    assert done.returncode == ExitStatus.POSTGRES, done.stderr
    assert f"schema version {FUTURE}" in done.stderr
    assert "Nothing more was acked" in done.stderr
    # the entry was not read by anyone: nothing pending, nothing acked, still in the stream
    groups = client.xinfo_groups(key)
    assert all(g["pending"] == 0 and g["last-delivered-id"] in (b"0-0", "0-0") for g in groups)
    assert client.xlen(key) == 1
    assert _state(database_url)[0] == [*range(1, SCHEMA_VERSION + 1), FUTURE]
    client.close()


def test_the_backfill_thread_says_why_each_round_and_touches_nothing(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from common.config import load_settings
    from common.metrics import Metrics
    from consumer.backfill import Backfiller

    _migrated_by_a_newer_tickvault(database_url)
    before = _state(database_url)
    config = tmp_path / "tickvault.toml"
    config.write_text(
        f'[database]\nurl = "{database_url}"\n[backfill]\nevery_s = 0.05\n'
        '[[feeds]]\nexchange = "binance"\nsymbols = ["BTC-USDT"]\nurl = "ws://127.0.0.1:1"\n'
    )
    backfiller = Backfiller(load_settings(str(config)), Store(database_url), Metrics("consumer"))
    stop = threading.Event()
    thread = threading.Thread(target=backfiller.run, args=(stop,))
    with caplog.at_level(logging.ERROR, logger="consumer.backfill"):
        thread.start()
        deadline = time.monotonic() + 10 * SLOW
        while len(caplog.records) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert len(caplog.records) >= 2  # every round, not once
    for record in caplog.records:
        assert f"schema version {FUTURE}" in record.getMessage()
        assert record.exc_info is None  # the reason, not a traceback
    assert backfiller.store._conn is None
    assert _state(database_url) == before
