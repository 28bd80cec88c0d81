"""Retention in PostgreSQL against a real server: whole old days dropped, the DEFAULT partition's
old rows and the ledgers' old rows deleted, nothing else touched; a busy table skipped, not
waited for; the consumer's hourly check and ``tickvault retention``."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from common.cli import main as cli
from common.errors import ConfigError
from common.metrics import Metrics
from consumer import retention as retention_module
from consumer.claims import Claims
from consumer.commit import PARTITIONS_EVERY_S, Committer
from consumer.deadletter import DeadLetters
from consumer.retention import Report, enforce, first_kept_day, main
from consumer.retry import Retrier
from consumer.schema import (
    _LOCK_KEY,
    create_partition,
    ensure_partitions,
    migrate,
    partition_day,
)
from consumer.store import Store
from tests.conftest import SLOW

pytestmark = pytest.mark.integration

TODAY = dt.datetime.now(dt.UTC).date()
DAYS = 3  # keeps TODAY - 2 .. TODAY
FIRST_KEPT = TODAY - dt.timedelta(days=DAYS - 1)
CUTOFF = dt.datetime.combine(FIRST_KEPT, dt.time(), dt.UTC)


def day(offset: int) -> dt.date:
    return TODAY + dt.timedelta(days=offset)


def at(offset: int, hour: int = 12, us: int = 0) -> dt.datetime:
    return dt.datetime.combine(day(offset), dt.time(hour), dt.UTC) + dt.timedelta(microseconds=us)


def name(table: str, offset: int) -> str:
    return f"{table}_p{day(offset):%Y%m%d}"


def add_trades(conn: psycopg.Connection[object], *times: dt.datetime) -> None:
    for i, ts in enumerate(times):
        conn.execute(
            "INSERT INTO trades VALUES ('binance', 'BTC-USDT', %s, 1, 1, 'buy', %s, %s)",
            (f"{ts.isoformat()}-{i}", ts, ts),
        )


def add_quotes(conn: psycopg.Connection[object], *times: dt.datetime) -> None:
    for i, ts in enumerate(times):
        conn.execute(
            "INSERT INTO quotes VALUES ('okx', 'BTC-USDT', %s, 1, 1, 2, 1, %s, %s)",
            (f"{ts.isoformat()}-{i}", ts, ts),
        )


def count(conn: psycopg.Connection[object], table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # test tables only
    assert row is not None
    return int(row[0])  # type: ignore[index]


def partitions(conn: psycopg.Connection[object]) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE c.relkind = 'r'"
    ).fetchall()
    return {str(r[0]) for r in rows}  # type: ignore[index]


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[object]]:
    """A migrated database (partitions yesterday .. today + 3) with old days in it:

    trades: partitions for TODAY-10 (2 rows) and TODAY-3 (1 row, the last microsecond before
    the cutoff); in DEFAULT one row of TODAY-30 (old), one at the cutoff exactly and one of
    TODAY+10 (both kept); kept partitions TODAY-1 and TODAY with a row each.
    quotes: a partition for TODAY-10 (1 row); in DEFAULT a row of TODAY-5 (old); a row today.
    """
    with psycopg.connect(database_url, autocommit=True) as c:
        migrate(c)
        for table, offset in (("trades", -10), ("trades", -3), ("quotes", -10)):
            assert create_partition(c, table, day(offset))
        add_trades(c, at(-10), at(-10, 13), at(-3, 23, 3_599_999_999), at(-30), CUTOFF)
        add_trades(c, at(10), at(-1), at(0, 0))
        add_quotes(c, at(-10), at(-5), at(0, 0))
        yield c


KEPT_PARTITIONS = {name(t, d) for t in ("trades", "quotes") for d in range(-1, 4)} | {
    "trades_default",
    "quotes_default",
}


def test_the_check_drops_exactly_the_old_days(conn: psycopg.Connection[object]) -> None:
    assert first_kept_day(DAYS, TODAY) == day(-2)
    assert count(conn, "trades_default") == 3 and count(conn, "quotes_default") == 1

    report = enforce(conn, DAYS, today=TODAY)

    assert [p.name for p in report.partitions] == [
        name("trades", -10), name("trades", -3), name("quotes", -10),
    ]  # fmt: skip
    assert report.rows == {
        "trades_default": 1, "quotes_default": 1, "gaps": 0, "feed_sessions": 0,
        "producer_runs": 0,
    }  # fmt: skip
    assert report.busy == [] and report.cutoff == CUTOFF
    assert partitions(conn) == KEPT_PARTITIONS
    kept = conn.execute("SELECT ts FROM trades ORDER BY ts").fetchall()
    assert [r[0] for r in kept] == [CUTOFF, at(-1), at(0, 0), at(10)]  # type: ignore[index]
    assert count(conn, "trades_default") == 2  # the cutoff's row and TODAY+10's
    assert [r[0] for r in conn.execute("SELECT ts FROM quotes").fetchall()] == [at(0, 0)]  # type: ignore[index]

    again = enforce(conn, DAYS, today=TODAY)  # nothing left: another consumer's run
    assert again.partitions == [] and not again.changed
    assert again.lines()[-1] == "nothing older than the cutoff"


def test_only_its_own_daily_partitions_are_dropped(conn: psycopg.Connection[object]) -> None:
    assert partition_day("trades", "trades_p20231114") == dt.date(2023, 11, 14)
    for other in ("trades_default", "trades_p2023111", "trades_p20231399", "quotes_p20231114",
                  "trades_p20231114x", "trades_archive"):  # fmt: skip
        assert partition_day("trades", other) is None, other
    # a partition someone attached by hand for an old range: not retention's to drop
    ddl = sql.SQL("CREATE TABLE trades_archive PARTITION OF trades FOR VALUES FROM ({}) TO ({})")
    conn.execute(ddl.format(sql.Literal(at(-60, 0)), sql.Literal(at(-50, 0))))
    add_trades(conn, at(-55))
    enforce(conn, DAYS, today=TODAY)
    assert partitions(conn) == KEPT_PARTITIONS | {"trades_archive"}
    assert count(conn, "trades_archive") == 1


def test_one_day_keeps_today_only_and_a_long_retention_keeps_all(
    conn: psycopg.Connection[object],
) -> None:
    assert enforce(conn, 365, today=TODAY).changed is False
    assert count(conn, "trades") == 8 and count(conn, "quotes") == 3
    with pytest.raises(ValueError):
        enforce(conn, 0, today=TODAY)  # off is the callers' business (0 never reaches here)
    report = enforce(conn, 1, today=TODAY)
    assert name("trades", -1) in {p.name for p in report.partitions}
    assert [r[0] for r in conn.execute("SELECT ts FROM trades ORDER BY ts").fetchall()] == [
        at(0, 0), at(10),
    ]  # type: ignore[index]  # fmt: skip


def test_dry_run_reports_and_changes_nothing(conn: psycopg.Connection[object]) -> None:
    before = (partitions(conn), count(conn, "trades"), count(conn, "quotes"))
    report = enforce(conn, DAYS, today=TODAY, dry_run=True)
    assert [p.name for p in report.partitions] == [
        name("trades", -10), name("trades", -3), name("quotes", -10),
    ]  # fmt: skip
    assert all(p.size > 0 for p in report.partitions)
    assert report.rows["trades_default"] == 1 and report.rows["quotes_default"] == 1
    assert (partitions(conn), count(conn, "trades"), count(conn, "quotes")) == before
    lines = report.lines()
    assert (
        lines[0].endswith("; dry run: nothing changed")
        and f"keeping {day(-2)} and later" in lines[0]
    )
    assert f"would drop {name('trades', -10)} (" in lines[1]
    assert "would delete 1 row(s) from trades_default" in lines


def ledger_rows(conn: psycopg.Connection[object]) -> None:
    """Gaps, connections and producer runs on both sides of the cutoff, and a gap cursor."""
    old, new = CUTOFF - dt.timedelta(seconds=1), CUTOFF
    for i, (after, before) in enumerate([(old, old), (old, new), (new, new)]):
        conn.execute(
            "INSERT INTO gaps (exchange, symbol, first_missing, last_missing, after_ts,"
            " before_ts) VALUES ('binance', 'BTC-USDT', %s, %s, %s, %s)",
            (i * 10, i * 10 + 1, after, before),
        )
    sessions = [
        ("ended-old", "p1", "1", old - dt.timedelta(hours=1), old),
        ("ended-at-cutoff", "p1", "2", old, new),
        ("still-open", "p2", "1", old - dt.timedelta(days=9), None),  # killed, no restart yet
    ]
    for conn_id, producer, run, connected, disconnected in sessions:
        conn.execute(
            "INSERT INTO feed_sessions (exchange, conn, producer, run, connected_at,"
            " disconnected_at) VALUES ('binance', %s, %s, %s, %s, %s)",
            (conn_id, producer, run, connected, disconnected),
        )
    runs = [
        ("p1", "1", old),  # old and its only connection goes: goes
        ("p1", "2", old),  # old, but its connection ended at the cutoff: kept
        ("p2", "1", old - dt.timedelta(days=9)),  # old, its connection is still open: kept
        ("p3", "1", new),  # recent, without connections: kept
        ("p4", "1", old),  # old, without connections: goes
    ]
    for producer, run, alive in runs:
        conn.execute(
            "INSERT INTO producer_runs (exchange, producer, run, started_at, alive_at)"
            " VALUES ('binance', %s, %s, %s, %s)",
            (producer, run, alive - dt.timedelta(minutes=1), alive),
        )
    conn.execute("INSERT INTO gap_cursors VALUES ('binance', 'BTC-USDT', 5, %s)", (at(-20),))


def test_ledger_rows_of_gone_days_are_pruned_and_cursors_kept(
    conn: psycopg.Connection[object],
) -> None:
    ledger_rows(conn)
    dry = enforce(conn, DAYS, today=TODAY, dry_run=True)
    assert (dry.rows["gaps"], dry.rows["feed_sessions"], dry.rows["producer_runs"]) == (1, 1, 2)
    assert count(conn, "gaps") == 3 and count(conn, "producer_runs") == 5

    report = enforce(conn, DAYS, today=TODAY)
    assert (report.rows["gaps"], report.rows["feed_sessions"], report.rows["producer_runs"]) == (
        1, 1, 2,
    )  # fmt: skip
    gaps = conn.execute("SELECT first_missing FROM gaps ORDER BY 1").fetchall()
    assert [r[0] for r in gaps] == [10, 20]  # type: ignore[index]
    sessions = conn.execute("SELECT conn FROM feed_sessions ORDER BY 1").fetchall()
    assert [r[0] for r in sessions] == ["ended-at-cutoff", "still-open"]  # type: ignore[index]
    runs = conn.execute("SELECT producer, run FROM producer_runs ORDER BY 1, 2").fetchall()
    assert runs == [("p1", "2"), ("p2", "1"), ("p3", "1")]
    assert conn.execute("SELECT checked_id FROM gap_cursors").fetchall() == [(5,)]


def test_a_busy_table_is_skipped_with_a_log_line_not_waited_for(
    conn: psycopg.Connection[object], database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="consumer.retention")
    with psycopg.connect(database_url) as reader:  # a long query's transaction, still open
        reader.execute("SELECT count(*) FROM trades")  # ACCESS SHARE on trades until it ends
        started = time.monotonic()
        report = enforce(conn, DAYS, today=TODAY, lock_timeout_s=0.2)
        assert time.monotonic() - started < 3 * SLOW
        assert report.busy == ["trades"]
        assert [p.name for p in report.partitions] == [name("quotes", -10)]  # not blocked
        assert name("trades", -10) in partitions(conn)
        assert "retention: trades skipped: a lock was not granted within 0.2 s" in caplog.text
        assert report.lines()[-1].startswith("skipped trades: a lock was not granted in time")
        # the writers go on meanwhile
        add_trades(conn, at(0, 1))
        reader.rollback()
    after = enforce(conn, DAYS, today=TODAY, lock_timeout_s=0.2)  # the next check
    assert [p.name for p in after.partitions] == [name("trades", -10), name("trades", -3)]
    assert after.busy == [] and after.rows["trades_default"] == 1


def test_one_dropper_at_a_time_behind_the_schema_lock(
    conn: psycopg.Connection[object], database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="consumer.retention")
    with psycopg.connect(database_url, autocommit=True) as other:  # another consumer at work
        other.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        report = enforce(conn, DAYS, today=TODAY, lock_timeout_s=0.2)
        assert report.busy == ["trades", "quotes"] and report.partitions == []
        assert report.rows == {"gaps": 0, "feed_sessions": 0, "producer_runs": 0}
        other.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    assert caplog.text.count("skipped: a lock was not granted") == 2
    assert len(enforce(conn, DAYS, today=TODAY).partitions) == 3


def test_consumers_checking_together_drop_each_partition_once(
    conn: psycopg.Connection[object], database_url: str
) -> None:
    ledger_rows(conn)
    reports: list[Report] = []

    def check() -> None:
        with psycopg.connect(database_url, autocommit=True) as own:
            reports.append(enforce(own, DAYS, today=TODAY))

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20 * SLOW)
    assert len(reports) == 4 and all(r.busy == [] for r in reports)
    dropped = sorted(p.name for r in reports for p in r.partitions)
    assert dropped == sorted([name("trades", -10), name("trades", -3), name("quotes", -10)])
    for table, n in {"trades_default": 1, "quotes_default": 1, "gaps": 1, "feed_sessions": 1,
                     "producer_runs": 2}.items():  # fmt: skip
        assert sum(r.rows[table] for r in reports) == n, table
    assert partitions(conn) == KEPT_PARTITIONS


@pytest.fixture
def committer(redis_client: redis.Redis) -> Committer:
    metrics = Metrics("consumer")
    retrier = Retrier(metrics=metrics, backoff_max_s=0.01, stop_timeout_s=1, sleep=lambda s: None)
    return Committer(
        client=redis_client, group="tickvault", retrier=retrier,
        deadletters=DeadLetters(redis_client), claims=Claims(redis_client, "tickvault", "c1"),
        metrics=metrics, lease_ms=10_000, halted=lambda: False,
    )  # fmt: skip


@pytest.fixture
def store(conn: psycopg.Connection[object], database_url: str) -> Iterator[Store]:
    s = Store(database_url)
    s.connect()
    yield s
    s.close()


def test_the_consumer_enforces_it_at_its_first_batch_then_hourly(
    conn: psycopg.Connection[object], store: Store, committer: Committer
) -> None:
    store.retention_days = DAYS  # type: ignore[attr-defined]  # database.retention_days
    committer._refresh_partitions(store)  # the first batch
    assert partitions(conn) == KEPT_PARTITIONS
    assert create_partition(conn, "trades", day(-4))
    committer._refresh_partitions(store)  # within the hour: nothing
    assert name("trades", -4) in partitions(conn)
    committer._partitions[id(store)] -= PARTITIONS_EVERY_S  # an hour later
    committer._refresh_partitions(store)
    assert partitions(conn) == KEPT_PARTITIONS
    counters = committer.metrics.counters
    assert counters["retention_dropped"] == 4 and counters["retention_skipped"] == 0
    assert counters["retries:retention"] == 0


def test_a_one_day_retention_is_not_undone_and_redone_every_hour(
    conn: psycopg.Connection[object], store: Store, committer: Committer, database_url: str
) -> None:
    """Retention 1 keeps today only: the hourly check drops yesterday's partition, and the
    partitions made in the same check must not make it again (an hourly create, move and drop,
    each under an exclusive lock of the parent), nor must a consumer's connect."""
    store.retention_days = 1  # type: ignore[attr-defined]
    committer._refresh_partitions(store)  # the first batch: yesterday goes
    assert name("trades", -1) not in partitions(conn)
    dropped = []
    for _ in range(2):  # an hour later, twice
        committer._partitions[id(store)] -= PARTITIONS_EVERY_S
        committer._refresh_partitions(store)
        dropped.append(committer.metrics.counters["retention_dropped"])
    assert name("trades", -1) not in partitions(conn)
    assert dropped[0] == dropped[1]  # nothing dropped again: nothing was made again
    fresh = Store(database_url, retention_days=1)
    fresh.connect()  # a consumer's start (migrations, then partitions)
    fresh.close()
    assert name("trades", -1) not in partitions(conn)
    assert name("trades", 0) in partitions(conn) and name("quotes", 3) in partitions(conn)
    # any other retention, or none, still takes yesterday's late rows into their own partition
    for days in (0, 2):
        conn.execute(f"DROP TABLE IF EXISTS {name('trades', -1)}")
        assert ensure_partitions(conn, today=TODAY, retention_days=days) == [
            name("trades", -1),
            *([name("quotes", -1)] if days == 0 else []),
        ]


def test_the_consumer_does_nothing_with_retention_off(
    conn: psycopg.Connection[object], store: Store, committer: Committer
) -> None:
    before = partitions(conn)
    committer._refresh_partitions(store)  # no retention_days on the store: off
    store.retention_days = 0  # type: ignore[attr-defined]
    committer._partitions[id(store)] -= PARTITIONS_EVERY_S
    committer._refresh_partitions(store)
    assert partitions(conn) == before and count(conn, "trades_default") == 3


def test_the_consumer_retries_a_lost_connection_and_stops_at_a_refusal(
    conn: psycopg.Connection[object],
    store: Store,
    committer: Committer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store.retention_days = DAYS  # type: ignore[attr-defined]
    real, calls = retention_module.enforce, []

    def flaky(c: psycopg.Connection[object], days: int) -> object:
        calls.append(c)
        if len(calls) == 1:  # the server ends the session mid-way: retried on a new one
            conn.execute("SELECT pg_terminate_backend(%s)", (c.info.backend_pid,))
        return real(c, days)

    monkeypatch.setattr(retention_module, "enforce", flaky)
    committer._refresh_partitions(store)
    assert len(calls) == 2 and calls[0] is not calls[1] and calls[0].closed
    assert partitions(conn) == KEPT_PARTITIONS
    assert committer.metrics.counters.get("retries:retention") == 1

    def refused(c: psycopg.Connection[object], days: int) -> object:
        raise psycopg.errors.InsufficientPrivilege("must be owner of table trades_p20231114")

    monkeypatch.setattr(retention_module, "enforce", refused)
    committer._partitions[id(store)] -= PARTITIONS_EVERY_S
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # FATAL: the worker stops
        committer._refresh_partitions(store)


# -- tickvault retention ---------------------------------------------------------------------


def config(tmp_path: Path, url: str, days: int = 0) -> str:
    path = tmp_path / "tickvault.toml"
    path.write_text(f'[database]\nurl = "{url}"\nretention_days = {days}\n')
    return str(path)


@pytest.fixture(autouse=True)
def _no_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TICKVAULT_DATABASE_URL", raising=False)
    monkeypatch.delenv("TICKVAULT_CONFIG", raising=False)


def test_command_dry_run_then_for_real(
    conn: psycopg.Connection[object],
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = config(tmp_path, database_url, days=60)
    before = partitions(conn)
    assert main(["--config", cfg, "--dry-run", "--days", str(DAYS)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"retention {DAYS} day(s): keeping {day(-2)} and later, removing ")
    assert [line.split(" (")[0] for line in out[1:4]] == [
        f"would drop {name('trades', -10)}", f"would drop {name('trades', -3)}",
        f"would drop {name('quotes', -10)}",
    ]  # fmt: skip
    assert out[4:] == [
        "would delete 1 row(s) from trades_default", "would delete 1 row(s) from quotes_default",
    ]  # fmt: skip
    assert partitions(conn) == before

    assert main(["--config", cfg]) == 0  # retention_days = 60 from the file: all is recent
    assert capsys.readouterr().out.splitlines()[-1] == "nothing older than the cutoff"
    assert cli(["retention", "--config", cfg, "--days", str(DAYS)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in out[1:4]] == [
        f"dropped {name('trades', -10)}", f"dropped {name('trades', -3)}",
        f"dropped {name('quotes', -10)}",
    ]  # fmt: skip
    assert partitions(conn) == KEPT_PARTITIONS


def test_command_with_retention_off_says_so_and_changes_nothing(
    conn: psycopg.Connection[object],
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = partitions(conn)
    assert main(["--config", config(tmp_path, database_url)]) == 0
    assert capsys.readouterr().out.startswith("retention is off (database.retention_days = 0)")
    assert main(["--config", config(tmp_path, database_url, days=DAYS), "--days", "0"]) == 0
    assert "retention is off" in capsys.readouterr().out
    assert partitions(conn) == before and count(conn, "trades_default") == 3


def test_command_bad_arguments_and_servers(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="--days"):
        main(["--config", config(tmp_path, database_url), "--days", "-1"])
    with pytest.raises(ConfigError, match=r"database\.retention_days"):
        main(["--config", config(tmp_path, database_url, days=-2)])
    with pytest.raises(SystemExit) as usage:
        main(["--config", config(tmp_path, database_url), "--days", "x"])
    assert usage.value.code == 2
    # a database without tickvault's tables: a wrong URL, not "nothing to do"
    assert cli(["retention", "--config", config(tmp_path, database_url, days=DAYS)]) == 2
    assert "no tickvault tables in this database" in capsys.readouterr().err
    down = config(tmp_path, "postgresql://postgres@127.0.0.1:1/postgres", days=DAYS)
    assert cli(["retention", "--config", down]) == 3
    assert "cannot reach a server" in capsys.readouterr().err
