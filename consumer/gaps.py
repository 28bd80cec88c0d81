"""The gap ledger: what is missing from the stored trades, found from what is stored.

Two kinds of gap:

- **id gaps**, on venues whose trade ids are consecutive per symbol: the ids between two stored
  neighbours. Found incrementally per symbol from a cursor (``gap_cursors``: the highest id
  already judged), only among trades older than the settle window, so N consumers committing
  out of order (or a stream that is replayed late) do not make gaps that are not there. Each id
  space of the venue on its own (``Venue.id_prefixes``: Binance spot's ``agg-`` rows of
  ``@aggTrade`` are consecutive aggregate ids, apart from its plain trade ids); a gap and a
  cursor name theirs (``id_prefix``, '' for plain ids).
- **time gaps**, on the other venues: the coverage ledger's closed blind intervals
  (``consumer.ledger.blind_intervals``), when no connection covered the symbol.

Each gap is a row of ``gaps``, from ``open`` through ``backfilling`` to ``filled``,
``exchange-hole`` or ``unfillable`` (``consumer.backfill``). A gap is recorded once (unique per
exchange, symbol and first id or start time), so detection can run anywhere, again and again.
"""

from __future__ import annotations

import datetime as dt
import re
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

# The ids of one id space: trade_id is the prefix and up to 18 digits (%(pattern)s, see
# id_pattern); the id starts at character %(skip)s (the prefix's length + 1).
_GAPS = """
SELECT exchange, symbol, prev_id + 1, trade_id - 1, trade_id - prev_id - 1, prev_ts, ts
FROM (
    SELECT exchange, symbol, substr(trade_id, %(skip)s)::bigint AS trade_id, ts,
           lag(substr(trade_id, %(skip)s)::bigint) OVER w AS prev_id, lag(ts) OVER w AS prev_ts
    FROM trades
    WHERE exchange = ANY(%(exchanges)s) AND ts >= %(since)s AND trade_id ~ %(pattern)s
    WINDOW w AS (PARTITION BY exchange, symbol ORDER BY substr(trade_id, %(skip)s)::bigint)
) t
WHERE trade_id - prev_id > 1
ORDER BY exchange, symbol, prev_id
"""

# One symbol's new id gaps after its cursor, and the new cursor (the newest settled trade).
_ID_GAPS = """
WITH r AS (
    SELECT substr(trade_id, %(skip)s)::bigint AS id, ts FROM trades
    WHERE exchange = %(exchange)s AND symbol = %(symbol)s AND ts >= %(start)s AND ts < %(until)s
      AND trade_id ~ %(pattern)s
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
INSERT INTO gaps (exchange, symbol, id_prefix, first_missing, last_missing, after_ts, before_ts,
                  note)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (exchange, symbol, id_prefix, first_missing) WHERE first_missing IS NOT NULL
DO NOTHING
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
    id_prefix: str = ""  # its id space: the missing trade_ids are this and the ids

    @property
    def ids(self) -> str:
        """The missing ids as the stored trade_ids read: ``agg-4..agg-6``."""
        return id_range(self.id_prefix, self.first_missing, self.last_missing)


def id_range(prefix: str, first: int, last: int) -> str:
    """Missing ids as the stored trade_ids read, for people: ``agg-4..agg-6``."""
    return f"{prefix}{first}..{prefix}{last}"


def id_pattern(prefix: str) -> dict[str, object]:
    """The query parameters that select the trade_ids of one id space (``_GAPS``)."""
    return {"pattern": "^" + re.escape(prefix) + "[0-9]{1,18}$", "skip": len(prefix) + 1}


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
    id_prefix: str = ""  # an id gap's id space ('' for plain ids)

    @property
    def ids(self) -> str | None:
        """An id gap's missing ids as the stored trade_ids read (``agg-4..agg-6``)."""
        if self.first_missing is None or self.last_missing is None:
            return None
        return id_range(self.id_prefix, self.first_missing, self.last_missing)

    @property
    def missing(self) -> int | None:
        if self.first_missing is None or self.last_missing is None:
            return None
        return self.last_missing - self.first_missing + 1


GAP_COLUMNS = (
    "id, exchange, symbol, first_missing, last_missing, after_ts, before_ts, detected_at,"
    " status, rows_recovered, attempts, note, id_prefix"
)


def gap_row(r: Sequence[Any]) -> GapRow:
    return GapRow(
        int(r[0]), str(r[1]), str(r[2]), r[3], r[4], r[5], r[6], r[7], str(r[8]), int(r[9]),
        int(r[10]), str(r[11]), str(r[12]),
    )  # fmt: skip


def checked_exchanges(exchanges: Sequence[str] | None = None) -> list[str]:
    """The exchanges whose ids allow gap detection (of ``exchanges``, or all)."""
    venues = all_venues()
    names = exchanges or list(venues)
    return [n for n in names if n in venues and venues[n].consecutive_ids]


def find_gaps(
    conn: psycopg.Connection[object], *, since: dt.datetime, exchanges: Sequence[str]
) -> list[Gap]:
    """Every id gap in the stored trades since ``since`` (a full scan: ``tickvault gaps``),
    in each id space of the exchanges."""
    venues = all_venues()
    spaces: dict[str, list[str]] = {}  # id prefix -> the exchanges that have that id space
    for e in exchanges:
        for prefix in venues[e].id_prefixes if e in venues else ("",):
            spaces.setdefault(prefix, []).append(e)
    gaps: list[Gap] = []
    for prefix, names in spaces.items():
        params = {"exchanges": names, "since": since, **id_pattern(prefix)}
        rows = conn.execute(_GAPS, params).fetchall()
        gaps += [Gap(*row, id_prefix=prefix) for row in rows]  # type: ignore[misc]
    return sorted(gaps, key=lambda g: (g.exchange, g.symbol, g.id_prefix, g.first_missing))


def detect_id_gaps(
    conn: psycopg.Connection[object],
    exchange: str,
    symbol: str,
    *,
    now: dt.datetime,
    settle: dt.timedelta,
    lookback: dt.timedelta,
    id_prefix: str = "",
) -> int:
    """Record ``symbol``'s new id gaps (in the id space ``id_prefix``) among trades older than
    ``now - settle``; returns how many were new. Advances the symbol's cursor of that id space
    in the same transaction."""
    until = now - settle
    with conn.transaction():
        row = conn.execute(
            "SELECT checked_id, checked_ts FROM gap_cursors"
            " WHERE exchange = %s AND symbol = %s AND id_prefix = %s FOR UPDATE",
            (exchange, symbol, id_prefix),
        ).fetchone()
        if row is None:
            cursor, start = -1, now - lookback
        else:
            cursor, start = int(row[0]), row[1] - CURSOR_MARGIN  # type: ignore[index]
        params = {
            "exchange": exchange, "symbol": symbol, "start": start, "until": until,
            **id_pattern(id_prefix),
        }  # fmt: skip
        rows: list[tuple[Any, ...]] = conn.execute(  # type: ignore[assignment]
            _ID_GAPS, {**params, "cursor": cursor}
        ).fetchall()
        new = 0
        newest: tuple[int, dt.datetime] | None = None
        for first, last, after, before in rows:
            if first is None:
                newest = (int(last), before)
                continue
            kind = "aggregate trade ids" if id_prefix else "trade ids"
            note = f"{int(last) - int(first) + 1} {kind} missing between stored neighbours"
            cur = conn.execute(
                _INSERT_ID_GAP, (exchange, symbol, id_prefix, first, last, after, before, note)
            )
            new += cur.rowcount
        if newest is not None and newest[0] > cursor:
            _set_cursor(conn, exchange, symbol, id_prefix, newest[0], newest[1])
        elif newest is None and (row is None or until > row[1]):  # type: ignore[index]
            # Nothing of this id space before ``until`` (a quiet symbol, or a space no feed
            # fills: @trade feeds have no agg- rows): the next round starts from there, not
            # from the lookback again (a day of the other space's rows, every round).
            _set_cursor(conn, exchange, symbol, id_prefix, cursor, until)
    return new


def _set_cursor(
    conn: psycopg.Connection[object],
    exchange: str,
    symbol: str,
    id_prefix: str,
    checked_id: int,
    checked_ts: dt.datetime,
) -> None:
    conn.execute(
        "INSERT INTO gap_cursors (exchange, symbol, id_prefix, checked_id, checked_ts)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (exchange, symbol, id_prefix)"
        " DO UPDATE SET checked_id = EXCLUDED.checked_id, checked_ts = EXCLUDED.checked_ts",
        (exchange, symbol, id_prefix, checked_id, checked_ts),
    )


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
    "id_pattern",
    "open_gap_counts",
    "read_gaps",
]
