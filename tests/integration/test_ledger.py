"""The completeness ledgers against a real PostgreSQL: markers into ``feed_sessions``, gap
detection from what is stored, and each way a backfill can end (REST over real HTTP, served by
the test on 127.0.0.1)."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import msgspec
import psycopg
import pytest

from common.config import settings_from_mapping
from common.markers import Marker, MarkerBody
from common.metrics import Metrics
from common.records import Trade
from common.rest import Page, RateLimit, Request, Span, TradeHistory
from consumer.backfill import Backfiller
from consumer.gaps import detect_id_gaps, detect_time_gaps, find_gaps, read_gaps
from consumer.ledger import UNSEEN_END, blind_intervals, read_sessions
from consumer.store import Store

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
T0 = NOW - dt.timedelta(minutes=10)


def ns(t: dt.datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def trade(i: int, *, symbol: str = "BTC-USDT", exchange: str = "binance") -> Trade:
    ts = ns(T0) + i * 1_000_000  # a trade a millisecond
    return Trade(exchange, symbol, str(i), "100.5", "0.25", "buy", ts, ts + 3_000_000)


def marker(
    event: str,
    conn: str,
    at_s: float,
    *,
    run: str = "1000",
    reason: str = "",
    exchange: str = "binance",
    symbols: tuple[str, ...] = ("BTC-USDT",),
) -> Marker:
    body = MarkerBody(event, "p1", run, list(symbols), ["trades"], reason)
    return Marker(exchange, "", conn, ns(T0) + int(at_s * 1e9), body)


def sessions_of(store: Store) -> dict[str, tuple[Any, ...]]:
    rows = store.conn.execute(
        "SELECT conn, connected_at, disconnected_at, reason FROM feed_sessions"
    ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}  # type: ignore[index]


def test_markers_give_the_same_sessions_in_any_order_and_twice(store: Store) -> None:
    marks = [
        marker("started", "p1@1000", 0),
        marker("subscribed", "a", 1),
        marker("lost", "a", 5, reason="closed by the venue (1006)"),
        marker("subscribed", "b", 7),
        marker("alive", "p1@1000", 3),
        marker("alive", "p1@1000", 8),
        marker("closed", "b", 9),
        marker("stopped", "p1@1000", 9.5),
    ]
    store.write_markers(list(reversed(marks)))
    first = sessions_of(store)
    store.write_markers(marks)  # a redelivery, in the other order
    assert sessions_of(store) == first
    assert first["a"] == (T0 + dt.timedelta(seconds=1), T0 + dt.timedelta(seconds=5),
                          "lost: closed by the venue (1006)")  # fmt: skip
    assert first["b"][2] == "producer stopped"
    runs = store.conn.execute(
        "SELECT started_at, alive_at, stopped_at FROM producer_runs"
    ).fetchall()
    assert runs == [(T0, T0 + dt.timedelta(seconds=8), T0 + dt.timedelta(seconds=9.5))]
    assert {s.alive for s in read_sessions(store.conn, since=T0)} == {T0 + dt.timedelta(seconds=8)}
    got = blind_intervals(
        read_sessions(store.conn, since=T0), "binance", "BTC-USDT", since=T0, now=NOW
    )
    assert [(b.start, b.end, b.reason) for b in got] == [
        (T0 + dt.timedelta(seconds=5), T0 + dt.timedelta(seconds=7),
         "lost: closed by the venue (1006)"),
        (T0 + dt.timedelta(seconds=9), None, "producer stopped"),
    ]  # fmt: skip


def test_a_killed_run_is_closed_by_the_next_start_at_its_newest_stored_trade(store: Store) -> None:
    store.write([trade(i) for i in range(1, 3001)], [])  # up to T0 + 3 s
    store.write_markers([marker("started", "p1@1000", 0), marker("subscribed", "a", 0.5)])
    store.write_markers([marker("started", "p1@2000", 20, run="2000"),
                         marker("subscribed", "b", 21, run="2000")])  # fmt: skip
    rows = sessions_of(store)
    assert rows["a"][1] == dt.datetime.fromtimestamp(trade(3000).ts_ns / 1e9, dt.UTC)
    assert rows["a"][2] == UNSEEN_END
    assert rows["b"][1] is None
    # a marker of the killed run that comes late (another consumer) is kept, not reopened
    store.write_markers([marker("subscribed", "a", 0.5)])
    assert sessions_of(store)["a"][2] == UNSEEN_END


def test_id_gaps_are_found_once_from_stored_ids_past_the_settle_window(store: Store) -> None:
    ids = [*range(1, 11), *range(15, 21)]
    store.write([trade(i) for i in ids], [])
    conn = store.conn
    kw: dict[str, Any] = {"settle": dt.timedelta(seconds=10), "lookback": dt.timedelta(hours=1)}
    assert detect_id_gaps(conn, "binance", "BTC-USDT", now=NOW, **kw) == 1
    assert detect_id_gaps(conn, "binance", "BTC-USDT", now=NOW, **kw) == 0  # once
    store.write([trade(i) for i in range(25, 31)], [])
    assert detect_id_gaps(conn, "binance", "BTC-USDT", now=NOW, **kw) == 1
    # a late row inside a recorded gap changes nothing; newer rows than the window wait
    store.write([trade(12)], [])
    assert detect_id_gaps(conn, "binance", "BTC-USDT", now=T0, **kw) == 0
    gaps = read_gaps(conn)
    assert [(g.first_missing, g.last_missing, g.status) for g in gaps] == [
        (11, 14, "open"), (21, 24, "open"),
    ]  # fmt: skip
    assert gaps[0].after == dt.datetime.fromtimestamp(trade(10).ts_ns / 1e9, dt.UTC)


def test_aggregate_ids_are_an_id_space_of_their_own(store: Store) -> None:
    """Binance spot's @aggTrade rows (agg-<a>) are consecutive on their own: their gaps are
    found apart from the plain ids', with their own cursor, even at the same numbers."""

    def agg(i: int) -> Trade:
        return msgspec.structs.replace(trade(i), trade_id=f"agg-{i}")

    have = [*range(1, 4), *range(7, 10)]
    store.write([trade(i) for i in have] + [agg(i) for i in have], [])
    conn = store.conn
    kw: dict[str, Any] = {"settle": dt.timedelta(seconds=10), "lookback": dt.timedelta(hours=1)}
    assert detect_id_gaps(conn, "binance", "BTC-USDT", now=NOW, **kw) == 1
    assert detect_id_gaps(conn, "binance", "BTC-USDT", now=NOW, id_prefix="agg-", **kw) == 1
    assert detect_id_gaps(conn, "binance", "BTC-USDT", now=NOW, id_prefix="agg-", **kw) == 0
    gaps = read_gaps(conn)
    assert sorted((g.id_prefix, g.first_missing, g.last_missing, g.ids) for g in gaps) == [
        ("", 4, 6, "4..6"), ("agg-", 4, 6, "agg-4..agg-6"),
    ]  # fmt: skip
    assert [g.note for g in gaps if g.id_prefix] == [
        "3 aggregate trade ids missing between stored neighbours"
    ]
    cursors = conn.execute("SELECT id_prefix, checked_id FROM gap_cursors ORDER BY 1").fetchall()
    assert cursors == [("", 9), ("agg-", 9)]
    # a longer plain run moves the plain cursor only
    store.write([trade(i) for i in range(10, 13)], [])
    assert detect_id_gaps(conn, "binance", "BTC-USDT", now=NOW, **kw) == 0
    cursors = conn.execute("SELECT id_prefix, checked_id FROM gap_cursors ORDER BY 1").fetchall()
    assert cursors == [("", 12), ("agg-", 9)]
    # an id space with no rows (a @trade feed's agg-, or a quiet symbol) is not searched back
    # over the whole lookback again each round: its cursor moves to the settled end
    kw["lookback"] = dt.timedelta(hours=1)
    assert detect_id_gaps(conn, "binance", "ETH-USDT", now=NOW, id_prefix="agg-", **kw) == 0
    row = conn.execute(
        "SELECT checked_id, checked_ts FROM gap_cursors WHERE symbol = 'ETH-USDT'"
    ).fetchone()
    assert row == (-1, NOW - kw["settle"])
    eth = [msgspec.structs.replace(agg(i), symbol="ETH-USDT") for i in (1, 2, 5)]
    later = NOW + dt.timedelta(minutes=2)  # rows that come later, past the moved cursor
    eth = [msgspec.structs.replace(t, ts_ns=t.ts_ns + 11 * 60 * 10**9) for t in eth]
    store.write(eth, [])
    assert detect_id_gaps(conn, "binance", "ETH-USDT", now=later, id_prefix="agg-", **kw) == 1
    # the full scan (tickvault gaps --scan) finds both, each in its space
    found = find_gaps(conn, since=T0 - dt.timedelta(minutes=1), exchanges=["binance", "okx"])
    assert [(g.symbol, g.id_prefix, g.ids, g.missing) for g in found] == [
        ("BTC-USDT", "", "4..6", 3), ("BTC-USDT", "agg-", "agg-4..agg-6", 3),
        ("ETH-USDT", "agg-", "agg-3..agg-4", 2),
    ]  # fmt: skip


def test_an_aggregate_gap_is_backfilled_as_aggregates(
    store: Store, venue: tuple[Venue, str], database_url: str
) -> None:
    """The span of an agg- gap holds agg- rows only, and the verdict counts agg- ids."""
    state, url = venue
    state.trades = {i: trade(i) for i in range(1, 21)}  # what the venue serves (IdHistory)
    # the symbol's @trade feed is in ms (the first), its @aggTrade feed in µs: the span's unit
    agg_us = {"trades": "aggTrade", "time_unit": "microsecond"}
    b = backfiller(database_url, url, more_feeds=(
        {"exchange": "binance", "symbols": ["BTC-USDT"], "options": agg_us},
    ))  # fmt: skip
    history = AggIdHistory()
    b.histories = {"binance": history}
    have = [i for i in range(1, 21) if i not in range(6, 10)]
    store.write([msgspec.structs.replace(trade(i), trade_id=f"agg-{i}") for i in have], [])
    detect_id_gaps(store.conn, "binance", "BTC-USDT", now=NOW, settle=dt.timedelta(seconds=1),
                   lookback=dt.timedelta(hours=1), id_prefix="agg-")  # fmt: skip
    [outcome] = b.backfill(now=True)
    assert (outcome.status, outcome.recovered) == ("filled", 4), outcome
    assert set(history.contexts) == {"microsecond"}
    rows = store.conn.execute("SELECT trade_id FROM trades ORDER BY 1").fetchall()
    assert sorted(str(r[0]) for r in rows) == sorted(f"agg-{i}" for i in range(1, 21))  # type: ignore[index]


def test_time_gaps_come_from_closed_blind_intervals(store: Store) -> None:
    store.write_markers([
        marker("subscribed", "a", 0, exchange="okx"),
        marker("lost", "a", 10, reason="silent 12.0 s", exchange="okx"),
        marker("subscribed", "b", 14, exchange="okx"),
    ])  # fmt: skip
    sessions = read_sessions(store.conn, since=T0 - dt.timedelta(hours=1))
    kw: dict[str, Any] = {"now": NOW, "settle": dt.timedelta(seconds=5), "since": T0}
    assert detect_time_gaps(store.conn, sessions, "okx", ["BTC-USDT"], **kw) == 1
    assert detect_time_gaps(store.conn, sessions, "okx", ["BTC-USDT"], **kw) == 0
    [gap] = read_gaps(store.conn)
    assert (gap.first_missing, gap.after, gap.before) == (
        None, T0 + dt.timedelta(seconds=10), T0 + dt.timedelta(seconds=14),
    )  # fmt: skip
    assert "silent 12.0 s" in gap.note


# -- backfill verdicts, against a REST API on 127.0.0.1 ---------------------------------------
class Venue:
    """What the test's REST API serves: trades by id, or answers by status."""

    def __init__(self) -> None:
        self.trades: dict[int, Trade] = {}
        self.answers: list[int] = []  # statuses to answer first (then 200)
        self.requests = 0


class IdHistory(TradeHistory):
    """A venue paging by id, 3 trades a page: ``/trades?from=N``."""

    exchange: ClassVar[str] = "binance"
    default_url: ClassVar[str] = "http://unused"
    limit: ClassVar[RateLimit] = RateLimit(1000, 1)
    reach: ClassVar[str] = "test"

    def first(self, span: Span) -> Request:
        return Request("/trades", (("from", str(span.first_id)),))

    def page(self, span: Span, request: Request, body: bytes, recv_ns: int) -> Page:
        data = json.loads(body)
        trades = [Trade(**t) for t in data["trades"]]
        start = int(dict(request.params)["from"])
        nxt = start + 3
        more = data["last"] >= nxt and span.last_id is not None and nxt <= span.last_id
        short = "the venue serves ids from 5 only" if data.get("short") else None
        return Page(trades, Request("/trades", (("from", str(nxt)),)) if more else None, short)


class AggIdHistory(IdHistory):
    """IdHistory's answers as aggregate rows (``agg-<id>``), for spans of that id space (the
    venue's other rows would be refused by the span: ``Span.holds``)."""

    def __init__(self) -> None:
        self.contexts: list[str] = []  # each page's span's context

    def page(self, span: Span, request: Request, body: bytes, recv_ns: int) -> Page:
        assert span.id_prefix == "agg-"
        self.contexts.append(span.context)
        page = super().page(span, request, body, recv_ns)
        trades = [msgspec.structs.replace(t, trade_id=f"agg-{t.trade_id}") for t in page.trades]
        return Page(trades, page.next, page.short)


class TimeHistory(TradeHistory):
    """A venue paging by time: ``/trades?after=NS&before=NS`` answers every trade between."""

    exchange: ClassVar[str] = "okx"
    default_url: ClassVar[str] = "http://unused"
    limit: ClassVar[RateLimit] = RateLimit(1000, 1)
    reach: ClassVar[str] = "test"

    def first(self, span: Span) -> Request:
        return Request("/trades", (("after", str(span.after_ns)), ("before", str(span.before_ns))))

    def page(self, span: Span, request: Request, body: bytes, recv_ns: int) -> Page:
        return Page([Trade(**t) for t in json.loads(body)["trades"]], None)


@pytest.fixture
def venue() -> Iterator[tuple[Venue, str]]:
    state = Venue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests += 1
            if state.answers:
                status = state.answers.pop(0)
                body = b'{"msg":"no"}'
                self.send_response(status)
                self.send_header("Retry-After", "0")
            elif "after" in (query := parse_qs(urlsplit(self.path).query)):
                lo, hi = int(query["after"][0]), int(query["before"][0])
                hits = [t for t in state.trades.values() if lo <= t.ts_ns <= hi]
                body = json.dumps(
                    {"trades": [{f: getattr(t, f) for f in Trade.__struct_fields__} for t in hits]}
                ).encode()
                self.send_response(200)
            else:
                start = int(query["from"][0])
                ids = [i for i in range(start, start + 3) if i in state.trades]
                payload: dict[str, Any] = {
                    "trades": [
                        {f: getattr(state.trades[i], f) for f in Trade.__struct_fields__}
                        for i in ids
                    ],
                    "last": max(state.trades, default=0),
                    "short": start < 5 and 5 in state.trades and 1 not in state.trades,
                }
                body = json.dumps(payload).encode()
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


_made: list[Backfiller] = []


@pytest.fixture(autouse=True)
def _close_backfillers() -> Iterator[None]:
    yield
    while _made:
        _made.pop().close()


def backfiller(
    database_url: str,
    rest_url: str,
    *,
    more_feeds: tuple[dict[str, Any], ...] = (),
    **backfill: Any,
) -> Backfiller:
    settings = settings_from_mapping(
        {
            "database": {"url": database_url},
            "backfill": {"max_attempts": 2, **backfill},
            "feeds": [
                {"exchange": "binance", "symbols": ["BTC-USDT"], "rest_url": rest_url},
                {"exchange": "okx", "symbols": ["BTC-USDT"], "rest_url": rest_url},
                *more_feeds,
            ],
        },
        env={},
    )
    store = Store(database_url)
    store.connect()
    histories = {"binance": IdHistory(), "okx": TimeHistory()}
    made = Backfiller(settings, store, Metrics("test"), histories=histories)
    _made.append(made)
    return made


def gap_state(store: Store) -> list[tuple[Any, ...]]:
    return store.conn.execute(
        "SELECT first_missing, last_missing, status, rows_recovered, note FROM gaps ORDER BY id"
    ).fetchall()


def stored_ids(store: Store) -> list[int]:
    rows = store.conn.execute("SELECT trade_id::int FROM trades ORDER BY 1").fetchall()
    return [int(r[0]) for r in rows]  # type: ignore[index]


def open_gaps(store: Store, *ids: int) -> None:
    have = [i for i in range(1, 21) if i not in ids]
    store.write([trade(i) for i in have], [])
    detect_id_gaps(store.conn, "binance", "BTC-USDT", now=NOW,
                   settle=dt.timedelta(seconds=1), lookback=dt.timedelta(hours=1))  # fmt: skip


def test_a_gap_the_venue_serves_is_filled_with_the_same_rows(
    store: Store, venue: tuple[Venue, str], database_url: str
) -> None:
    state, url = venue
    state.trades = {i: trade(i) for i in range(1, 21)}
    state.answers = [429, 503]  # retried, honouring Retry-After
    open_gaps(store, *range(6, 14))
    b = backfiller(database_url, url)
    b.count_open()
    assert 'tickvault_gaps_open{exchange="binance",process="test"} 1.0' in b.metrics.prometheus()
    [outcome] = b.backfill(now=True)
    text = b.metrics.prometheus()
    assert 'tickvault_gaps_open{exchange="binance",process="test"} 0.0' in text
    assert 'tickvault_gaps_filled_total{exchange="binance",process="test"} 1.0' in text
    assert outcome.status == "filled" and outcome.recovered == 8
    assert stored_ids(store) == list(range(1, 21))
    assert gap_state(store) == [(6, 13, "filled", 8, "8 from REST")]
    assert b.metrics.counters["backfill_rows:binance"] == 8
    assert b.backfill(now=True) == []  # settled: nothing more to claim


def test_ids_the_venue_never_had_are_an_exchange_hole(
    store: Store, venue: tuple[Venue, str], database_url: str
) -> None:
    state, url = venue
    state.trades = {i: trade(i) for i in range(1, 21) if i not in (8, 9)}
    open_gaps(store, *range(6, 11))
    [outcome] = backfiller(database_url, url).backfill(now=True)
    assert outcome.status == "exchange-hole"
    assert gap_state(store) == [
        (6, 10, "exchange-hole", 3, "the venue's REST has no trades with 2 of 5 ids"),
    ]


def test_a_shallow_venue_leaves_the_rest_unfillable_with_the_reason(
    store: Store, venue: tuple[Venue, str], database_url: str
) -> None:
    state, url = venue
    state.trades = {i: trade(i) for i in range(5, 21)}
    open_gaps(store, *range(2, 8))
    [outcome] = backfiller(database_url, url).backfill(now=True)
    assert outcome.status == "unfillable"
    assert gap_state(store) == [
        (2, 7, "unfillable", 3, "the venue serves ids from 5 only; 3 of 6 ids still missing"),
    ]


def test_a_refusal_is_unfillable_and_an_unavailable_venue_is_retried_then_given_up(
    store: Store, venue: tuple[Venue, str], database_url: str
) -> None:
    state, url = venue
    open_gaps(store, 4, 5, 15)
    state.answers = [400] + [503] * 6  # fetch_span tries 6 times
    b = backfiller(database_url, url)
    outcomes = b.backfill(now=True)
    assert [o.status for o in outcomes] == ["unfillable", "open"]
    assert outcomes[0].note.startswith("the venue refused: HTTP 400")
    state.answers = [503] * 20  # past fetch_span's retries, twice
    b.backfill(now=True)
    rows = gap_state(store)
    assert rows[1][2] == "unfillable" and rows[1][4].startswith("gave up after 2 tries: HTTP 503")
    b.close()


def test_a_claimed_gap_is_not_taken_by_another_backfiller(
    store: Store, venue: tuple[Venue, str], database_url: str
) -> None:
    _, url = venue
    open_gaps(store, 7)
    a, b = backfiller(database_url, url), backfiller(database_url, url)
    claimed = a._claim(None, None, None, True, [])
    assert claimed is not None
    assert b._claim(None, None, None, True, []) is None  # "backfilling", not stale
    with psycopg.connect(database_url, autocommit=True) as conn:  # its backfiller died
        conn.execute("UPDATE gaps SET updated_at = now() - interval '10 minutes'")
    assert b._claim(None, None, None, True, []) is not None
    a.close()
    b.close()


def test_a_blind_interval_is_fetched_from_its_stored_neighbours(
    store: Store, venue: tuple[Venue, str], database_url: str
) -> None:
    """Trades the venue sent while the connection was already closing (before the ``lost``
    marker) or before it took the subscription (after ``subscribed``) are fetched too."""
    state, url = venue
    everything = [trade(i, exchange="okx") for i in range(1, 41)]
    state.trades = {int(t.trade_id): t for t in everything}
    kept = [t for t in everything if not 15 <= int(t.trade_id) <= 30]
    store.write(kept, [])
    lost_at = (everything[16].ts_ns - ns(T0)) / 1e9  # trades 15 and 16 came before the marker
    back_at = (everything[27].ts_ns - ns(T0)) / 1e9  # 29 and 30 after the next subscription
    store.write_markers([
        marker("subscribed", "a", 0, exchange="okx"),
        marker("lost", "a", lost_at, reason="closed", exchange="okx"),
        marker("subscribed", "b", back_at, exchange="okx"),
    ])  # fmt: skip
    b = backfiller(database_url, url, settle_s=0)
    assert b.detect() == 1
    [outcome] = b.backfill(now=True)
    assert outcome.status == "filled" and outcome.recovered == 16
    assert stored_ids(store) == list(range(1, 41))


def test_a_trade_stored_late_by_the_stream_is_not_stored_again_with_other_times(
    store: Store, venue: tuple[Venue, str], database_url: str
) -> None:
    """Kraken's REST times are coarser than its WebSocket's: the natural key (which holds the
    time) differs, so the backfill skips ids already stored, not only keys."""
    state, url = venue
    state.trades = {i: trade(i) for i in range(1, 21)}
    open_gaps(store, 6, 7, 8)
    late = trade(7)
    store.write([msgspec.structs.replace(late, ts_ns=late.ts_ns + 1_000)], [])  # 1 µs apart
    [outcome] = backfiller(database_url, url).backfill(now=True)
    assert outcome.status == "filled" and outcome.note == "2 from REST, 1 by the stream"
    assert stored_ids(store) == list(range(1, 21))  # 7 once


def test_the_backfill_thread_survives_postgresql_away_and_stops_when_asked(
    venue: tuple[Venue, str], database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A round that cannot reach PostgreSQL logs and waits for the next; the consumer's
    thread never dies of it, and nothing is claimed or written meanwhile."""
    import threading

    _, url = venue
    b = backfiller(database_url, url, every_s=0.05)
    b.store.close()
    b.store = Store("postgresql://postgres@127.0.0.1:1/none")  # nobody listens there
    stop = threading.Event()
    thread = threading.Thread(target=b.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive()  # rounds failed, the thread goes on
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert "backfill: postgres away" in caplog.text
    assert b.metrics.counters["backfill_rows:binance"] == 0
