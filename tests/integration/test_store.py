"""PostgreSQL writes against a real server: exact values, idempotence, partitions."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import msgspec
import psycopg
import pytest

from common.records import Quote, Trade
from consumer import store as store_module
from consumer.schema import MIGRATIONS, create_partition, ensure_partitions, migrate
from consumer.store import Store

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True, params=["statement", "copy"])
def write_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every store test runs both ways a batch is written: one statement (small batches) and
    COPY through the staging tables (big ones)."""
    if request.param == "copy":
        monkeypatch.setattr(store_module, "STATEMENT_MAX_ROWS", 0)
    return str(request.param)


TS = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z


def trade(i: int, **kw: object) -> Trade:
    base: dict[str, object] = dict(
        exchange="binance", symbol="BTC-USDT", trade_id=str(i), price="37000.12345678",
        amount="0.00000001", side="sell", ts_ns=TS + i * 1000, recv_ns=TS + 5_000_000,
    )  # fmt: skip
    base.update(kw)
    return Trade(**base)  # type: ignore[arg-type]


def test_rows_are_exact_and_rewrites_insert_nothing(database_url: str) -> None:
    store = Store(database_url)
    store.connect()
    huge = "123456789012345678901234567890.123456789012345678901234567890"
    trades = [trade(1), trade(2, price=huge, side=None), trade(3, price="1e-8")]
    q = Quote("okx", "BTC-USDT", "42", "1.10", "0.5", "1.20", "7", TS, TS + 1000)
    assert store.write(trades, [q]) == (3, 1)
    assert store.write(trades, [q]) == (0, 0)  # redelivery: nothing twice
    assert store.write([*trades, trade(4), trade(4)], []) == (1, 0)  # dupes inside one batch
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT trade_id, price, amount, side, ts, recv_ts FROM trades ORDER BY trade_id"
        ).fetchall()
        quote = conn.execute("SELECT * FROM quotes").fetchone()
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    assert rows[0][1] == Decimal("37000.12345678") and rows[0][2] == Decimal("0.00000001")
    assert rows[1][1] == Decimal(huge) and rows[1][3] is None
    assert rows[2][1] == Decimal("1e-8")
    # microsecond precision (PostgreSQL's), no float rounding, UTC
    assert rows[0][4] == dt.datetime(2023, 11, 14, 22, 13, 20, 123457, tzinfo=dt.UTC)
    assert rows[0][5] == dt.datetime(2023, 11, 14, 22, 13, 20, 128456, tzinfo=dt.UTC)
    assert quote is not None
    assert quote[:7] == ("okx", "BTC-USDT", "42", Decimal("1.10"), Decimal("0.5"),
                         Decimal("1.20"), Decimal("7"))  # fmt: skip
    store.close()


def test_a_bad_value_raises_a_data_error_and_commits_nothing(database_url: str) -> None:
    store = Store(database_url)
    store.connect()
    with pytest.raises(psycopg.DataError):
        store.write([trade(1), trade(2, price="1.2.3")], [])
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM trades").fetchone() == (0,)
    assert store.write([trade(1)], []) == (1, 0)  # the connection is still usable
    store.close()


def test_a_bad_quote_commits_no_trade_of_its_batch(database_url: str) -> None:
    """Trades and quotes of one batch are one transaction: both tables or neither."""
    store = Store(database_url)
    store.connect()
    bad = Quote("okx", "BTC-USDT", "1", "x", "1", "2", "1", TS, TS)
    with pytest.raises(psycopg.DataError):
        store.write([trade(1), trade(2)], [bad])
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM trades").fetchone() == (0,)
    good = Quote("okx", "BTC-USDT", "1", "1", "1", "2", "1", TS, TS)
    assert store.write([trade(1), trade(2)], [good]) == (2, 1)
    assert store.write([trade(1), trade(3)], [good]) == (1, 0)
    store.close()


def test_ids_with_tabs_newlines_and_backslashes_are_stored_as_sent(database_url: str) -> None:
    store = Store(database_url)
    store.connect()
    odd = ["a\tb", "tab\there", "new\nline", "back\\slash\\N", "cr\r", "\\N", ""]
    assert store.write([trade(i, trade_id=t) for i, t in enumerate(odd)], []) == (len(odd), 0)
    q = Quote("okx", "BTC-USDT", "q\t1\\", "1", "1", "2", "1", TS, TS)
    assert store.write([], [q]) == (0, 1)
    with psycopg.connect(database_url) as conn:
        ids = [r[0] for r in conn.execute("SELECT trade_id FROM trades ORDER BY ts")]
        quote_ids = [r[0] for r in conn.execute("SELECT update_id FROM quotes")]
    assert ids == odd
    assert quote_ids == ["q\t1\\"]
    store.close()


def test_migration_4_keeps_the_ledger_and_gives_it_id_spaces(database_url: str) -> None:
    """A version-3 database with gaps and cursors: they become plain-id rows, and a gap of
    another id space at the same ids is a row of its own."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE tickvault_migrations"
            " (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, statement in MIGRATIONS[:3]:
            conn.execute(statement.encode())
            conn.execute("INSERT INTO tickvault_migrations (version) VALUES (%s)", (version,))
        conn.execute(
            "INSERT INTO gaps (exchange, symbol, first_missing, last_missing, after_ts, "
            "before_ts) VALUES ('binance', 'BTC-USDT', 4, 6, now(), now())"
        )
        conn.execute("INSERT INTO gap_cursors VALUES ('binance', 'BTC-USDT', 9, now())")
        assert migrate(conn) == 4
        assert conn.execute("SELECT id_prefix, first_missing FROM gaps").fetchall() == [("", 4)]
        assert conn.execute("SELECT id_prefix, checked_id FROM gap_cursors").fetchall() == [("", 9)]
        conn.execute(
            "INSERT INTO gaps (exchange, symbol, id_prefix, first_missing, last_missing, "
            "after_ts, before_ts) VALUES ('binance', 'BTC-USDT', 'agg-', 4, 6, now(), now())"
        )
        conn.execute("INSERT INTO gap_cursors VALUES ('binance', 'BTC-USDT', 3, now(), 'agg-')")
        with pytest.raises(psycopg.errors.UniqueViolation):  # the same space: one row
            conn.execute(
                "INSERT INTO gaps (exchange, symbol, first_missing, last_missing, after_ts, "
                "before_ts) VALUES ('binance', 'BTC-USDT', 4, 5, now(), now())"
            )


def test_migrations_are_idempotent_and_partitions_daily(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        latest = MIGRATIONS[-1][0]
        assert migrate(conn) == latest == 4
        assert migrate(conn) == latest
        today = dt.datetime.now(dt.UTC).date()
        names = {
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'trades'"
            ).fetchall()
        }
        for offset in (-1, 0, 1, 2, 3):
            assert f"trades_p{today + dt.timedelta(days=offset):%Y%m%d}" in names
        assert "trades_default" in names
        assert ensure_partitions(conn) == []


def test_old_rows_go_to_default_and_move_when_their_day_gets_a_partition(
    database_url: str,
) -> None:
    store = Store(database_url)
    store.connect()
    store.write([trade(1)], [])  # 2023: no partition for that day
    with psycopg.connect(database_url) as conn:
        where = "SELECT tableoid::regclass::text FROM trades"
        assert conn.execute(where).fetchall() == [("trades_default",)]
        assert create_partition(conn, "trades", dt.date(2023, 11, 14))
        assert conn.execute(where).fetchall() == [("trades_p20231114",)]
        assert not create_partition(conn, "trades", dt.date(2023, 11, 14))
    assert store.write([trade(1)], []) == (0, 0)  # still unique after the move
    store.close()


def test_gaps_are_found_where_ids_are_consecutive(database_url: str) -> None:
    from consumer.gaps import checked_exchanges, find_gaps

    store = Store(database_url)
    store.connect()
    ids = [1, 2, 3, 7, 8, 10]
    store.write([trade(i) for i in ids], [])
    store.write([trade(5, exchange="upbit", symbol="BTC-KRW"), trade(9, exchange="upbit",
                 symbol="BTC-KRW")], [])  # fmt: skip
    store.close()
    assert checked_exchanges(["binance", "upbit", "coinbase"]) == ["binance", "coinbase"]
    since = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
    with psycopg.connect(database_url) as conn:
        gaps = find_gaps(conn, since=since, exchanges=checked_exchanges())
    assert [(g.exchange, g.first_missing, g.last_missing, g.missing) for g in gaps] == [
        ("binance", 4, 6, 3),
        ("binance", 9, 9, 1),
    ]
    assert gaps[0].after < gaps[0].before


def test_gaps_command_reports_and_fails_on_a_gap(database_url: str, tmp_path: Path) -> None:
    store = Store(database_url)
    store.connect()
    store.write([trade(1), trade(4)], [])
    store.close()
    config = tmp_path / "c.toml"
    config.write_text(
        f'[database]\nurl = "{database_url}"\n'
        '[[feeds]]\nexchange = "binance"\nsymbols = ["BTC-USDT"]\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", "gaps", "--scan", f"--config={config}",
         "--since=2023-01-01"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "1 gap(s), 2 missing" in done.stdout
    assert "ids 2..3 (2)" in done.stdout
    config.write_text(config.read_text().replace(database_url, "postgresql://x@127.0.0.1:1/x"))
    down = subprocess.run(
        [sys.executable, "-m", "common.cli", "gaps", f"--config={config}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert down.returncode == 3 and "cannot reach a server" in down.stderr


def test_retention_drops_whole_daily_partitions(database_url: str) -> None:
    from consumer.schema import drop_partitions_before

    with psycopg.connect(database_url) as conn:
        migrate(conn)
        assert create_partition(conn, "trades", dt.date(2023, 11, 14))
        today = dt.datetime.now(dt.UTC).date()
        dropped = drop_partitions_before(conn, today - dt.timedelta(days=1))
        assert dropped == ["trades_p20231114"]
        names = {r[0] for r in conn.execute("SELECT relname FROM pg_class").fetchall()}
        assert "trades_p20231114" not in names and f"trades_p{today:%Y%m%d}" in names


def test_flags_are_stored_and_a_rewrite_keeps_the_first_rows_flags(database_url: str) -> None:
    store = Store(database_url)
    store.connect()
    q = Quote("okx", "BTC-USDT", "7", "1.30", "0.5", "1.20", "7", TS, TS + 1000, flags=16)
    assert store.write([trade(1, flags=3), trade(2)], [q]) == (2, 1)
    assert store.write([trade(1, flags=0)], [msgspec.structs.replace(q, flags=0)]) == (0, 0)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT trade_id, flags FROM trades ORDER BY 1").fetchall()
        quote = conn.execute("SELECT flags FROM quotes").fetchone()
    assert rows == [("1", 3), ("2", 0)] and quote == (16,)
    store.close()


def test_a_lost_connection_is_transient_and_the_next_write_reconnects(database_url: str) -> None:
    """The backend killed between two writes (a PostgreSQL restart, a fail-over): the write
    raises TransientError (retry: nothing was committed), the next one connects afresh and
    prepares its statements again."""
    from common.errors import TransientError

    store = Store(database_url)
    store.connect()
    assert store.write([trade(1)], []) == (1, 0)
    pid = store.conn.info.backend_pid
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(TransientError):
        store.write([trade(2)], [])
    assert store.write([trade(2), trade(3)], []) == (2, 0)
    assert store.conn.info.backend_pid != pid
    store.close()


def test_a_nul_in_a_value_is_refused_whole_never_cut(database_url: str) -> None:
    """libpq would cut a text parameter at a NUL: the store refuses the batch as psycopg does
    (a data error: the worker isolates the frame), and commits none of it."""
    store = Store(database_url)
    store.connect()
    with pytest.raises(psycopg.DataError, match=r"NUL|0x00"):
        store.write([trade(1), trade(2, trade_id="2\x00tail"), trade(3)], [])
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM trades").fetchone() == (0,)
    assert store.write([trade(1), trade(3)], []) == (2, 0)
    store.close()
