"""Retention in PostgreSQL: whole UTC days older than ``database.retention_days`` go.

The cutoff is whole UTC days: ``retention_days = N`` keeps the N most recent UTC days including
today, so on 2026-05-10 ``N = 7`` keeps 2026-05-04 .. 2026-05-10 (and any later day) and
everything with ``ts`` before 2026-05-04T00:00Z goes:

- the daily partitions of ``trades`` and ``quotes`` for days before the cutoff are dropped (a
  drop, not a DELETE: no dead rows, no VACUUM), one transaction each;
- rows before the cutoff in the DEFAULT partitions (days that never had a partition of their
  own: backfills, old replays) are deleted;
- the ledgers' rows that describe only data now gone are deleted: gaps whose ``before_ts`` is
  before the cutoff, connections (``feed_sessions``) that ended before it, and producer runs
  last heard of before it that no kept connection refers to. ``gap_cursors`` is never touched
  (gap detection resumes where it was, it does not search the deleted days again).

Every step waits at most ``lock_timeout_s`` (5 s) for its locks: a DROP needs an ACCESS EXCLUSIVE
lock on the partition and its parent, and writers queue behind it while it waits. A step whose
lock is not granted in time (SQLSTATE 55P03, e.g. a long query reading the table) is skipped,
logged, and done at the next check; what was dropped before it stays dropped. Drops and DEFAULT
deletes hold the schema's advisory lock (``consumer.schema``), so among several consumers one
does them at a time; the others then find nothing left to do.

The consumer runs :func:`enforce` at its first batch and then with its hourly partition check
(``consumer.commit``); ``tickvault retention`` runs it on demand (:func:`main`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from dataclasses import dataclass, field

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from common.config import load_settings
from common.errors import ConfigError
from common.logs import setup_logging

from .schema import (
    RETENTION_LOCK_TIMEOUT_S,
    TABLES,
    DailyPartition,
    count_default_before,
    delete_default_before,
    drop_partition,
    partitions_before,
    set_lock_timeout,
)

logger = logging.getLogger(__name__)

# The ledger rows that describe only data older than the cutoff, in the order they are deleted
# (a producer run goes once none of its connections is kept). One WHERE clause serves the
# dry run's count and the delete.
_LEDGERS: tuple[tuple[str, str], ...] = (
    ("gaps", "before_ts < %(cutoff)s"),
    ("feed_sessions", "disconnected_at < %(cutoff)s"),
    (
        "producer_runs",
        "greatest(started_at, alive_at, stopped_at) < %(cutoff)s AND NOT EXISTS ("
        " SELECT 1 FROM feed_sessions s"
        " WHERE (s.exchange, s.producer, s.run)"
        "     = (producer_runs.exchange, producer_runs.producer, producer_runs.run)"
        "   AND (s.disconnected_at IS NULL OR s.disconnected_at >= %(cutoff)s))",
    ),
)


def first_kept_day(days: int, today: dt.date) -> dt.date:
    """The oldest UTC day ``days`` keeps: ``today`` counts as the first of them."""
    if days < 1:
        raise ValueError(f"retention of {days} days: 1 or more (0 is off, handled by callers)")
    return today - dt.timedelta(days=days - 1)


def cutoff_of(day: dt.date) -> dt.datetime:
    """Rows with ``ts`` before this go: ``day``'s midnight, UTC."""
    return dt.datetime.combine(day, dt.time(), dt.UTC)


@dataclass
class Report:
    """What one run dropped and deleted (a dry run: what it would have)."""

    days: int
    first_kept: dt.date
    dry_run: bool = False
    partitions: list[DailyPartition] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows deleted
    busy: list[str] = field(default_factory=list)  # skipped: a lock not granted in time

    @property
    def cutoff(self) -> dt.datetime:
        return cutoff_of(self.first_kept)

    @property
    def changed(self) -> bool:
        return bool(self.partitions) or any(self.rows.values())

    def summary(self) -> str:
        """One line for the log."""
        dropped = ", ".join(p.name for p in self.partitions) or "no partition"
        rows = ", ".join(f"{n} from {t}" for t, n in self.rows.items() if n) or "no row"
        return f"dropped {dropped}; deleted {rows}"

    def lines(self) -> list[str]:
        """The command's output."""
        drop, delete = ("would drop", "would delete") if self.dry_run else ("dropped", "deleted")
        out = [
            f"retention {self.days} day(s): keeping {self.first_kept} and later, removing what "
            f"is older than {self.cutoff.isoformat()}"
            + ("; dry run: nothing changed" if self.dry_run else "")
        ]
        out += [f"{drop} {p.name} ({_size(p.size)})" for p in self.partitions]
        out += [f"{delete} {n} row(s) from {table}" for table, n in self.rows.items() if n]
        out += [
            f"skipped {what}: a lock was not granted in time (a long query or transaction on "
            "it?); run it again later"
            for what in self.busy
        ]
        if not self.changed and not self.busy:
            out.append("nothing older than the cutoff")
        return out


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size, unit = n / 1024, "kB"
    for bigger in ("MB", "GB", "TB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"


def _exists(conn: psycopg.Connection[object], name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])  # type: ignore[index]


def enforce(
    conn: psycopg.Connection[object],
    days: int,
    *,
    today: dt.date | None = None,
    dry_run: bool = False,
    lock_timeout_s: float = RETENTION_LOCK_TIMEOUT_S,
) -> Report:
    """Drop and delete what is older than the ``days`` most recent UTC days (module docstring).

    ``conn`` is in autocommit mode (the store's is), so each step is its own transaction.
    A dry run only reads (sizes and counts) and changes nothing.

    Raises:
        psycopg.Error: anything but a lock timeout (those are skipped and logged); the caller
            classifies it (``common.errors.classify``).
    """
    today = today or dt.datetime.now(dt.UTC).date()
    report = Report(days, first_kept_day(days, today), dry_run)
    cutoff = report.cutoff
    for table in TABLES:
        if not _exists(conn, table):
            continue
        old = partitions_before(conn, table, report.first_kept)
        default = f"{table}_default"
        if dry_run:
            report.partitions += old
            report.rows[default] = count_default_before(conn, table, cutoff)
            continue
        try:
            for partition in old:
                if drop_partition(conn, partition, lock_timeout_s=lock_timeout_s):
                    report.partitions.append(partition)
            report.rows[default] = delete_default_before(
                conn, table, cutoff, lock_timeout_s=lock_timeout_s
            )
        except pgerrors.LockNotAvailable as exc:
            _busy(report, table, lock_timeout_s, exc)
    if _exists(conn, "gaps"):  # migration 2
        try:
            _ledgers(conn, report, lock_timeout_s)
        except pgerrors.LockNotAvailable as exc:
            _busy(report, "the ledgers", lock_timeout_s, exc)
    if report.changed and not dry_run:
        logger.info(
            "retention (%d days, keeping %s and later): %s",
            days, report.first_kept, report.summary(),
        )  # fmt: skip
    return report


def _ledgers(conn: psycopg.Connection[object], report: Report, lock_timeout_s: float) -> None:
    params = {"cutoff": report.cutoff}
    with conn.transaction():
        if not report.dry_run:
            set_lock_timeout(conn, lock_timeout_s)
        for table, where in _LEDGERS:
            condition = sql.SQL(where)  # one of the constants above, never data
            if report.dry_run:
                query = sql.SQL("SELECT count(*) FROM {} WHERE {}")
                row = conn.execute(query.format(sql.Identifier(table), condition), params)
                counted = row.fetchone()
                report.rows[table] = int(counted[0]) if counted else 0  # type: ignore[index]
            else:
                query = sql.SQL("DELETE FROM {} WHERE {}")
                cur = conn.execute(query.format(sql.Identifier(table), condition), params)
                report.rows[table] = max(cur.rowcount, 0)


def _busy(report: Report, what: str, lock_timeout_s: float, exc: Exception) -> None:
    report.busy.append(what)
    logger.warning(
        "retention: %s skipped: a lock was not granted within %g s (%s); the next check "
        "tries again",
        what, lock_timeout_s, str(exc).strip().splitlines()[0] if str(exc).strip() else exc,
    )  # fmt: skip


# -- tickvault retention ---------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """``tickvault retention [--config X] [--dry-run] [--days N]``.

    Exit status 0 when done (or off), 1 when a step was skipped because its table was busy,
    2 for a bad argument or configuration; a server it cannot reach propagates (the CLI says 3).
    """
    parser = argparse.ArgumentParser(
        prog="tickvault retention",
        description="drop the daily partitions (and delete the DEFAULT partition's and the "
        "ledgers' rows) older than the N most recent UTC days, today included",
    )
    parser.add_argument("--config", help="TOML config file (default: $TICKVAULT_CONFIG)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would go; change nothing"
    )
    parser.add_argument(
        "--days", type=int, metavar="N", help="keep N days (overrides database.retention_days)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    settings = load_settings(args.config)
    days = settings.database.retention_days if args.days is None else args.days
    if days < 0:
        raise ConfigError("--days", f"must be 0 (keep all) or positive, got {days}")
    if days == 0:
        print(
            "retention is off (database.retention_days = 0): nothing dropped; --days N runs it once"
        )
        return 0
    with psycopg.connect(
        settings.database.url,
        autocommit=True,
        connect_timeout=5,
        application_name="tickvault-retention",
    ) as conn:
        if not _exists(conn, "trades"):
            raise ConfigError(
                "database.url",
                "no tickvault tables in this database",
                "point it at tickvault's database (or run `tickvault migrate` first)",
            )
        report = enforce(conn, days, dry_run=args.dry_run)
    for line in report.lines():
        print(line)
    return 1 if report.busy else 0
