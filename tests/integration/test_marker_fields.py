"""A coverage marker the consumer accepts is one PostgreSQL stores as it is, at the bounds of
every text field (``consumer.validate.marker_problem``); one it refuses never gets that far."""

from __future__ import annotations

import psycopg
import pytest

from common.markers import NAME_MAX, MarkerBody, encode_marker
from consumer.process import Processor
from consumer.store import Store

pytestmark = pytest.mark.integration

NS = 1_764_504_000_000_000_000
WIDE = "\U0001d11e"  # four bytes of UTF-8: names at NAME_MAX characters are at their widest
PROC = Processor(subscribed={}, symbol_maps={}, max_future_skew_ns=10**10)


def entry(body: MarkerBody, *, context: str, conn: str) -> list[bytes]:
    return [b"f", encode_marker(body), b"k", b"m", b"e", b"kraken", b"x", context.encode(),
            b"c", conn.encode(), b"n", b"1", b"t", str(NS).encode()]  # fmt: skip


def test_the_widest_accepted_marker_fields_are_stored_as_they_are(store: Store) -> None:
    name = WIDE * NAME_MAX
    context, conn = "sp\u00f6t " + WIDE * (NAME_MAX - 5), "c" + WIDE * (NAME_MAX - 1)
    reason = "closed by the venue (1006): \u00e9\u4e2d" + WIDE * 1_960
    symbols, channels = [name, "BTC-USD"], [name]
    bodies = [
        MarkerBody("started", name, name, symbols, channels),
        MarkerBody("subscribed", name, name, symbols, channels),
        MarkerBody("lost", name, name, symbols, channels, reason),
    ]
    markers = []
    for body in bodies:
        out = PROC.process("1-0", entry(body, context=context, conn=conn))
        assert out.dead is None and out.marker is not None, out.dead
        markers.append(out.marker)
    store.write_markers(markers)
    rows = store.conn.execute(
        "SELECT exchange, conn, context, producer, run, symbols, channels, reason"
        " FROM feed_sessions"
    ).fetchall()
    assert rows == [
        ("kraken", conn, context, name, name, symbols, channels, f"lost: {reason}"),
    ]
    runs = store.conn.execute("SELECT exchange, producer, run, symbols FROM producer_runs")
    assert runs.fetchall() == [("kraken", name, name, symbols)]


def test_a_context_postgresql_refuses_is_a_dead_letter_not_a_write(store: Store) -> None:
    body = MarkerBody("subscribed", "p1", "1", ["BTC-USD"], ["trades"])
    out = PROC.process("1-0", entry(body, context="spot\x00x", conn="c1"))
    assert out.marker is None and out.dead is not None
    assert out.dead.startswith("bad marker: context 'spot\\x00x' holds an unprintable")
    # What the check keeps from the database: the same marker, written, is refused (22: data).
    accepted = PROC.process("1-0", entry(body, context="spot", conn="c1")).marker
    assert accepted is not None
    refused = type(accepted)(accepted.exchange, "spot\x00x", "c1", NS, body)
    with pytest.raises(psycopg.DataError):
        store.write_markers([refused])
    assert store.conn.execute("SELECT count(*) FROM feed_sessions").fetchone() == (0,)
