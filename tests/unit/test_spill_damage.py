"""A damaged spill is read, not raised: unreadable segments, records that do not decode, damaged
bytes mid-segment and torn tails; every whole frame that cannot be read is counted."""

from __future__ import annotations

import builtins
import errno
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producer.spill import HEADER, Record, Spill, encode_record

MiB = 1 << 20


def rec(i: int, size: int = 20) -> Record:
    frame = (b'{"t":%d}' % i).ljust(size, b" ")
    return Record(
        "tickvault:raw:{binance}", "binance", "", "c#1", i, 1_700_000_000 + i, False, frame
    )


def drain(spill: Spill, batch: int = 7) -> list[Record]:
    out: list[Record] = []
    while got := spill.take(batch):
        out += got
        spill.consume(len(got))
    return out


def segment(directory: Path, n: int) -> Path:
    return directory / f"{n:016d}.seg"


def three_segments(directory: Path) -> None:
    """Segments 1, 2 and 3 of three records each (seq 0..8), the spill closed."""
    size = len(encode_record(rec(0)))
    spill = Spill(directory, max_bytes=MiB, segment_bytes=3 * size).open()
    assert spill.append([rec(i) for i in range(9)]) == 9
    spill.close()
    assert sorted(directory.glob("*.seg")) == [segment(directory, n) for n in (1, 2, 3)]


# -- a segment that cannot be read at open ---------------------------------------------------


def _dangling_symlink(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path.unlink()
    path.symlink_to("/nonexistent/tickvault/segment")


def _directory(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path.unlink()
    path.mkdir()


def _eio(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == path:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)


@pytest.mark.parametrize("damage", [_dangling_symlink, _directory, _eio])
def test_a_segment_unreadable_at_open_is_skipped_and_counted_not_raised(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path, pytest.MonkeyPatch], None],
) -> None:
    """Not an OSError out of open (exit 1 at every start): the others drain, the loss (of an
    unknown number of frames) makes the exit status 5 through ``missing_segments``."""
    three_segments(tmp_path)
    bad = segment(tmp_path, 2)
    damage(bad, monkeypatch)
    again = Spill(tmp_path, max_bytes=MiB).open()
    assert again.missing_segments == 1
    assert f"spill {bad} cannot be read" in caplog.text and "how many is not known" in caplog.text
    assert [r.seq for r in drain(again)] == [0, 1, 2, 6, 7, 8]
    # left in place, and new frames never go into (or through) it, nor before it
    assert again.append([rec(9)]) == 1
    assert segment(tmp_path, 4).exists() and os.path.lexists(bad)
    assert [r.seq for r in drain(again)] == [9]
    again.close()


def test_a_spill_of_only_unreadable_segments_numbers_new_ones_after_them(tmp_path: Path) -> None:
    three_segments(tmp_path)
    for n in (1, 2, 3):
        segment(tmp_path, n).unlink()
    segment(tmp_path, 3).mkdir()
    again = Spill(tmp_path, max_bytes=MiB).open()
    assert again.missing_segments == 1  # 3, unreadable (1 and 2, gone before it: not seen)
    assert not again and again.append([rec(0)]) == 1
    assert segment(tmp_path, 4).is_file()


def test_a_torn_tail_that_cannot_be_cut_off_keeps_the_records_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only file (or remount): the tail stays on disk, past the segment's readable end;
    the records before it drain and new ones go to a new segment, never after the torn bytes."""
    spill = Spill(tmp_path, max_bytes=MiB).open()
    spill.append([rec(i) for i in range(5)])
    spill.close()
    first = segment(tmp_path, 1)
    torn = first.read_bytes() + encode_record(rec(5))[:-3]
    first.write_bytes(torn)
    real_open = builtins.open

    def read_only(file: object, mode: str = "r", *args: object, **kw: object) -> object:
        if "+" in mode or "w" in mode or "a" in mode:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *args, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr("producer.spill.open", read_only, raising=False)
    again = Spill(tmp_path, max_bytes=MiB).open()
    assert again.records == 5 and again.torn == 1
    assert "torn tail cannot be cut off" in caplog.text and "Read-only" in caplog.text
    monkeypatch.undo()
    assert first.read_bytes() == torn
    assert again.append([rec(6)]) == 1
    assert first.read_bytes() == torn and segment(tmp_path, 2).exists()
    assert [r.seq for r in drain(again)] == [0, 1, 2, 3, 4, 6]


# -- a record whose CRC is right but which does not decode ------------------------------------


def newer(i: int) -> bytes:
    """A record of a (hypothetical) newer format: one field more than this version reads."""
    payload = msgspec.msgpack.encode((*rec(i), "a field from the future"))
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def test_a_record_that_does_not_decode_loses_only_its_frame(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not the rest of its segment treated as torn (999 of 1,000 frames, uncounted)."""
    data = b"".join(newer(i) if i == 2 else encode_record(rec(i)) for i in range(1, 1001))
    segment(tmp_path, 1).write_bytes(data)
    spill = Spill(tmp_path, max_bytes=MiB).open()
    assert [r.seq for r in drain(spill)] == [1, *range(3, 1001)]
    assert spill.dropped == 1 and not spill
    assert "0000000000000001.seg: the record at byte" in caplog.text
    assert "does not decode" in caplog.text


def test_a_record_that_does_not_decode_is_counted_once_whatever_is_taken_again(
    tmp_path: Path,
) -> None:
    data = b"".join(newer(i) if i in (2, 3, 6) else encode_record(rec(i)) for i in range(8))
    segment(tmp_path, 1).write_bytes(data)
    spill = Spill(tmp_path, max_bytes=MiB).open()
    assert [r.seq for r in spill.take(3)] == [0, 1, 4]
    spill.untake()  # the XADD failed: taken again, past the same records
    assert [r.seq for r in spill.take(3)] == [0, 1, 4]
    spill.consume(2)
    assert [r.seq for r in spill.take(9)] == [5, 7]  # (after 4, still taken)
    spill.consume(3)
    assert spill.dropped == 3 and not spill and spill.records == 0


def test_a_segment_of_records_that_do_not_decode_goes_and_the_next_drains(
    tmp_path: Path,
) -> None:
    segment(tmp_path, 1).write_bytes(newer(0) + newer(1))
    segment(tmp_path, 2).write_bytes(encode_record(rec(2)))
    spill = Spill(tmp_path, max_bytes=MiB).open()
    assert [r.seq for r in drain(spill)] == [2] and spill.dropped == 2
    assert list(tmp_path.glob("*.seg")) == []


# -- damaged bytes and torn tails ---------------------------------------------------------------


def written(directory: Path, n: int, size: int = 20) -> tuple[Path, list[int]]:
    """One segment of ``n`` records; the byte offset each starts at (and the end)."""
    blobs = [encode_record(rec(i, size)) for i in range(n)]
    starts = [sum(len(b) for b in blobs[:i]) for i in range(n + 1)]
    path = segment(directory, 1)
    path.write_bytes(b"".join(blobs))
    return path, starts


def test_whole_records_with_a_wrong_crc_in_a_torn_tail_are_counted(tmp_path: Path) -> None:
    path, starts = written(tmp_path, 5)
    data = bytearray(path.read_bytes())
    data[starts[4] + HEADER.size + 2] ^= 0x01  # the last record, whole, a bit flipped
    path.write_bytes(bytes(data))
    spill = Spill(tmp_path, max_bytes=MiB).open()
    assert [r.seq for r in drain(spill)] == [0, 1, 2, 3]
    assert spill.torn == 1 and spill.dropped == 1


def test_a_partial_last_record_is_a_torn_tail_not_a_lost_frame(tmp_path: Path) -> None:
    """A crash mid-append: that frame never was on disk whole (as before: logged, not lost)."""
    path, _ = written(tmp_path, 5)
    path.write_bytes(path.read_bytes() + encode_record(rec(5))[:-1])
    spill = Spill(tmp_path, max_bytes=MiB).open()
    assert [r.seq for r in drain(spill)] == [0, 1, 2, 3, 4]
    assert spill.torn == 1 and spill.dropped == 0


def test_zeros_a_host_crash_leaves_are_no_records(tmp_path: Path) -> None:
    """A file extended but its pages never written back reads as zeros: a length of 0 and a CRC
    of 0 would pass the CRC check; they are a torn tail, cut off, not 512 empty records."""
    path, starts = written(tmp_path, 5)
    path.write_bytes(path.read_bytes() + bytes(4096))
    spill = Spill(tmp_path, max_bytes=MiB).open()
    assert spill.records == 5 and spill.torn == 1 and spill.dropped == 0
    assert path.stat().st_size == starts[5]
    assert [r.seq for r in drain(spill)] == [0, 1, 2, 3, 4]


def test_zeros_amid_records_lose_only_what_they_cover(tmp_path: Path) -> None:
    path, starts = written(tmp_path, 10)
    data = bytearray(path.read_bytes())
    data[starts[3] + 5 : starts[5]] = bytes(starts[5] - starts[3] - 5)
    path.write_bytes(bytes(data))
    spill = Spill(tmp_path, max_bytes=MiB).open()
    assert [r.seq for r in drain(spill)] == [0, 1, 2, 5, 6, 7, 8, 9]
    assert spill.torn == 1 and spill.dropped >= 1  # (how many: at least one)


def test_a_wrong_length_field_amid_records_loses_only_its_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, starts = written(tmp_path, 6)
    data = bytearray(path.read_bytes())
    data[starts[2] + 2] ^= 0x40  # its length: far past the end
    path.write_bytes(bytes(data))
    spill = Spill(tmp_path, max_bytes=MiB).open()
    assert [r.seq for r in drain(spill)] == [0, 1, 3, 4, 5]
    assert spill.dropped == 1 and "at least 1 frames lost" in caplog.text


def test_a_length_field_that_lands_on_a_later_record_skips_no_whole_one(tmp_path: Path) -> None:
    """The walk by length fields would land on record 3; record 2, whole, is found before."""
    path, starts = written(tmp_path, 5)
    data = bytearray(path.read_bytes())
    HEADER.pack_into(data, starts[1], starts[3] - starts[1] - HEADER.size, 0)
    path.write_bytes(bytes(data))
    spill = Spill(tmp_path, max_bytes=MiB).open()
    assert [r.seq for r in drain(spill)] == [0, 2, 3, 4] and spill.dropped == 1


def test_consecutive_damaged_records_are_counted_each(tmp_path: Path) -> None:
    path, starts = written(tmp_path, 8)
    data = bytearray(path.read_bytes())
    for i in (2, 3, 4):
        data[starts[i] + HEADER.size + 5] ^= 0x10
    path.write_bytes(bytes(data))
    spill = Spill(tmp_path, max_bytes=MiB).open()
    assert [r.seq for r in drain(spill)] == [0, 1, 5, 6, 7]
    assert spill.torn == 1 and spill.dropped == 3


# -- the property ---------------------------------------------------------------------------

_damage = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
    st.tuples(st.just("zero"), st.floats(0, 1, exclude_max=True), st.integers(1, 300)),
    st.tuples(st.just("cut"), st.floats(0, 1, exclude_max=True), st.just(0)),
    st.tuples(st.just("torn"), st.floats(0, 1, exclude_max=True), st.just(0)),
    st.tuples(st.just("garbage"), st.floats(0, 1), st.integers(1, 200)),
)


@settings(max_examples=300, database=None, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 200), min_size=1, max_size=30),
    damage=st.lists(_damage, min_size=1, max_size=4),
    garbage=st.binary(min_size=1, max_size=200),
)
def test_a_damaged_segment_never_raises_never_invents_a_frame_and_counts_its_losses(
    sizes: list[int],
    damage: list[tuple[str, float, int]],
    garbage: bytes,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Bit flips, zeroed stretches, cuts, a torn append and garbage, in any mix: opening and
    draining never raise; each record drained is one written, in order; every record whole and
    untouched on disk is drained; a damaged whole record followed by an untouched one is counted
    (a damaged last record with a wrong length field reads as a torn append: not knowable)."""
    directory = tmp_path_factory.mktemp("spill")
    records = [rec(i, size) for i, size in enumerate(sizes)]
    blobs = [encode_record(r) for r in records]
    data = bytearray(b"".join(blobs))
    spans = [(sum(map(len, blobs[:i])), sum(map(len, blobs[: i + 1]))) for i in range(len(blobs))]
    before = bytes(data)
    original = len(data)  # how much of the original bytes is still there
    for kind, where, n in damage:
        at = int(where * len(data)) if data else 0
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << n
        elif kind == "zero" and at < len(data):
            end = min(len(data), at + n)
            data[at:end] = bytes(end - at)
        elif kind == "cut":
            del data[at:]
            original = min(original, at)
        elif kind == "torn":
            data += encode_record(rec(len(records)))[: max(1, at % 40)]
        elif kind == "garbage":
            data += garbage[:n]
    segment(directory, 1).write_bytes(bytes(data))
    touched = {i for i in range(original) if data[i] != before[i]}

    spill = Spill(directory, max_bytes=64 * MiB).open()
    drained = drain(spill, batch=5)

    seqs = [r.seq for r in drained]
    assert seqs == sorted(set(seqs))
    assert all(r == records[r.seq] for r in drained)
    whole = [i for i, (s, e) in enumerate(spans) if e <= original]
    intact = [i for i in whole if not any(spans[i][0] <= t < spans[i][1] for t in touched)]
    assert set(intact) <= set(seqs)
    damaged = [i for i in whole if i not in intact]
    if damaged and any(i > damaged[0] for i in intact):
        assert spill.dropped >= 1
    assert not spill
    spill.close()
