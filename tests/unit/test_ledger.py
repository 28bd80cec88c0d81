"""The coverage ledger's pure parts: markers on the wire and in the consumer, blind intervals."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.envelope import raw_key
from common.errors import PoisonFrame
from common.markers import MarkerBody, decode_marker, encode_marker
from consumer.batching import Batch
from consumer.ledger import Session, blind_intervals
from consumer.process import Processor
from producer.spill import Record, _decode, encode_record
from producer.wire import XaddPacker

T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
NS = 1_796_040_000_000_000_000  # 2026-11-30T12:00Z


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def session(
    conn: str,
    start: float | None,
    end: float | None,
    reason: str = "",
    *,
    symbols=("BTC-USDT",),
    alive: float | None = None,
) -> Session:
    return Session(
        "binance", conn, "", "p1", "1", tuple(symbols),
        None if start is None else at(start), None if end is None else at(end), reason,
        None if alive is None else at(alive),
    )  # fmt: skip


def blinds(sessions: list[Session], now: float = 100, since: float = -1000) -> list[tuple]:
    return [
        (
            (b.start - T0).total_seconds(),
            None if b.end is None else (b.end - T0).total_seconds(),
            b.reason,
        )
        for b in blind_intervals(sessions, "binance", "BTC-USDT", since=at(since), now=at(now))
    ]


def test_one_open_session_is_complete() -> None:
    assert blinds([session("a", 0, None)]) == []


def test_a_reconnect_leaves_the_interval_between_blind_with_its_reason() -> None:
    sessions = [session("a", 0, 10, "lost: closed by the venue"), session("b", 12.5, None)]
    assert blinds(sessions) == [(10, 12.5, "lost: closed by the venue")]


def test_a_make_before_break_rollover_leaves_nothing_blind() -> None:
    sessions = [session("a", 0, 30, "rolled over"), session("b", 20, None)]
    assert blinds(sessions) == []


def test_a_feed_that_is_down_now_is_blind_until_now() -> None:
    assert blinds([session("a", 0, 10, "lost: silent")]) == [(10, None, "lost: silent")]


def test_a_producer_that_stopped_saying_alive_ended_its_sessions_there() -> None:
    """Killed and never started again (or started under another name): its open sessions
    cover only up to its last ``alive``; a recent one still covers up to now."""
    assert blinds([session("a", 0, None, alive=30)], now=100) == [
        (30, None, "producer p1 silent since then (killed?)"),
    ]
    assert blinds([session("a", 0, None, alive=50)], now=100) == []  # within ALIVE_STALE_S
    newer = [session("a", 0, None, alive=10), session("b", 80, None)]
    assert blinds(newer, now=100) == [(10, 80, "producer p1 silent since then (killed?)")]


def test_sessions_of_other_symbols_do_not_cover() -> None:
    sessions = [
        session("a", 0, 10, "lost: x"),
        session("b", 5, None, symbols=("ETH-USDT",)),
        session("c", 20, None),
    ]
    assert blinds(sessions) == [(10, 20, "lost: x")]


def test_a_session_whose_start_is_not_stored_yet_is_ignored() -> None:
    sessions = [session("a", 0, 10, "lost: x"), session("b", None, 50), session("c", 20, None)]
    assert blinds(sessions) == [(10, 20, "lost: x")]


def test_since_clips_the_report() -> None:
    sessions = [session("a", 0, 10, "x"), session("b", 20, 30, "y"), session("c", 40, None)]
    assert blinds(sessions, since=25) == [(30, 40, "y")]
    assert blinds(sessions, since=15) == [(15, 20, "x"), (30, 40, "y")]


@given(st.lists(st.tuples(st.integers(0, 100), st.integers(0, 100)), max_size=8))
def test_blind_intervals_are_disjoint_ordered_and_uncovered(pairs: list[tuple[int, int]]) -> None:
    sessions = [session(str(i), min(a, b), max(a, b), "r") for i, (a, b) in enumerate(pairs)]
    found = blind_intervals(sessions, "binance", "BTC-USDT", since=at(-10), now=at(200))
    last = None
    for b in found:
        end = b.end or at(200)
        assert b.start < end
        if last is not None:
            assert last <= b.start
        last = end
        for s in sessions:  # no session covers any part of a blind interval
            assert s.connected is not None and s.disconnected is not None
            assert s.disconnected <= b.start or s.connected >= end


# -- markers ----------------------------------------------------------------------------------
def test_a_marker_round_trips_through_the_producer_wire_and_the_consumer() -> None:
    body = MarkerBody("lost", "p1", "1764504000000", ["BTC-USDT"], ["trades"], "closed by venue")
    packer = XaddPacker(raw_key("binance"), "binance", "", "binance#1@1", marker=True)
    command = packer.pack(encode_marker(body), False, 0, NS)
    assert b"$1\r\nk\r\n$1\r\nm\r\n" in command
    fields = [b"f", encode_marker(body), b"k", b"m", b"e", b"binance", b"x", b"", b"c",
              b"binance#1@1", b"n", b"0", b"t", str(NS).encode()]  # fmt: skip
    proc = Processor(subscribed={"binance": frozenset({"BTC-USDT"})}, symbol_maps={},
                     max_future_skew_ns=10**10)  # fmt: skip
    for given_fields in (fields, dict(zip(fields[::2], fields[1::2], strict=True))):
        out = proc.process("1-0", given_fields)
        assert out.dead is None and out.control == "marker"
        assert out.marker is not None
        assert out.marker.body == body
        assert (out.marker.exchange, out.marker.conn, out.marker.at_ns) == (
            "binance", "binance#1@1", NS,
        )  # fmt: skip
        batch = Batch()
        batch.add(raw_key("binance"), "1-0", given_fields, out, 0.0)
        assert batch.markers == [out.marker] and batch.controls["marker"] == 1


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (b"not json", "bad marker"),
        (b'{"event":"exploded","producer":"p","run":"1"}', "unknown event"),
        (b'{"event":"lost","producer":"","run":"1"}', "empty"),
        (b'{"event":"lost","producer":"p\\u0000","run":"1"}', "unprintable"),
        (b'{"event":"lost","producer":"p","run":"1","symbols":["' + b"A" * 300 + b'"]}', "over"),
        (b"[" * 100_000, "bad marker"),
    ],
)
def test_a_bad_marker_is_a_dead_letter_with_its_reason(frame: bytes, why: str) -> None:
    with pytest.raises(PoisonFrame, match=why):
        decode_marker("binance", "", "c", NS, frame)
    proc = Processor(subscribed={}, symbol_maps={}, max_future_skew_ns=10**10)
    fields = {b"f": frame, b"k": b"m", b"e": b"binance", b"x": b"", b"c": b"c", b"n": b"0",
              b"t": str(NS).encode()}  # fmt: skip
    out = proc.process("1-0", fields)
    assert out.dead is not None and out.marker is None


def test_a_marker_run_is_refused() -> None:
    proc = Processor(subscribed={}, symbol_maps={}, max_future_skew_ns=10**10)
    fields = {b"f": b"{}{}", b"k": b"m", b"e": b"binance", b"x": b"", b"c": b"c", b"n": b"0",
              b"t": b"%d,%d" % (NS, NS), b"l": b"2,2"}  # fmt: skip
    assert proc.process("1-0", fields).dead == "bad envelope: a marker cannot be a run"


@given(st.binary(max_size=300))
def test_decode_marker_takes_any_bytes(frame: bytes) -> None:
    try:
        marker = decode_marker("binance", "", "c", NS, frame)
    except PoisonFrame:
        return
    assert marker.body.event in {"started", "stopped", "subscribed", "lost", "rolled", "closed"}
    assert len(marker.body.reason) <= 2_000 and marker.body.reason.isprintable()


def test_a_spilled_marker_keeps_its_kind_and_old_segments_still_read() -> None:
    record = Record("k", "binance", "", "c", 0, NS, False, b"{}", True)
    payload = encode_record(record)[8:]
    assert _decode(payload) == record
    old = msgspec.msgpack.encode(("k", "binance", "", "c", 3, NS, True, b"x"))  # 8 fields
    assert _decode(old) == Record("k", "binance", "", "c", 3, NS, True, b"x", False)


def test_every_venue_has_a_rest_history_and_venues_says_how_far_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from common.cli import main
    from common.rest import all_histories
    from common.venues import all_venues

    histories = all_histories()
    assert set(histories) == set(all_venues())
    for history in histories.values():
        assert history.default_url.startswith("https://") and history.reach
        assert history.limit.units > 0 and history.limit.per_s > 0
    assert main(["venues"]) == 0
    out = capsys.readouterr().out
    assert out.count("backfill: https://") == len(histories)
