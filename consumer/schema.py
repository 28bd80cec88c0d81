"""The schema and its idempotent migrations, and daily partitions.

``trades`` and ``quotes`` are range-partitioned by day on ``ts``; a DEFAULT partition takes any
row whose day has no partition yet, so no row is ever refused for its date. When a day's
partition is created later, rows already in the default partition for that day are moved into it
in the same transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any

import psycopg
from psycopg import sql

from common.errors import FatalError

logger = logging.getLogger(__name__)

TABLES = ("trades", "quotes")

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE IF NOT EXISTS trades (
            exchange  text        NOT NULL,
            symbol    text        NOT NULL,
            trade_id  text        NOT NULL,
            price     numeric     NOT NULL,
            amount    numeric     NOT NULL,
            side      text        CHECK (side IN ('buy', 'sell')),
            ts        timestamptz NOT NULL,
            recv_ts   timestamptz NOT NULL,
            PRIMARY KEY (exchange, symbol, ts, trade_id)
        ) PARTITION BY RANGE (ts);
        CREATE TABLE IF NOT EXISTS trades_default PARTITION OF trades DEFAULT;

        CREATE TABLE IF NOT EXISTS quotes (
            exchange   text        NOT NULL,
            symbol     text        NOT NULL,
            update_id  text        NOT NULL,
            bid_price  numeric     NOT NULL,
            bid_amount numeric     NOT NULL,
            ask_price  numeric     NOT NULL,
            ask_amount numeric     NOT NULL,
            ts         timestamptz NOT NULL,
            recv_ts    timestamptz NOT NULL,
            PRIMARY KEY (exchange, symbol, ts, update_id)
        ) PARTITION BY RANGE (ts);
        CREATE TABLE IF NOT EXISTS quotes_default PARTITION OF quotes DEFAULT;
        """,
    ),
    (
        2,
        # The completeness ledgers (consumer.ledger, consumer.gaps): connections' lives from
        # the producer's markers, and the gaps found in what is stored, with their backfill.
        """
        CREATE TABLE IF NOT EXISTS feed_sessions (
            exchange        text        NOT NULL,
            conn            text        NOT NULL,
            context         text        NOT NULL DEFAULT '',
            producer        text        NOT NULL,
            run             text        NOT NULL,
            symbols         text[]      NOT NULL DEFAULT '{}',
            channels        text[]      NOT NULL DEFAULT '{}',
            connected_at    timestamptz,
            disconnected_at timestamptz,
            reason          text        NOT NULL DEFAULT '',
            PRIMARY KEY (exchange, conn)
        );
        CREATE INDEX IF NOT EXISTS feed_sessions_time ON feed_sessions (exchange, connected_at);

        CREATE TABLE IF NOT EXISTS producer_runs (
            exchange   text        NOT NULL,
            producer   text        NOT NULL,
            run        text        NOT NULL,
            symbols    text[]      NOT NULL DEFAULT '{}',
            started_at timestamptz,
            alive_at   timestamptz,  -- its newest "alive" marker
            stopped_at timestamptz,
            PRIMARY KEY (exchange, producer, run)
        );

        CREATE TABLE IF NOT EXISTS gaps (
            id             bigserial   PRIMARY KEY,
            exchange       text        NOT NULL,
            symbol         text        NOT NULL,
            first_missing  bigint,
            last_missing   bigint,
            after_ts       timestamptz NOT NULL,
            before_ts      timestamptz NOT NULL,
            detected_at    timestamptz NOT NULL DEFAULT now(),
            status         text        NOT NULL DEFAULT 'open' CHECK (status IN
                           ('open', 'backfilling', 'filled', 'exchange-hole', 'unfillable')),
            rows_recovered bigint      NOT NULL DEFAULT 0,
            attempts       int         NOT NULL DEFAULT 0,
            note           text        NOT NULL DEFAULT '',
            updated_at     timestamptz NOT NULL DEFAULT now(),
            CHECK ((first_missing IS NULL) = (last_missing IS NULL)),
            CHECK (first_missing IS NULL OR first_missing <= last_missing)
        );
        CREATE UNIQUE INDEX IF NOT EXISTS gaps_by_id ON gaps (exchange, symbol, first_missing)
            WHERE first_missing IS NOT NULL;
        CREATE UNIQUE INDEX IF NOT EXISTS gaps_by_time ON gaps (exchange, symbol, after_ts)
            WHERE first_missing IS NULL;
        CREATE INDEX IF NOT EXISTS gaps_pending ON gaps (updated_at)
            WHERE status IN ('open', 'backfilling');

        CREATE TABLE IF NOT EXISTS gap_cursors (
            exchange   text        NOT NULL,
            symbol     text        NOT NULL,
            checked_id bigint      NOT NULL,
            checked_ts timestamptz NOT NULL,
            PRIMARY KEY (exchange, symbol)
        );
        """,
    ),
    (
        3,
        # Abnormal trades and quotes are flagged, never dropped (consumer.flags): the checks
        # each row failed, as bits; 0 is clean. Existing rows read as clean (a metadata-only
        # change: no table rewrite).
        """
        ALTER TABLE trades ADD COLUMN IF NOT EXISTS flags smallint NOT NULL DEFAULT 0;
        ALTER TABLE quotes ADD COLUMN IF NOT EXISTS flags smallint NOT NULL DEFAULT 0;
        """,
    ),
    (
        4,
        # Id gaps per id space: a symbol's trade_ids are its plain ids, or a prefix and an id
        # (Binance spot's @aggTrade rows: "agg-<aggregate id>", consecutive on their own). The
        # ledger and the cursors name the space ('' for plain ids); existing rows are plain.
        """
        ALTER TABLE gaps ADD COLUMN IF NOT EXISTS id_prefix text NOT NULL DEFAULT '';
        DROP INDEX IF EXISTS gaps_by_id;
        CREATE UNIQUE INDEX IF NOT EXISTS gaps_by_space_id
            ON gaps (exchange, symbol, id_prefix, first_missing) WHERE first_missing IS NOT NULL;
        ALTER TABLE gap_cursors ADD COLUMN IF NOT EXISTS id_prefix text NOT NULL DEFAULT '';
        ALTER TABLE gap_cursors DROP CONSTRAINT IF EXISTS gap_cursors_pkey;
        ALTER TABLE gap_cursors ADD PRIMARY KEY (exchange, symbol, id_prefix);
        """,
    ),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]  # the newest schema this code knows


class NewerSchema(FatalError):
    """The database was migrated by a newer tickvault: this one stops before it misreads a
    table whose meaning changed (after migration 4 an older backfiller would take a gap of
    ``agg-`` ids for plain trade ids, fetch the wrong ones and close the gap: a loss hidden)."""

    def __init__(self, version: int) -> None:
        super().__init__(
            "postgresql",
            f"schema version {version}",
            f"the database's schema is at version {version}, newer than this tickvault's "
            f"({SCHEMA_VERSION}); its tables may hold what this version would misread",
            "run the tickvault that migrated it (every consumer, and `tickvault migrate`)",
        )
        self.version = version


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The newest migration applied (0: none), from ``tickvault_migrations``, which exists."""
    row = conn.execute("SELECT coalesce(max(version), 0) FROM tickvault_migrations").fetchone()
    return int(row[0]) if row else 0


# Serialises migrations and partition maintenance between consumers starting together.
_LOCK_KEY = 0x7469636B  # "tick"


def migrate(
    conn: psycopg.Connection[object], *, days_ahead: int = 3, retention_days: int = 0
) -> int:
    """Apply pending migrations and make partitions from yesterday (today when
    ``retention_days`` is 1: see :func:`ensure_partitions`) to ``days_ahead``.

    Returns the schema version. Safe to run concurrently and repeatedly.

    Raises:
        NewerSchema: a newer tickvault migrated the database past :data:`SCHEMA_VERSION`
            (nothing is changed; a FatalError: the process stops with its message).
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS tickvault_migrations ("
            " version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = schema_version(conn)
        if current > SCHEMA_VERSION:
            raise NewerSchema(current)
        for version, statement in MIGRATIONS:
            if version > current:
                conn.execute(statement.encode())
                conn.execute("INSERT INTO tickvault_migrations (version) VALUES (%s)", (version,))
                logger.info("applied migration %d", version)
                current = version
    ensure_partitions(conn, days_ahead=days_ahead, retention_days=retention_days)
    return current


def partition_name(table: str, day: dt.date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def ensure_partitions(
    conn: psycopg.Connection[object],
    *,
    days_ahead: int = 3,
    today: dt.date | None = None,
    retention_days: int = 0,
) -> list[str]:
    """Create the daily partitions from yesterday to ``today + days_ahead`` that are missing.

    Yesterday's takes its late rows out of DEFAULT, unless ``retention_days`` (``database.
    retention_days``) is 1: retention keeps today only, and would drop it again each hour."""
    today = today or dt.datetime.now(dt.UTC).date()
    created = []
    for offset in range(0 if retention_days == 1 else -1, days_ahead + 1):
        day = today + dt.timedelta(days=offset)
        for table in TABLES:
            if create_partition(conn, table, day):
                created.append(partition_name(table, day))
    if created:
        logger.info("created partitions %s", ", ".join(created))
    return created


def create_partition(conn: psycopg.Connection[object], table: str, day: dt.date) -> bool:
    """Create ``table``'s partition for ``day`` (UTC), moving that day's rows out of DEFAULT."""
    name = partition_name(table, day)
    lo = dt.datetime.combine(day, dt.time(), dt.UTC)
    hi = lo + dt.timedelta(days=1)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        exists = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
        if exists and exists[0] is not None:  # type: ignore[index]
            return False
        ident, parent = sql.Identifier(name), sql.Identifier(table)
        default = sql.Identifier(f"{table}_default")
        conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(
                ident, parent
            )
        )
        conn.execute(
            sql.SQL(
                "WITH moved AS (DELETE FROM {} WHERE ts >= %s AND ts < %s RETURNING *) "
                "INSERT INTO {} SELECT * FROM moved"
            ).format(default, ident),
            (lo, hi),
        )
        conn.execute(
            # DDL takes no parameters: the bounds are literals (quoted by psycopg).
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                parent, ident, sql.Literal(lo.isoformat()), sql.Literal(hi.isoformat())
            )
        )
    return True


# -- retention ----------------------------------------------------------------------------------
# Dropping a partition takes an ACCESS EXCLUSIVE lock on it and on its parent: while the DROP
# waits for it, every writer queues behind. So each retention step waits at most this long for
# its locks (SET LOCAL lock_timeout), then gives up with SQLSTATE 55P03 (LockNotAvailable).
RETENTION_LOCK_TIMEOUT_S = 5.0


def partition_day(table: str, name: str) -> dt.date | None:
    """The UTC day of ``table``'s daily partition ``name`` (``trades_p20261124``); None for any
    other name (the DEFAULT partition, a partition someone else attached)."""
    prefix = f"{table}_p"
    stamp = name[len(prefix) :]
    if not name.startswith(prefix) or len(stamp) != 8 or not stamp.isdigit():
        return None
    try:
        return dt.date(int(stamp[:4]), int(stamp[4:6]), int(stamp[6:]))
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class DailyPartition:
    table: str
    schema: str
    name: str
    day: dt.date
    size: int  # bytes, with its indexes (pg_total_relation_size)


def partitions_before(
    conn: psycopg.Connection[object], table: str, day: dt.date
) -> list[DailyPartition]:
    """``table``'s daily partitions for days before ``day``, oldest first."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname, pg_total_relation_size(c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE i.inhparent = to_regclass(%s)",
        (table,),
    ).fetchall()
    out = []
    for row in rows:
        schema, name, size = (str(row[0]), str(row[1]), row[2])  # type: ignore[index]
        born = partition_day(table, name)
        # size NULL: dropped meanwhile by another session (the catalog row was still visible)
        if born is not None and born < day and size is not None:
            out.append(DailyPartition(table, schema, name, born, int(size)))
    return sorted(out, key=lambda p: p.day)


def set_lock_timeout(conn: psycopg.Connection[object], seconds: float) -> None:
    """``SET LOCAL lock_timeout``: for the current transaction only; it bounds the advisory
    lock's wait too."""
    value = f"{max(1, round(seconds * 1000))}ms"
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (value,))


def drop_partition(
    conn: psycopg.Connection[object],
    partition: DailyPartition,
    *,
    lock_timeout_s: float = RETENTION_LOCK_TIMEOUT_S,
) -> bool:
    """Drop one daily partition, under the schema's advisory lock (one dropper at a time).

    Returns False when it is already gone (another consumer dropped it first).

    Raises:
        psycopg.errors.LockNotAvailable: a lock was not granted within ``lock_timeout_s``
            (a long query reads the table): nothing was dropped.
    """
    with conn.transaction():
        set_lock_timeout(conn, lock_timeout_s)
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        ident = sql.Identifier(partition.schema, partition.name)
        exists = conn.execute("SELECT to_regclass(%s)", (ident.as_string(conn),)).fetchone()
        if exists is None or exists[0] is None:  # type: ignore[index]
            return False
        conn.execute(sql.SQL("DROP TABLE {}").format(ident))
    return True


def delete_default_before(
    conn: psycopg.Connection[object],
    table: str,
    cutoff: dt.datetime,
    *,
    lock_timeout_s: float = RETENTION_LOCK_TIMEOUT_S,
) -> int:
    """Delete the rows older than ``cutoff`` from ``table``'s DEFAULT partition (days that never
    had a partition of their own); returns how many. Raises LockNotAvailable as
    :func:`drop_partition` does."""
    with conn.transaction():
        set_lock_timeout(conn, lock_timeout_s)
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        cur = conn.execute(
            sql.SQL("DELETE FROM {} WHERE ts < %s").format(sql.Identifier(f"{table}_default")),
            (cutoff,),
        )
        return max(cur.rowcount, 0)


def count_default_before(conn: psycopg.Connection[object], table: str, cutoff: dt.datetime) -> int:
    """How many rows :func:`delete_default_before` would delete."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE ts < %s").format(sql.Identifier(f"{table}_default")),
        (cutoff,),
    ).fetchone()
    return int(row[0]) if row else 0  # type: ignore[index]


def drop_partitions_before(
    conn: psycopg.Connection[object],
    day: dt.date,
    *,
    lock_timeout_s: float = RETENTION_LOCK_TIMEOUT_S,
) -> list[str]:
    """Retention: drop the daily partitions of every table for days before ``day``, one
    transaction each. Returns the dropped names. Rows of those days in the DEFAULT partition
    stay (:func:`delete_default_before`); ``consumer.retention`` does both.

    Raises:
        psycopg.errors.LockNotAvailable: as :func:`drop_partition`; the partitions dropped
            before it stay dropped.
    """
    dropped = []
    for table in TABLES:
        for partition in partitions_before(conn, table, day):
            if drop_partition(conn, partition, lock_timeout_s=lock_timeout_s):
                dropped.append(partition.name)
    return dropped
