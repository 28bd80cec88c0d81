"""The schema and its idempotent migrations, and daily partitions.

``trades`` and ``quotes`` are range-partitioned by day on ``ts``; a DEFAULT partition takes any
row whose day has no partition yet, so no row is ever refused for its date. When a day's
partition is created later, rows already in the default partition for that day are moved into it
in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import logging

import psycopg
from psycopg import sql

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
]

# Serialises migrations and partition maintenance between consumers starting together.
_LOCK_KEY = 0x7469636B  # "tick"


def migrate(conn: psycopg.Connection[object], *, days_ahead: int = 3) -> int:
    """Apply pending migrations and make partitions from yesterday to ``days_ahead``.

    Returns the schema version. Safe to run concurrently and repeatedly.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS tickvault_migrations ("
            " version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT coalesce(max(version), 0) FROM tickvault_migrations").fetchone()
        current = int(row[0]) if row else 0  # type: ignore[index]
        for version, statement in MIGRATIONS:
            if version > current:
                conn.execute(statement.encode())
                conn.execute("INSERT INTO tickvault_migrations (version) VALUES (%s)", (version,))
                logger.info("applied migration %d", version)
                current = version
    ensure_partitions(conn, days_ahead=days_ahead)
    return current


def partition_name(table: str, day: dt.date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def ensure_partitions(
    conn: psycopg.Connection[object],
    *,
    days_ahead: int = 3,
    today: dt.date | None = None,
) -> list[str]:
    """Create the daily partitions from yesterday to ``today + days_ahead`` that are missing."""
    today = today or dt.datetime.now(dt.UTC).date()
    created = []
    for offset in range(-1, days_ahead + 1):
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


def drop_partitions_before(conn: psycopg.Connection[object], day: dt.date) -> list[str]:
    """Retention: drop daily partitions older than ``day``. Returns the dropped names."""
    dropped = []
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = ANY(%s)",
        (list(TABLES),),
    ).fetchall()
    for row in rows:
        text = str(row[0])  # type: ignore[index]
        stamp = text.rsplit("_p", 1)[-1]
        if (
            stamp.isdigit()
            and len(stamp) == 8
            and dt.date.fromisoformat(f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:]}") < day
        ):
            with conn.transaction():
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(text)))
            dropped.append(text)
    return dropped
