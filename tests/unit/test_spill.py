"""The producer's disk spill: order, durability across a reopen, torn records, the size bound."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import parse_fsync
from producer.spill import HEADER, Record, Spill, SpillError, encode_record


def rec(i: int, size: int = 20) -> Record:
    frame = (b'{"t":%d}' % i).ljust(size, b" ")
    key = "tickvault:raw:{binance}"
    return Record(key, "binance", "", "c#1", i, 1_700_000_000 + i, False, frame)


def drain(spill: Spill, batch: int = 7) -> list[Record]:
    out: list[Record] = []
    while True:
        got = spill.take(batch)
        if not got:
            return out
        out += got
        spill.consume(len(got))


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    spill = Spill(tmp_path, max_bytes=1 << 20, segment_bytes=500).open()
    records = [rec(i) for i in range(100)]
    assert spill.append(records[:60]) == 60
    assert spill.append(records[60:]) == 40
    assert len(list(tmp_path.glob("*.seg"))) > 3 and spill.records == 100
    assert drain(spill) == records
    assert not spill and list(tmp_path.glob("*.seg")) == []


def test_a_reopened_spill_holds_what_a_killed_producer_appended(tmp_path: Path) -> None:
    first = Spill(tmp_path, max_bytes=1 << 20, fsync_every_s=None).open()
    first.append([rec(i) for i in range(10)])
    taken = first.take(4)
    first.consume(2)  # two were sent; two more were in flight when it died
    assert [r.seq for r in taken] == [0, 1, 2, 3]
    os.close(first._lock_fd)  # type: ignore[arg-type]  # as a SIGKILL would release it
    second = Spill(tmp_path, max_bytes=1 << 20).open()
    # the two consumed ones are gone only if their segment was; re-sending is harmless
    seqs = [r.seq for r in drain(second)]
    assert seqs[-8:] == list(range(2, 10)) and seqs == sorted(seqs)


def test_a_torn_last_record_is_skipped_with_a_log_line_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spill = Spill(tmp_path, max_bytes=1 << 20).open()
    spill.append([rec(i) for i in range(5)])
    spill.close()
    [segment] = tmp_path.glob("*.seg")
    whole = segment.read_bytes()
    segment.write_bytes(whole + encode_record(rec(5))[:-3])  # a crash mid-append
    again = Spill(tmp_path, max_bytes=1 << 20).open()
    assert [r.seq for r in drain(again)] == [0, 1, 2, 3, 4]
    assert again.torn == 1 and "torn record" in caplog.text


def test_a_corrupted_record_is_skipped_counted_and_the_records_after_it_read(
    tmp_path: Path,
) -> None:
    spill = Spill(tmp_path, max_bytes=1 << 20).open()
    spill.append([rec(i) for i in range(5)])
    spill.close()
    [segment] = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    third = 2 * len(encode_record(rec(0)))
    data[third + HEADER.size + 3] ^= 0xFF  # a flipped bit: its CRC no longer matches
    segment.write_bytes(bytes(data))
    again = Spill(tmp_path, max_bytes=1 << 20).open()
    assert [r.seq for r in drain(again)] == [0, 1, 3, 4] and again.torn == 1
    assert again.dropped == 1


def test_a_full_spill_blocks_or_drops_its_oldest_segment(tmp_path: Path) -> None:
    size = len(encode_record(rec(0)))
    block = Spill(tmp_path / "block", max_bytes=10 * size, segment_bytes=3 * size).open()
    assert block.append([rec(i) for i in range(15)]) == 10  # the rest is refused
    assert block.dropped == 0
    drop = Spill(
        tmp_path / "drop", max_bytes=10 * size, segment_bytes=3 * size, drop_oldest=True
    ).open()
    assert drop.append([rec(i) for i in range(15)]) == 15
    assert drop.dropped > 0 and drop.bytes <= 10 * size
    seqs = [r.seq for r in drain(drop)]
    assert seqs == list(range(15 - len(seqs), 15))  # the newest are kept, in order
    assert drop.dropped + len(seqs) == 15


def test_one_producer_per_directory(tmp_path: Path) -> None:
    Spill(tmp_path, max_bytes=100).open()
    with pytest.raises(SpillError, match="in use"):
        Spill(tmp_path, max_bytes=100).open()


def test_untaken_records_are_taken_again(tmp_path: Path) -> None:
    spill = Spill(tmp_path, max_bytes=1 << 20).open()
    spill.append([rec(i) for i in range(3)])
    assert [r.seq for r in spill.take(2)] == [0, 1]
    spill.untake()  # the XADD failed
    assert [r.seq for r in drain(spill)] == [0, 1, 2]


def test_fsync_policies() -> None:
    assert parse_fsync("always") == 0.0 and parse_fsync("never") is None
    assert parse_fsync("200ms") == pytest.approx(0.2) and parse_fsync("2s") == 2.0
    for bad in ("sometimes", "0ms", "-1s", "1h", ""):
        with pytest.raises(ValueError):
            parse_fsync(bad)


@settings(max_examples=60, database=None, deadline=None)
@given(
    ops=st.lists(st.tuples(st.sampled_from(["append", "drain"]), st.integers(1, 30)), max_size=25)
)
def test_appends_and_drains_interleaved_keep_order_and_lose_nothing(
    ops: list[tuple[str, int]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    spill = Spill(tmp_path_factory.mktemp("spill"), max_bytes=1 << 20, segment_bytes=300).open()
    written = drained = 0
    out: list[int] = []
    for op, n in ops:
        if op == "append":
            spill.append([rec(written + i, size=5 + (written + i) % 40) for i in range(n)])
            written += n
        else:
            got = spill.take(n)
            spill.consume(len(got))
            out += [r.seq for r in got]
            drained += len(got)
    out += [r.seq for r in drain(spill)]
    assert out == list(range(written))
    spill.close()


def test_records_larger_than_the_read_window_drain_whole(tmp_path: Path) -> None:
    spill = Spill(tmp_path, max_bytes=64 << 20).open()
    big = [rec(i, size=5 << 20) for i in range(3)]  # 5 MiB frames: past the 4 MiB window
    spill.append([rec(0), *big[1:], rec(3)])
    assert [r.seq for r in drain(spill, batch=1)] == [0, 1, 2, 3]
    assert spill.torn == 0


class _DiskFull:
    """``os.write`` of the spill module failing as a full disk does: the ``at``-th call writes
    ``part`` bytes of what it is given (a short write), the next raises ENOSPC, until cleared."""

    def __init__(self, at: int, part: int) -> None:
        self.calls, self.at, self.part, self.full = 0, at, part, False
        self.real = os.write

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        self.calls += 1
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if self.calls == self.at:
            self.full = True
            return self.real(fd, bytes(data)[: self.part])
        return self.real(fd, data)


@pytest.mark.parametrize("part", [0, 5, HEADER.size + 3])
def test_a_full_disk_refuses_what_it_cannot_hold_and_loses_nothing_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, part: int
) -> None:
    """ENOSPC (or any write error) mid-append: the records before it are taken, the torn bytes
    are cut off, and once the disk has room the next appends follow them: none is hidden behind
    a torn record, none raised to the publisher (it keeps the rest in memory, as when full)."""
    size = len(encode_record(rec(0)))
    spill = Spill(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20).open()
    assert spill.append([rec(i) for i in range(3)]) == 3
    fault = _DiskFull(at=1, part=part)
    monkeypatch.setattr("producer.spill.os.write", fault)
    assert spill.append([rec(i) for i in range(3, 8)]) == 0  # one write: all or none of it
    assert spill.write_error is not None and spill.write_error.errno == errno.ENOSPC
    assert "spill cannot be written" in caplog.text
    [segment] = tmp_path.glob("*.seg")
    assert segment.stat().st_size == 3 * size == spill.bytes  # the torn bytes are gone
    assert spill.append([rec(3)]) == 0  # still full: refused again, nothing torn
    fault.full = False  # room again
    assert spill.append([rec(i) for i in range(3, 8)]) == 5
    assert spill.write_error is None
    assert drain(spill) == [rec(i) for i in range(8)] and spill.torn == 0


def test_a_full_disk_at_a_new_segment_leaves_no_empty_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = len(encode_record(rec(0)))
    spill = Spill(tmp_path, max_bytes=1 << 20, segment_bytes=2 * size).open()
    assert spill.append([rec(0), rec(1)]) == 2  # the first segment is full
    monkeypatch.setattr("producer.spill.os.write", _DiskFull(at=1, part=0))
    assert spill.append([rec(2)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.seg")) == ["0000000000000001.seg"]
    assert spill.records == 2
    monkeypatch.undo()
    assert spill.append([rec(2), rec(3)]) == 2
    assert drain(spill) == [rec(i) for i in range(4)]


def test_a_reopened_spill_after_a_full_disk_reads_every_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a SIGKILL right after the refusal leaves: no torn record in the middle."""
    spill = Spill(tmp_path, max_bytes=1 << 20).open()
    monkeypatch.setattr("producer.spill.os.write", _DiskFull(at=2, part=7))
    assert spill.append([rec(0)]) == 1
    assert spill.append([rec(1)]) == 0
    monkeypatch.undo()
    assert spill.append([rec(2)]) == 1
    os.close(spill._lock_fd)  # type: ignore[arg-type]  # as a SIGKILL would release it
    again = Spill(tmp_path, max_bytes=1 << 20).open()
    assert [r.seq for r in drain(again)] == [0, 2] and again.torn == 0


def test_a_segment_that_cannot_be_cut_back_is_closed_and_the_next_write_starts_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk so broken that the cut fails too: the torn bytes stay past the segment's valid
    end, so appends go to a new segment, and a reopen cuts them (counted as torn)."""
    spill = Spill(tmp_path, max_bytes=1 << 20).open()
    assert spill.append([rec(0)]) == 1
    monkeypatch.setattr("producer.spill.os.write", _DiskFull(at=1, part=9))

    def no_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr("producer.spill.os.ftruncate", no_truncate)
    assert spill.append([rec(1)]) == 0
    monkeypatch.undo()
    assert spill.append([rec(2)]) == 1
    assert len(list(tmp_path.glob("*.seg"))) == 2
    assert [r.seq for r in drain(spill)] == [0, 2]
    spill.append([rec(3)])
    os.close(spill._lock_fd)  # type: ignore[arg-type]
    again = Spill(tmp_path, max_bytes=1 << 20).open()
    assert [r.seq for r in drain(again)] == [3]


def test_a_failed_fsync_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spill = Spill(tmp_path, max_bytes=1 << 20, fsync_every_s=0.0).open()

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr("producer.spill.os.fsync", eio)
    assert spill.append([rec(0), rec(1)]) == 2  # written: in the kernel, if not on the disk
    spill.close()  # the stop's sync
    assert caplog.text.count("spill fsync failed") == 1
    monkeypatch.undo()
    again = Spill(tmp_path, max_bytes=1 << 20).open()
    assert [r.seq for r in drain(again)] == [0, 1]


def test_a_new_segment_syncs_its_directory_with_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a policy that syncs, a new segment's name is made durable too (the directory
    fsynced): after a host crash its synced frames are not lost with a missing entry. Under
    "never", nothing is synced."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr("producer.spill.os.fsync", fsync)
    size = len(encode_record(rec(0)))
    spill = Spill(tmp_path / "a", max_bytes=1 << 20, segment_bytes=2 * size, fsync_every_s=0.0)
    spill.open()
    spill.append([rec(0), rec(1)])
    spill.append([rec(2)])  # a second segment
    spill.append([rec(3)])  # the same one: no directory sync
    directory = str(tmp_path / "a")
    assert synced.count(directory) == 2
    assert [p.rsplit("/", 1)[-1] for p in synced] == [
        "a",
        "0000000000000001.seg",
        "a",
        "0000000000000002.seg",
        "0000000000000002.seg",
    ]  # fmt: skip (the directory first, then the new segment's data)
    spill.close()
    synced.clear()
    never = Spill(tmp_path / "b", max_bytes=1 << 20, fsync_every_s=None).open()
    never.append([rec(0)])
    assert synced == []
    never.close()  # (the stop's sync: whatever the policy)
    assert synced == [str(tmp_path / "b"), str(tmp_path / "b" / "0000000000000001.seg")]


def test_a_segment_that_cannot_be_read_is_counted_lost_and_the_drain_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A segment deleted under the spill (or a disk error reading it): its frames are lost,
    counted as dropped, and the next segments drain; not a retry for ever with everything newer
    waiting behind it."""
    size = len(encode_record(rec(0)))
    spill = Spill(tmp_path, max_bytes=1 << 20, segment_bytes=3 * size).open()
    assert spill.append([rec(i) for i in range(9)]) == 9  # three segments of three
    first, second, _ = sorted(tmp_path.glob("*.seg"))
    first.unlink()
    assert [r.seq for r in spill.take(2)] == [3, 4]  # the next segment's, at once
    assert spill.dropped == 3 and "cannot be read" in caplog.text
    spill.consume(2)
    assert [r.seq for r in spill.take(2)] == [5]  # (one segment a take)
    second.unlink()  # read whole already (its bytes are in memory): nothing more is lost
    spill.consume(1)
    assert [r.seq for r in drain(spill)] == [6, 7, 8] and spill.dropped == 3
    assert not spill


def test_a_read_error_on_a_segment_drops_only_that_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    size = len(encode_record(rec(0)))
    spill = Spill(tmp_path, max_bytes=1 << 20, segment_bytes=3 * size).open()
    spill.append([rec(i) for i in range(6)])
    bad = sorted(tmp_path.glob("*.seg"))[0]
    real_open = builtins.open

    def failing_open(path: object, *args: object, **kw: object) -> object:
        if Path(str(path)) == bad:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_open(path, *args, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr("producer.spill.open", failing_open, raising=False)
    assert [r.seq for r in drain(spill)] == [3, 4, 5]
    assert spill.dropped == 3


def test_a_segment_missing_at_open_is_logged_as_a_loss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    size = len(encode_record(rec(0)))
    spill = Spill(tmp_path, max_bytes=1 << 20, segment_bytes=2 * size).open()
    spill.append([rec(i) for i in range(8)])  # segments 1..4
    spill.close()
    for n in (2, 3):
        (tmp_path / f"{n:016d}.seg").unlink()
    again = Spill(tmp_path, max_bytes=1 << 20).open()
    assert again.missing_segments == 2 and "segments 2..3 are missing" in caplog.text
    assert [r.seq for r in drain(again)] == [0, 1, 6, 7]
    again.close()
    caplog.clear()
    assert Spill(tmp_path, max_bytes=1 << 20).open().missing_segments == 0  # drained: none
    assert "missing" not in caplog.text
