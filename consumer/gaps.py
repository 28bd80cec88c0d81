"""The gap ledger: what is missing from the stored trades, found from what is stored.

Two kinds of gap:

- **id gaps**, on venues whose trade ids are consecutive per symbol: the ids between two stored
  neighbours. Found incrementally per symbol from a cursor (``gap_cursors``: the highest id
  already judged), only among trades older than the settle window, so N consumers committing
  out of order (or a stream that is replayed late) do not make gaps that are not there.
- **time gaps**, on the other venues: the coverage ledger's closed blind intervals
  (``consumer.ledger.blind_intervals``), when no connection covered the symbol.

Each gap is a row of ``gaps``, from ``open`` through ``backfilling`` to ``filled``,
``exchange-hole`` or ``unfillable`` (``consumer.backfill``). A gap is recorded once (unique per
exchange, symbol and first id or start time), so detection can run anywhere, again and again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from common.venues import all_venues

from .ledger import Session, blind_intervals

STATUSES = ("open", "backfilling", "filled", "exchange-hole", "unfillable")
# Re-read this much before the cursor: ids and times rise together on these venues, give or
# take trades sharing a time. Each detection reads only the trades since (a few seconds' worth).
CURSOR_MARGIN = dt.timedelta(seconds=2)

_GAPS = """
SELECT exchange, symbol, prev_id + 1, trade_id - 1, trade_id - prev_id - 1, prev_ts, ts
FROM (
    SELECT exchange, symbol, trade_id::bigint AS trade_id, ts,
           lag(trade_id::bigint) OVER w AS prev_id, lag(ts) OVER w AS prev_ts
    FROM trades
    WHERE exchange = ANY(%s) AND ts >= %s AND trade_id ~ '^[0-9]{1,18}$'
    WINDOW w AS (PARTITION BY exchange, symbol ORDER BY trade_id::bigint)
) t
WHERE trade_id - prev_id > 1
ORDER BY exchange, symbol, prev_id
"""

# One symbol's new id gaps after its cursor, and the new cursor (the newest settled trade).
_ID_GAPS = """
WITH r AS (
    SELECT trade_id::bigint AS id, ts FROM trades
    WHERE exchange = %(exchange)s AND symbol = %(symbol)s AND ts >= %(start)s AND ts < %(until)s
      AND trade_id ~ '^[0-9]{1,18}$'
), w AS (
    SELECT id, ts, lag(id) OVER (ORDER BY id) AS prev_id, lag(ts) OVER (ORDER BY id) AS prev_ts
    FROM r
)
SELECT prev_id + 1, id - 1, prev_ts, ts FROM w
WHERE id - prev_id > 1 AND prev_id >= %(cursor)s
UNION ALL
(SELECT NULL, id, NULL, ts FROM r ORDER BY id DESC LIMIT 1)
"""

_INSERT_ID_GAP = """
INSERT INTO gaps (exchange, symbol, first_missing, last_missing, after_ts, before_ts, note)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (exchange, symbol, first_missing) WHERE first_missing IS NOT NULL DO NOTHING
"""

_INSERT_TIME_GAP = """
INSERT INTO gaps (exchange, symbol, after_ts, before_ts, note) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (exchange, symbol, after_ts) WHERE first_missing IS NULL DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class Gap:
    exchange: str
    symbol: str
    first_missing: int
    last_missing: int
    missing: int
    after: dt.datetime  # time of the last trade before the gap
    before: dt.datetime  # time of the first trade after it


@dataclass(frozen=True, slots=True)
class GapRow:
    """A row of the gap ledger."""

    id: int
    exchange: str
    symbol: str
    first_missing: int | None
    last_missing: int | None
    after: dt.datetime
    before: dt.datetime
    detected_at: dt.datetime
    status: str
    rows_recovered: int
    attempts: int
    note: str

    @property
    def missing(self) -> int | None:
        if self.first_missing is None or self.last_missing is None:
            return None
        return self.last_missing - self.first_missing + 1


GAP_COLUMNS = (
    "id, exchange, symbol, first_missing, last_missing, after_ts, before_ts, detected_at,"
    " status, rows_recovered, attempts, note"
)


def gap_row(r: Sequence[Any]) -> GapRow:
    return GapRow(
        int(r[0]), str(r[1]), str(r[2]), r[3], r[4], r[5], r[6], r[7], str(r[8]), int(r[9]),
        int(r[10]), str(r[11]),
    )  # fmt: skip


def checked_exchanges(exchanges: Sequence[str] | None = None) -> list[str]:
    """The exchanges whose ids allow gap detection (of ``exchanges``, or all)."""
    venues = all_venues()
    names = exchanges or list(venues)
    return [n for n in names if n in venues and venues[n].consecutive_ids]


def find_gaps(
    conn: psycopg.Connection[object], *, since: dt.datetime, exchanges: Sequence[str]
) -> list[Gap]:
    """Every id gap in the stored trades since ``since`` (a full scan: ``tickvault gaps``)."""
    rows = conn.execute(_GAPS, (list(exchanges), since)).fetchall()
    return [Gap(*row) for row in rows]  # type: ignore[misc]


def detect_id_gaps(
    conn: psycopg.Connection[object],
    exchange: str,
    symbol: str,
    *,
    now: dt.datetime,
    settle: dt.timedelta,
    lookback: dt.timedelta,
) -> int:
    """Record ``symbol``'s new id gaps among trades older than ``now - settle``; returns how
    many were new. Advances the symbol's cursor in the same transaction."""
    until = now - settle
    with conn.transaction():
        row = conn.execute(
            "SELECT checked_id, checked_ts FROM gap_cursors"
            " WHERE exchange = %s AND symbol = %s FOR UPDATE",
            (exchange, symbol),
        ).fetchone()
        if row is None:
            cursor, start = -1, now - lookback
        else:
            cursor, start = int(row[0]), row[1] - CURSOR_MARGIN  # type: ignore[index]
        params = {"exchange": exchange, "symbol": symbol, "start": start, "until": until}
        rows: list[tuple[Any, ...]] = conn.execute(  # type: ignore[assignment]
            _ID_GAPS, {**params, "cursor": cursor}
        ).fetchall()
        new = 0
        newest: tuple[int, dt.datetime] | None = None
        for first, last, after, before in rows:
            if first is None:
                newest = (int(last), before)
                continue
            note = f"{int(last) - int(first) + 1} trade ids missing between stored neighbours"
            cur = conn.execute(_INSERT_ID_GAP, (exchange, symbol, first, last, after, before, note))
            new += cur.rowcount
        if newest is not None and newest[0] > cursor:
            conn.execute(
                "INSERT INTO gap_cursors (exchange, symbol, checked_id, checked_ts)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (exchange, symbol) DO UPDATE"
                " SET checked_id = EXCLUDED.checked_id, checked_ts = EXCLUDED.checked_ts",
                (exchange, symbol, newest[0], newest[1]),
            )
    return new


def detect_time_gaps(
    conn: psycopg.Connection[object],
    sessions: Sequence[Session],
    exchange: str,
    symbols: Sequence[str],
    *,
    now: dt.datetime,
    settle: dt.timedelta,
    since: dt.datetime,
) -> int:
    """Record the closed blind intervals of ``exchange``'s ``symbols`` (ended before
    ``now - settle``) as time gaps; returns how many were new."""
    new = 0
    with conn.transaction():
        rows = conn.execute(
            "SELECT symbol, after_ts FROM gaps"
            " WHERE exchange = %s AND first_missing IS NULL AND after_ts >= %s",
            (exchange, since),
        ).fetchall()
        recorded = {(str(r[0]), r[1]) for r in rows}  # type: ignore[index]
        for symbol in symbols:
            for blind in blind_intervals(sessions, exchange, symbol, since=since, now=now):
                if blind.end is None or blind.end > now - settle or blind.end <= blind.start:
                    continue
                if (symbol, blind.start) in recorded or blind.start <= since:
                    continue  # recorded in an earlier round, or older than the lookback
                note = f"feed blind {blind.seconds:.1f} s: {blind.reason}"[:500]
                cur = conn.execute(
                    _INSERT_TIME_GAP, (exchange, symbol, blind.start, blind.end, note)
                )
                new += cur.rowcount
    return new


def read_gaps(
    conn: psycopg.Connection[object],
    *,
    since: dt.datetime | None = None,
    exchanges: Sequence[str] | None = None,
    symbol: str | None = None,
    statuses: Sequence[str] | None = None,
) -> list[GapRow]:
    rows = conn.execute(
        f"SELECT {GAP_COLUMNS} FROM gaps"
        " WHERE (%(since)s::timestamptz IS NULL OR before_ts >= %(since)s)"
        "   AND (%(ex)s::text[] IS NULL OR exchange = ANY(%(ex)s))"
        "   AND (%(sym)s::text IS NULL OR symbol = %(sym)s)"
        "   AND (%(st)s::text[] IS NULL OR status = ANY(%(st)s))"
        " ORDER BY exchange, symbol, after_ts",
        {
            "since": since,
            "ex": list(exchanges) if exchanges else None,
            "sym": symbol,
            "st": list(statuses) if statuses else None,
        },
    ).fetchall()
    return [gap_row(r) for r in rows]  # type: ignore[arg-type]


def open_gap_counts(conn: psycopg.Connection[object]) -> dict[str, int]:
    """Exchange -> gaps not yet settled (``open`` or ``backfilling``)."""
    rows = conn.execute(
        "SELECT exchange, count(*) FROM gaps WHERE status IN ('open', 'backfilling')"
        " GROUP BY exchange"
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}  # type: ignore[index]


__all__ = [
    "GAP_COLUMNS",
    "STATUSES",
    "Gap",
    "GapRow",
    "checked_exchanges",
    "detect_id_gaps",
    "detect_time_gaps",
    "find_gaps",
    "gap_row",
    "open_gap_counts",
    "read_gaps",
]
