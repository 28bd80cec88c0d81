"""Stream entries holding a run of frames: decoded, processed, batched and dead-lettered frame by
frame, acked once."""

from __future__ import annotations

from collections.abc import Sequence

import fakeredis
import hiredis
import psycopg.errors as pg
import pytest

from common.envelope import (
    Envelope,
    dead_key,
    decode_entry,
    run_frame_fields,
    split_run,
)
from common.errors import PoisonFrame, TransientError
from common.records import Quote, Trade
from consumer.batching import Batch, Span
from consumer.process import Processor
from producer.wire import XaddPacker, pack_runs

from .test_worker_failures import MemoryStore as RefusingStore
from .test_worker_failures import make
from .test_worker_streams import KEY, SETTINGS, MemoryStore, StopAfter, worker

NOW = 1_700_000_000_000_000_000
P = Processor(
    subscribed={"binance": frozenset({"BTC-USDT"})},
    symbol_maps={("binance", ""): {"BTCUSDT": "BTC-USDT"}},
    max_future_skew_ns=5 * 10**9,
)


def body(i: int) -> bytes:
    return (
        f'{{"e":"trade","E":1699999999999,"s":"BTCUSDT","t":{i},"p":"10.{i}","q":"2",'
        f'"T":1699999999999,"m":true,"M":true}}'
    ).encode()


def run_fields(frames: list[bytes], first_seq: int = 1) -> list[bytes]:
    """The flat field list XREADGROUP returns for one run entry, as the producer packs it."""
    packer = XaddPacker(KEY, "binance", "", "c1")
    pending = [(packer, f, False, first_seq + i, NOW + i) for i, f in enumerate(frames)]
    payload, sizes = pack_runs(pending)
    assert len(sizes) == 1
    reader = hiredis.Reader()
    reader.feed(payload)
    command = reader.gets()
    assert isinstance(command, list) and command[:3] == [b"XADD", KEY.encode(), b"*"]
    return command[3:]


def test_split_run_refuses_lengths_that_do_not_add_up() -> None:
    assert split_run(b"abcd", b"1,3", b"5,6") == [(b"a", 5), (b"bcd", 6)]
    for lengths, times in [(b"1,2", b"5,6"), (b"4", b"5,6"), (b"x", b"5"), (b"", b"")]:
        with pytest.raises(PoisonFrame, match="bad envelope"):
            split_run(b"abcd", lengths, times)


def test_a_run_decodes_to_one_envelope_per_frame() -> None:
    flat = run_fields([b"one", b"", b"three"], first_seq=41)
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    assert decode_entry(fields) == [
        Envelope(b"one", False, "binance", "", "c1", 41, NOW),
        Envelope(b"", False, "binance", "", "c1", 42, NOW + 1),
        Envelope(b"three", False, "binance", "", "c1", 43, NOW + 2),
    ]
    assert run_frame_fields(fields, 2) == decode_entry(fields)[2].fields()
    single = decode_entry(fields)[0].fields()
    assert run_frame_fields(single, 0) == single


@pytest.mark.parametrize("shape", ["flat list", "map"])
def test_each_frame_of_a_run_has_its_own_outcome(shape: str) -> None:
    flat = run_fields([body(1), b"[oops", body(3)])
    fields = flat if shape == "flat list" else dict(zip(flat[::2], flat[1::2], strict=True))
    out = P.process("9-0", fields)
    assert out.frames is not None and out.dead is None and out.recv_ns == NOW
    first, bad, third = out.frames
    assert [t.trade_id for t in first.trades] == ["1"] and first.recv_ns == NOW
    assert bad.dead is not None and "undecodable" in bad.dead and not bad.trades
    assert [t.trade_id for t in third.trades] == ["3"] and third.trades[0].recv_ns == NOW + 2


def test_a_run_whose_lengths_lie_is_one_dead_letter() -> None:
    flat = run_fields([body(1), body(2)])
    flat[15] = b"3,4"
    out = P.process("9-0", flat)
    assert out.frames is None and out.dead is not None and "bad envelope" in out.dead
    batch = Batch()
    batch.add(KEY, "9-0", flat, out, 0.0)
    [dead] = batch.dead
    assert (dead.entry_id, dead.fields[b"l"]) == ("9-0", b"3,4")  # the entry, as it was


def test_a_batch_acks_a_run_once_and_dead_letters_its_bad_frame_alone() -> None:
    flat = run_fields([body(1), b"[oops", body(3)], first_seq=5)
    batch = Batch()
    batch.add(KEY, "9-0", flat, P.process("9-0", flat), 0.0)
    assert batch.acks == {KEY: ["9-0"]} and (batch.entries, batch.frames) == (1, 3)
    assert [t.trade_id for t in batch.trades] == ["1", "3"]
    assert [(s.entry_id, s.trades) for s in batch.spans] == [("9-0/0", (0, 1)), ("9-0/2", (1, 2))]
    [dead] = batch.dead
    assert dead.entry_id == "9-0/1"
    assert dead.fields == Envelope(b"[oops", False, "binance", "", "c1", 6, NOW + 1).fields()


def test_the_worker_stores_runs_acks_their_entries_and_dead_letters_frames() -> None:
    r = fakeredis.FakeRedis()
    ids = []
    for start in (1, 33, 65):
        frames = [body(i) for i in range(start, start + 32)]
        if start == 33:
            frames[4] = b"[oops"  # frame 37
        flat = run_fields(frames, first_seq=start)
        ids.append(r.xadd(KEY, dict(zip(flat[::2], flat[1::2], strict=True))).decode())
    store = MemoryStore(r)
    w = worker(r, store)
    w.run(StopAfter(store, 95))
    assert sorted(int(t.trade_id) for t in store.rows.values()) == [
        i for i in range(1, 97) if i != 37
    ]
    assert r.xpending(KEY, "tickvault")["pending"] == 0
    assert (w.metrics.counters["acked"], w.metrics.counters["frames"]) == (3, 96)
    [(_, dead)] = r.xrange(dead_key("binance"))
    assert dead[b"origin"] == f"{ids[1]}/4".encode() and dead[b"f"] == b"[oops"
    assert dead[b"n"] == b"37" and b"l" not in dead
    assert SETTINGS.consumer.batch_entries >= 96


def test_a_run_of_one_trade_frames_is_one_span_expanded_to_its_frames_when_needed() -> None:
    plain = run_fields([body(1), body(2), body(3)])
    single = run_fields([body(4)])
    batch = Batch()
    batch.add(KEY, "9-0", plain, P.process("9-0", plain), 0.0)
    batch.add(KEY, "9-1", single, P.process("9-1", single), 0.0)
    assert [t.trade_id for t in batch.trades] == ["1", "2", "3", "4"]
    assert (batch.entries, batch.frames, batch.oldest_recv_ns) == (2, 4, NOW)
    assert batch.spans == [
        Span(KEY, "9-0", 0, 3, 0, 0, True),
        Span(KEY, "9-1", 3, 4, 0, 0, False),
    ]
    assert [(s.entry_id, s.trades, s.run) for s in batch.frame_spans()] == [
        ("9-0/0", (0, 1), False),
        ("9-0/1", (1, 2), False),
        ("9-0/2", (2, 3), False),
        ("9-1", (3, 4), False),
    ]


def test_a_run_with_any_other_frame_keeps_a_span_a_frame() -> None:
    # a control frame (an unknown event type) among trades: nothing of the fast path is kept
    flat = run_fields([body(1), b'{"e":"kline","E":1}', body(3)])
    batch = Batch()
    batch.add(KEY, "9-0", flat, P.process("9-0", flat), 0.0)
    assert [t.trade_id for t in batch.trades] == ["1", "3"]
    assert [(s.entry_id, s.trades, s.run) for s in batch.spans] == [
        ("9-0/0", (0, 1), False),
        ("9-0/2", (1, 2), False),
    ]
    assert batch.controls == {"unknown": 1} and batch.frames == 3


def test_a_row_postgres_refuses_inside_a_run_dead_letters_that_frame_alone() -> None:
    r = fakeredis.FakeRedis()
    r.xgroup_create(KEY, "tickvault", id="0", mkstream=True)
    ids = []
    for start in (1, 33, 65):
        flat = run_fields([body(i) for i in range(start, start + 32)], first_seq=start)
        ids.append(r.xadd(KEY, dict(zip(flat[::2], flat[1::2], strict=True))).decode())
    store = RefusingStore({"45": pg.CheckViolation('violates check constraint "x"')})
    w = make(r, store, batch_entries=96, batch_ms=1000)
    w.run(StopAfter(store, 95))  # type: ignore[arg-type]
    assert sorted(int(i) for i in store.rows) == [i for i in range(1, 97) if i != 45]
    assert len(store.writes) <= 20  # halving over the frames: not one write a frame
    [(_, dead)] = r.xrange(dead_key("binance"))
    assert dead[b"origin"] == f"{ids[1]}/12".encode() and dead[b"f"] == body(45)
    assert dead[b"reason"].startswith(b"postgres rejected (23514)") and b"l" not in dead
    assert r.xpending(KEY, "tickvault")["pending"] == 0


def _add_runs(r: fakeredis.FakeRedis, runs: list[list[bytes]]) -> list[str]:
    ids, seq = [], 1
    for frames in runs:
        flat = run_fields(frames, first_seq=seq)
        seq += len(frames)
        ids.append(r.xadd(KEY, dict(zip(flat[::2], flat[1::2], strict=True))).decode())
    return ids


def test_runs_committed_and_killed_before_their_ack_are_stored_once_after_the_restart() -> None:
    # SIGKILL between the commit of a batch of plain runs and the read that would ack it: the
    # entries stay pending; the restarted consumer (same name) writes them again, the natural
    # key stores nothing twice, and it acks them.
    r = fakeredis.FakeRedis()
    _add_runs(r, [[body(i) for i in range(start, start + 32)] for start in (1, 33, 65)])
    store = MemoryStore(r)
    first = worker(r, store)
    first._ack_unacked = lambda: None  # type: ignore[method-assign]  # as if killed -9
    first._leave = lambda failure: None  # type: ignore[method-assign]
    first.run(StopAfter(store, 96))
    assert len(store.rows) == 96 and first.metrics.counters["acked"] == 0
    assert r.xpending(KEY, "tickvault")["pending"] == 3  # committed, never acked

    again = worker(r, store)

    class Acked:
        def is_set(self) -> bool:
            return again.metrics.counters["acked"] >= 3

    again.run(Acked())
    assert r.xpending(KEY, "tickvault")["pending"] == 0
    assert sorted(int(t.trade_id) for t in store.rows.values()) == list(range(1, 97))
    counters = again.metrics.counters
    assert (counters["rows_duplicate"], counters["frames"], counters.get("dead", 0)) == (96, 96, 0)


class FlakyRefusingStore(RefusingStore):
    """Refuses its first ``failures`` writes as a PostgreSQL outage, then some rows for good."""

    def __init__(self, refuse: dict[str, BaseException], failures: int) -> None:
        super().__init__(refuse)
        self.failures = failures

    def write(self, trades: Sequence[Trade], quotes: Sequence[Quote]) -> tuple[int, int]:
        if self.failures:
            self.failures -= 1
            raise TransientError("postgres down")
        return super().write(trades, quotes)


def test_plain_and_hostile_runs_in_one_batch_survive_an_outage_and_a_refused_row() -> None:
    # one batch: a plain run, a run with a hostile frame, a plain run with a row PostgreSQL
    # refuses; PostgreSQL away for the first two writes. Nothing is acked before the batch is
    # stored; the hostile frame and the refused row are dead-lettered alone; the rest is stored.
    r = fakeredis.FakeRedis()
    r.xgroup_create(KEY, "tickvault", id="0", mkstream=True)
    middle = [body(i) for i in range(33, 65)]
    middle[4] = b"[oops"  # frame 37
    ids = _add_runs(r, [[body(i) for i in range(1, 33)], middle, [body(i) for i in range(65, 97)]])
    store = FlakyRefusingStore({"70": pg.CheckViolation('violates check constraint "x"')}, 2)
    pending_at_write: list[int] = []
    write = store.write

    def recording(trades: Sequence[Trade], quotes: Sequence[Quote]) -> tuple[int, int]:
        pending_at_write.append(int(r.xpending(KEY, "tickvault")["pending"]))
        return write(trades, quotes)

    store.write = recording  # type: ignore[method-assign]
    w = make(r, store, batch_entries=96, batch_ms=1000)
    w.run(StopAfter(store, 94))  # type: ignore[arg-type]
    assert sorted(int(i) for i in store.rows) == [i for i in range(1, 97) if i not in (37, 70)]
    assert pending_at_write[:3] == [3, 3, 3]  # refused twice, then written: nothing acked
    letters = {f[b"origin"]: f for _, f in r.xrange(dead_key("binance"))}
    assert set(letters) == {f"{ids[1]}/4".encode(), f"{ids[2]}/5".encode()}
    assert letters[f"{ids[1]}/4".encode()][b"f"] == b"[oops"
    refused = letters[f"{ids[2]}/5".encode()]
    assert refused[b"f"] == body(70) and refused[b"reason"].startswith(b"postgres rejected (23514)")
    assert r.xpending(KEY, "tickvault")["pending"] == 0
