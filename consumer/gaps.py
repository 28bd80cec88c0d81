"""Gaps in stored trades: missing ids where a venue's trade ids are consecutive per symbol.

A gap is the range of ids between two stored neighbours; its times say when it happened. A gap
here means trades the venue sent that are not in the table (a disconnect, a dropped frame, a
dead-lettered one) - never hidden, so it can be backfilled.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from common.venues import all_venues

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


@dataclass(frozen=True, slots=True)
class Gap:
    exchange: str
    symbol: str
    first_missing: int
    last_missing: int
    missing: int
    after: dt.datetime  # time of the last trade before the gap
    before: dt.datetime  # time of the first trade after it


def checked_exchanges(exchanges: Sequence[str] | None = None) -> list[str]:
    """The exchanges whose ids allow gap detection (of ``exchanges``, or all)."""
    venues = all_venues()
    names = exchanges or list(venues)
    return [n for n in names if n in venues and venues[n].consecutive_ids]


def find_gaps(
    conn: psycopg.Connection[object], *, since: dt.datetime, exchanges: Sequence[str]
) -> list[Gap]:
    rows = conn.execute(_GAPS, (list(exchanges), since)).fetchall()
    return [Gap(*row) for row in rows]  # type: ignore[misc]
