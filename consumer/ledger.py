"""The coverage ledger: each connection's life (``feed_sessions``) from the producer's markers
(``common.markers``), and the intervals in which a symbol's feed was blind.

Markers are written by whichever consumer reads them, in any order: each event sets only its
own columns (``subscribed`` the start, ``lost``/``rolled``/``closed`` the end and the reason),
so two consumers committing out of order end with the same row. A producer run that was killed
leaves sessions without an end: the next ``started`` of the same producer name ends them at the
newest trade stored for their symbols (what was surely received), with the reason.

:func:`blind_intervals` is pure: the coverage command and the gap detector share it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from common.markers import ALIVE_STALE_S, Marker

UNSEEN_END = "ended unseen: the producer was restarted (killed or crashed)"
_REASONS = {"rolled": "rolled over", "closed": "producer stopped"}

_SUBSCRIBED = """
INSERT INTO feed_sessions (exchange, conn, context, producer, run, symbols, channels, connected_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (exchange, conn) DO UPDATE SET connected_at = EXCLUDED.connected_at,
    symbols = EXCLUDED.symbols, channels = EXCLUDED.channels, context = EXCLUDED.context
"""

_ENDED = """
INSERT INTO feed_sessions (exchange, conn, context, producer, run, symbols, channels,
                           disconnected_at, reason)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (exchange, conn) DO UPDATE SET disconnected_at = EXCLUDED.disconnected_at,
    reason = EXCLUDED.reason
"""

_STARTED = """
INSERT INTO producer_runs (exchange, producer, run, symbols, started_at) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (exchange, producer, run) DO UPDATE SET started_at = EXCLUDED.started_at,
    symbols = EXCLUDED.symbols
"""

_ALIVE = """
INSERT INTO producer_runs (exchange, producer, run, symbols, alive_at) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (exchange, producer, run) DO UPDATE
    SET alive_at = greatest(producer_runs.alive_at, EXCLUDED.alive_at)
"""

_STOPPED = """
INSERT INTO producer_runs (exchange, producer, run, symbols, stopped_at) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (exchange, producer, run) DO UPDATE SET stopped_at = EXCLUDED.stopped_at
"""

# Sessions of earlier runs of this producer that never said they ended: the run was killed.
_CLOSE_UNSEEN = """
UPDATE feed_sessions fs SET reason = %(reason)s,
    disconnected_at = coalesce(greatest(fs.connected_at, (
        SELECT max(t.ts) FROM trades t
        WHERE t.exchange = fs.exchange AND t.symbol = ANY(fs.symbols)
          AND t.ts >= fs.connected_at AND t.ts <= %(at)s)), fs.connected_at, %(at)s)
WHERE fs.exchange = %(exchange)s AND fs.producer = %(producer)s AND fs.run < %(run)s
  AND fs.disconnected_at IS NULL
"""


def _ts(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns // 1_000 / 1e6, dt.UTC).replace(
        microsecond=ns // 1_000 % 1_000_000
    )


def write_markers(conn: psycopg.Connection[object], markers: Sequence[Marker]) -> None:
    """Store ``markers`` in one transaction (idempotent: a redelivery writes the same rows)."""
    with conn.transaction(), conn.cursor() as cur:
        for m in markers:
            b = m.body
            at = _ts(m.at_ns)
            row = (m.exchange, m.conn, m.context, b.producer, b.run, b.symbols, b.channels)
            if b.event == "subscribed":
                cur.execute(_SUBSCRIBED, (*row, at))
            elif b.event in ("lost", "rolled", "closed"):
                reason = _REASONS.get(b.event) or f"lost: {b.reason}"
                cur.execute(_ENDED, (*row, at, reason))
            elif b.event == "started":
                cur.execute(_STARTED, (m.exchange, b.producer, b.run, b.symbols, at))
                cur.execute(
                    _CLOSE_UNSEEN,
                    {
                        "reason": UNSEEN_END,
                        "at": at,
                        "exchange": m.exchange,
                        "producer": b.producer,
                        "run": b.run,
                    },
                )
            elif b.event == "alive":
                cur.execute(_ALIVE, (m.exchange, b.producer, b.run, b.symbols, at))
            elif b.event == "stopped":
                cur.execute(_STOPPED, (m.exchange, b.producer, b.run, b.symbols, at))


@dataclass(frozen=True, slots=True)
class Session:
    exchange: str
    conn: str
    context: str
    producer: str
    run: str
    symbols: tuple[str, ...]
    connected: dt.datetime | None
    disconnected: dt.datetime | None
    reason: str
    alive: dt.datetime | None = None  # its producer run's newest ``alive`` marker

    def end(self, now: dt.datetime) -> tuple[dt.datetime, str]:
        """When the session stopped covering, with the reason: its end; still open, ``now``,
        unless its producer stopped saying ``alive`` (killed): then its last ``alive``."""
        if self.disconnected is not None:
            return self.disconnected, self.reason
        if self.alive is not None and self.alive < now - dt.timedelta(seconds=ALIVE_STALE_S):
            last = max(self.alive, self.connected) if self.connected else self.alive
            return last, f"producer {self.producer} silent since then (killed?)"
        return now, ""


@dataclass(frozen=True, slots=True)
class Blind:
    """An interval in which no connection covered the symbol."""

    exchange: str
    symbol: str
    start: dt.datetime
    end: dt.datetime | None  # None: still blind
    reason: str  # why it began

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else (self.end - self.start).total_seconds()


def read_sessions(
    conn: psycopg.Connection[object],
    *,
    since: dt.datetime,
    exchanges: Sequence[str] | None = None,
) -> list[Session]:
    """Sessions that were alive at or after ``since`` (or whose start is unknown yet)."""
    rows: list[tuple[Any, ...]] = conn.execute(  # type: ignore[assignment]
        "SELECT s.exchange, s.conn, s.context, s.producer, s.run, s.symbols, s.connected_at,"
        " s.disconnected_at, s.reason, r.alive_at FROM feed_sessions s"
        " LEFT JOIN producer_runs r"
        "   ON (r.exchange, r.producer, r.run) = (s.exchange, s.producer, s.run)"
        " WHERE (s.disconnected_at IS NULL OR s.disconnected_at >= %s)"
        "   AND (%s::text[] IS NULL OR s.exchange = ANY(%s))"
        " ORDER BY s.exchange, s.connected_at NULLS LAST",
        (since, exchanges, exchanges),
    ).fetchall()
    return [
        Session(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), tuple(r[5]), r[6], r[7],
                str(r[8]), r[9])
        for r in rows
    ]  # fmt: skip


def blind_intervals(
    sessions: Iterable[Session],
    exchange: str,
    symbol: str,
    *,
    since: dt.datetime,
    now: dt.datetime,
) -> list[Blind]:
    """When ``exchange``'s feed of ``symbol`` was blind between ``since`` and ``now``.

    A session covers from its start to its end (still open: to ``now``). Intervals covered by
    no session are blind; an interior one (a session came after it) is closed, the last one is
    open while nothing covers ``now``. Time before the first session is not reported (nothing
    was asked of the collector then). Make-before-break overlaps leave no blind interval.
    """
    spans = sorted(
        (
            (s.connected, *s.end(now))
            for s in sessions
            if s.exchange == exchange and symbol in s.symbols and s.connected is not None
        ),
        key=lambda span: (span[0], span[1]),
    )
    out: list[Blind] = []
    covered_to: dt.datetime | None = None
    why = ""
    for start, end, reason in spans:
        if covered_to is not None and start > covered_to and covered_to < now:
            if start > since:
                out.append(Blind(exchange, symbol, max(covered_to, since), start, why or "unknown"))
        if covered_to is None or end > covered_to:
            covered_to, why = end, reason
    if covered_to is not None and covered_to < now:
        out.append(Blind(exchange, symbol, max(covered_to, since), None, why or "unknown"))
    return out


__all__ = ["UNSEEN_END", "Blind", "Session", "blind_intervals", "read_sessions", "write_markers"]
