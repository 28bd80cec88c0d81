"""Backfill: detect gaps, fetch what is missing from the venues' REST APIs, settle each gap.

One :class:`Backfiller` per consumer process (a thread, when ``backfill.auto``) or per
``tickvault backfill`` run. Several may run at once against one database:

- detection runs under a PostgreSQL advisory lock (one detector at a time; the ledger rows are
  unique, so a second run would only find nothing new);
- a gap is claimed with ``FOR UPDATE SKIP LOCKED`` (``open`` -> ``backfilling``); a claim older
  than ``CLAIM_STALE`` (its backfiller died) is taken over;
- REST trades go through the venue's normalisation (``common.rest``), the same validation and
  the same insert as WebSocket rows, so a trade seen both ways is stored once.

How a gap ends:

======================  =====================================================================
``filled``              every missing id is now stored (from REST, or late from the stream);
                        a time gap: the venue served the whole interval
``exchange-hole``       the venue served the range but some ids are in no answer (venues skip
                        ids): what is left is listed in the note
``unfillable``          the venue cannot serve the span (a shallow endpoint, too old, refused,
                        no REST trade history, or it failed ``backfill.max_attempts`` times)
``open``                not tried yet, or the venue was unavailable: tried again with backoff
======================  =====================================================================
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import httpx
import psycopg

from common.config import Settings, parse_duration
from common.errors import Action, FatalError, TransientError, classify
from common.metrics import Metrics
from common.records import Trade
from common.rest import BadAnswer, Span, TradeHistory, all_histories
from common.rest.fetch import Bucket, Fetched, Unavailable, fetch_span
from common.venues import all_venues

from .gaps import (
    GAP_COLUMNS,
    GapRow,
    detect_id_gaps,
    detect_time_gaps,
    gap_row,
    id_pattern,
    open_gap_counts,
)
from .ledger import read_sessions
from .store import Store
from .validate import Validator

logger = logging.getLogger(__name__)

DETECT_LOCK = 0x7469636C  # "ticl": one gap detector at a time
CLAIM_STALE = dt.timedelta(minutes=5)
CLAIM_TOUCH_S = 30.0  # a backfill in progress renews its claim this often
NOTE_MAX = 500

_CLAIM = f"""
UPDATE gaps SET status = 'backfilling', attempts = attempts + 1, updated_at = now()
WHERE id = (
    SELECT id FROM gaps
    WHERE ((status = 'open'
            AND (%(now)s OR updated_at <= now() - make_interval(secs => least(300, 2 ^ attempts))))
           OR (status = 'backfilling' AND updated_at < now() - %(stale)s))
      AND (%(ex)s::text[] IS NULL OR exchange = ANY(%(ex)s))
      AND (%(sym)s::text IS NULL OR symbol = %(sym)s)
      AND (%(since)s::timestamptz IS NULL OR before_ts >= %(since)s)
      AND NOT (id = ANY(%(skip)s))
    ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
)
RETURNING {GAP_COLUMNS}
"""

_SETTLE = """
UPDATE gaps SET status = %s, rows_recovered = rows_recovered + %s, note = %s, updated_at = now()
WHERE id = %s
"""

# A time gap's span reaches from the last stored trade before the blind interval to the first
# after it: a trade the venue sent while the connection was already closing, or before it had
# taken the subscription, lies just outside the interval the markers give.
_NEIGHBOURS = """
SELECT (SELECT max(ts) FROM trades WHERE exchange = %(ex)s AND symbol = %(sym)s
          AND ts <= %(start)s AND ts >= %(start)s - interval '1 hour'),
       (SELECT min(ts) FROM trades WHERE exchange = %(ex)s AND symbol = %(sym)s
          AND ts >= %(end)s AND ts <= %(end)s + interval '1 hour')
"""

_STORED_OF = """
SELECT trade_id FROM trades
WHERE exchange = %s AND symbol = %s AND ts >= %s AND ts <= %s AND trade_id = ANY(%s)
"""

_STORED_IDS = """
SELECT count(DISTINCT trade_id) FROM trades
WHERE exchange = %(ex)s AND symbol = %(sym)s AND ts >= %(after)s AND ts <= %(before)s
  AND trade_id ~ %(pattern)s AND substr(trade_id, %(skip)s)::bigint BETWEEN %(first)s AND %(last)s
"""


def _ns(t: dt.datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1_000


def _at(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).replace(
        microsecond=ns // 1_000 % 1_000_000
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    gap: GapRow
    status: str
    recovered: int
    note: str
    requests: int = 0


@dataclass
class Backfiller:
    settings: Settings
    store: Store
    metrics: Metrics
    histories: Mapping[str, TradeHistory] = field(default_factory=all_histories)
    client: httpx.Client | None = None
    buckets: dict[str, Bucket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = self.settings.consumer
        self.validator = Validator(self.settings.subscribed(), int(c.max_future_skew_s * 1e9))
        if self.client is None:
            self.client = httpx.Client(
                timeout=self.settings.backfill.timeout_s,
                headers={"User-Agent": "tickvault-backfill"},
                follow_redirects=False,
            )

    # -- detection --------------------------------------------------------------------------
    def detect(self, *, now: dt.datetime | None = None) -> int:
        """Record new gaps of every configured exchange; returns how many. Skipped (0) while
        another process detects."""
        conn = self.store.conn
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (DETECT_LOCK,)).fetchone()
        if not row or not row[0]:  # type: ignore[index]
            return 0
        try:
            return self._detect(conn, now or dt.datetime.now(dt.UTC))
        finally:
            if not conn.closed and not conn.broken:
                conn.execute("SELECT pg_advisory_unlock(%s)", (DETECT_LOCK,))

    def _detect(self, conn: psycopg.Connection[object], now: dt.datetime) -> int:
        b = self.settings.backfill
        settle = dt.timedelta(seconds=b.settle_s)
        lookback = dt.timedelta(seconds=parse_duration(b.lookback))
        venues = all_venues()
        total = 0
        for exchange in self.settings.exchanges:
            symbols = sorted(self.settings.trade_contexts(exchange))
            if not symbols:
                continue
            if venues[exchange].consecutive_ids:
                new = sum(
                    detect_id_gaps(
                        conn, exchange, s, now=now, settle=settle, lookback=lookback, id_prefix=p
                    )
                    for s in symbols
                    for p in venues[exchange].id_prefixes
                )
            else:
                sessions = read_sessions(conn, since=now - lookback, exchanges=[exchange])
                new = detect_time_gaps(
                    conn, sessions, exchange, symbols, now=now, settle=settle,
                    since=now - lookback,
                )  # fmt: skip
            if new:
                logger.warning("%s: %d new gap(s) in the stored trades", exchange, new)
                self.metrics.inc(f"gaps_opened:{exchange}", new)
            total += new
        self.count_open()
        return total

    def count_open(self) -> dict[str, int]:
        counts = open_gap_counts(self.store.conn)
        for exchange in self.settings.exchanges:
            self.metrics.set(f"gaps_open:{exchange}", counts.get(exchange, 0))
        return counts

    # -- backfill ---------------------------------------------------------------------------
    def backfill(
        self,
        *,
        exchanges: Sequence[str] | None = None,
        symbol: str | None = None,
        since: dt.datetime | None = None,
        now: bool = False,
        stop: threading.Event | None = None,
    ) -> list[Outcome]:
        """Settle every gap that can be claimed (``now``: also those waiting for a retry)."""
        out: list[Outcome] = []
        skip: list[int] = []
        while stop is None or not stop.is_set():
            gap = self._claim(exchanges, symbol, since, now, skip)
            if gap is None:
                break
            skip.append(gap.id)
            out.append(self.settle(gap))
        if out:
            self.count_open()
        return out

    def _claim(
        self,
        exchanges: Sequence[str] | None,
        symbol: str | None,
        since: dt.datetime | None,
        now: bool,
        skip: list[int],
    ) -> GapRow | None:
        params = {
            "now": now,
            "stale": CLAIM_STALE,
            "ex": list(exchanges) if exchanges else None,
            "sym": symbol,
            "since": since,
            "skip": skip,
        }
        with self.store.conn.transaction():
            row = self.store.conn.execute(_CLAIM, params).fetchone()
        return None if row is None else gap_row(row)  # type: ignore[arg-type]

    def settle(self, gap: GapRow) -> Outcome:
        """Fetch ``gap``'s trades, store them and give it its status."""
        outcome = self._attempt(gap)
        note = outcome.note[:NOTE_MAX]
        with self.store.conn.transaction():
            self.store.conn.execute(_SETTLE, (outcome.status, outcome.recovered, note, gap.id))
        level = logging.INFO if outcome.status == "filled" else logging.WARNING
        logger.log(level, "gap %d %s %s %s: %s (%s)", gap.id, gap.exchange, gap.symbol,
                   _describe(gap), outcome.status, note)  # fmt: skip
        self.metrics.inc(f"gaps_{outcome.status.replace('-', '_')}:{gap.exchange}")
        self.metrics.inc(f"backfill_rows:{gap.exchange}", outcome.recovered)
        return outcome

    def _attempt(self, gap: GapRow) -> Outcome:
        history = self.histories.get(gap.exchange)
        if history is None:
            return Outcome(gap, "unfillable", 0, f"{gap.exchange} has no public REST trade history")
        contexts = self.settings.trade_contexts(gap.exchange, gap.id_prefix)
        after, before = gap.after, gap.before
        if gap.first_missing is None:  # a blind interval: widen it to the stored neighbours
            row = self.store.conn.execute(
                _NEIGHBOURS, {"ex": gap.exchange, "sym": gap.symbol, "start": after, "end": before}
            ).fetchone()
            if row is not None:
                after = row[0] or after  # type: ignore[index]
                before = row[1] or before  # type: ignore[index]
        span = Span(
            exchange=gap.exchange,
            symbol=gap.symbol,
            context=contexts.get(gap.symbol, ""),
            first_id=gap.first_missing,
            last_id=gap.last_missing,
            after_ns=_ns(after),
            before_ns=_ns(before),
            id_prefix=gap.id_prefix,
        )
        bucket = self.buckets.get(gap.exchange)
        if bucket is None:
            bucket = self.buckets[gap.exchange] = Bucket(history.limit.units, history.limit.per_s)
        base = self.settings.rest_url(gap.exchange) or history.default_url
        assert self.client is not None
        written = [0, 0]  # rows inserted, invalid trades skipped (as pages are stored)
        touched = [time.monotonic()]

        def sink(trades: list[Trade]) -> None:
            new, invalid = self._store(trades)
            written[0] += new
            written[1] += invalid
            if time.monotonic() - touched[0] >= CLAIM_TOUCH_S:  # still ours: not stale
                self.store.conn.execute("UPDATE gaps SET updated_at = now() WHERE id = %s",
                                        (gap.id,))  # fmt: skip
                touched[0] = time.monotonic()

        try:
            fetched = fetch_span(self.client, base, history, span, bucket=bucket, sink=sink)
        except (Unavailable, BadAnswer, httpx.HTTPError) as exc:
            why = str(exc) if not isinstance(exc, BadAnswer) else f"unreadable answer: {exc}"
            if gap.attempts >= self.settings.backfill.max_attempts:
                note = f"gave up after {gap.attempts} tries: {why}"
                return Outcome(gap, "unfillable", written[0], note)
            return Outcome(gap, "open", written[0], f"try {gap.attempts} failed: {why}")
        return self._verdict(gap, span, fetched, written[0], written[1])

    def _store(self, trades: list[Trade]) -> tuple[int, int]:
        """Write the valid trades not stored yet; returns (rows written, invalid trades)."""
        good: list[Trade] = []
        invalid = 0
        for trade in trades:
            if self.validator.trade(trade) is None:
                good.append(trade)
            else:
                invalid += 1
        if not good:
            return 0, invalid
        # Ids stored since the gap was found (late from the stream) are skipped by id, not only
        # by the natural key: where a venue's REST times are coarser than its WebSocket's
        # (Kraken), the key alone would store the trade twice.
        t = good[0]
        row = self.store.conn.execute(
            _STORED_OF,
            (t.exchange, t.symbol, _at(min(x.ts_ns for x in good) - 1_000_000_000),
             _at(max(x.ts_ns for x in good) + 1_000_000_000), [x.trade_id for x in good]),
        ).fetchall()  # fmt: skip
        stored = {str(r[0]) for r in row}  # type: ignore[index]
        new, _ = self.store.write([x for x in good if x.trade_id not in stored], [])
        return new, invalid

    def _verdict(
        self, gap: GapRow, span: Span, fetched: Fetched, inserted: int, invalid: int
    ) -> Outcome:
        extra = f"; {invalid} invalid REST trades skipped" if invalid else ""
        requests = fetched.requests
        if gap.first_missing is None or gap.last_missing is None:  # a time gap
            if fetched.refused is not None:
                note = f"the venue refused: {fetched.refused}{extra}"
                return Outcome(gap, "unfillable", inserted, note, requests)
            if fetched.short is not None:
                note = f"{inserted} trades recovered, not all: {fetched.short}{extra}"
                return Outcome(gap, "unfillable", inserted, note, requests)
            got = f"{inserted} trades recovered" if inserted else "the venue had no trades"
            return Outcome(gap, "filled", inserted, f"{got} in the interval{extra}", requests)
        expected = gap.last_missing - gap.first_missing + 1
        row = self.store.conn.execute(
            _STORED_IDS,
            {
                "ex": gap.exchange, "sym": gap.symbol, "after": gap.after, "before": gap.before,
                "first": gap.first_missing, "last": gap.last_missing, **id_pattern(gap.id_prefix),
            },
        ).fetchone()  # fmt: skip
        stored = int(row[0]) if row else 0  # type: ignore[index]
        if stored >= expected:
            late = expected - inserted
            how = f"{inserted} from REST" + (f", {late} by the stream" if late > 0 else "")
            return Outcome(gap, "filled", inserted, f"{how}{extra}", requests)
        left = f"{expected - stored} of {expected} ids still missing"
        if fetched.refused is not None:
            return Outcome(
                gap, "unfillable", inserted, f"the venue refused: {fetched.refused}; {left}",
                requests,
            )  # fmt: skip
        if fetched.short is not None:
            return Outcome(gap, "unfillable", inserted, f"{fetched.short}; {left}{extra}", requests)
        note = f"the venue's REST has no trades with {left.split(' still')[0]}{extra}"
        return Outcome(gap, "exchange-hole", inserted, note, requests)

    # -- the consumer's thread --------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Detect and backfill every ``backfill.every_s`` until ``stop``. Never raises: a
        server away is retried at the next round, a bug is logged."""
        every = self.settings.backfill.every_s
        while not stop.wait(every):
            try:
                self.detect()
                self.backfill(exchanges=self.settings.exchanges, stop=stop)
            except (TransientError, psycopg.Error) as exc:
                cause = exc.__cause__ if isinstance(exc, TransientError) else exc
                if classify(cause or exc) is Action.RETRY or isinstance(exc, TransientError):
                    logger.warning("backfill: postgres away (%s); next round in %.0f s", exc, every)
                else:
                    logger.error(
                        "backfill: postgres refused (%s); next round in %.0f s", exc, every
                    )
                self.store.close()
            except FatalError as exc:  # e.g. a schema a newer tickvault made: no traceback
                logger.error("backfill: %s; next round in %.0f s", exc, every)
                self.store.close()
            except Exception:
                logger.exception("backfill round failed; next round in %.0f s", every)
                self.store.close()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.store.close()


def _describe(gap: GapRow) -> str:
    if gap.first_missing is not None:
        return f"ids {gap.ids}"
    return f"{gap.after:%H:%M:%S.%f}..{gap.before:%H:%M:%S.%f}"


def start_thread(backfiller: Backfiller, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=backfiller.run, args=(stop,), name="backfill", daemon=True)
    thread.start()
    return thread


def as_time(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """``--since``: a duration back from now ("2h") or an ISO time. Raises ValueError."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        return now - dt.timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
