"""The producer's disk spill: frames that cannot go to Redis now wait here, in order, on disk.

Layout: one directory per producer name, holding segment files ``<16-digit number>.seg`` and a
``lock`` file (one producer at a time owns a directory; a second one fails at start). A segment
is a sequence of records::

    <u32 payload length, little-endian> <u32 CRC-32 of the payload> <payload>

and a payload is the msgpack array ``[stream key, exchange, context, connection id, number,
receive ns, binary?, frame bytes]``: everything needed to XADD the frame as it would have been.

Invariants:
- records are appended in the order frames arrived and drained in that order, oldest segment
  first; a drained record is forgotten only after the caller says its XADD succeeded
  (:meth:`Spill.consume`), so a crash mid-drain re-sends some frames (the consumers' natural
  keys absorb the duplicates) and loses none;
- ``write()`` puts the bytes in the kernel at once, so a SIGKILLed producer loses nothing that
  was appended; ``fsync`` (``always`` / an interval / ``never``) decides what survives a host
  crash;
- damage is never raised and never silent (logged; lost frames counted in ``dropped``). Where
  the framing fails (a short header or payload, a wrong CRC, a zero length), the reader looks
  for the next whole record. One further on means whole records were lost in between: as many
  as their length fields delimit, or at least one; reading goes on with it. None means a torn
  tail (a crash mid-append), cut off the file: the whole records in it (a wrong CRC) are
  counted, a last, partial one is not (it was never written whole). A record whose CRC is right
  but which does not decode (another version's format, a bug) is skipped alone and counted. A
  segment that cannot be read at all (EIO, not a file) is left in place and skipped, counted in
  ``missing_segments`` as how many frames it held is not known;
- the spill holds at most ``max_bytes``; past that, ``append`` refuses (policy ``block``: the
  caller stops reading its sockets) or deletes the oldest segment (``drop-oldest``: counted as
  lost frames);
- a write the disk refuses (ENOSPC, EDQUOT, EIO, EROFS, ...) takes nothing of its records:
  bytes it wrote before failing are cut off again, so no torn record ever sits before good
  ones, and ``append`` refuses the rest as when full (``write_error`` says why) and tries again
  at the next call.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import msgspec

logger = logging.getLogger(__name__)

HEADER = struct.Struct("<II")
SEGMENT_BYTES = 64 << 20  # a segment is closed past this size
READ_CHUNK = 1 << 20  # bytes per write() at most when appending
WINDOW = 4 << 20  # bytes read at once when draining (more for a larger record)

_encode = msgspec.msgpack.Encoder().encode


class SpillError(Exception):
    """The spill directory cannot be used (another producer owns it, or it is not writable)."""


class Record(NamedTuple):
    key: str
    exchange: str
    context: str
    conn: str
    seq: int
    recv_ns: int
    binary: bool
    frame: bytes
    marker: bool = False  # a coverage marker (``producer.markers``); absent in older segments


_decode = msgspec.msgpack.Decoder(Record).decode
# where a payload may start, looking for the next record past damage: a msgpack fixarray (the
# record's fields) whose first item is a str (the stream key)
_PAYLOAD_START = re.compile(rb"[\x90-\x9f][\xa0-\xbf\xd9\xda]")


def encode_record(record: Record) -> bytes:
    payload = _encode(tuple(record))
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass
class _Segment:
    path: Path
    size: int  # valid bytes on disk
    records: int  # records not yet consumed
    skips: dict[int, int] = field(default_factory=dict)  # damaged bytes: start -> end


class Damage(NamedTuple):
    """Bytes of a segment that hold no readable record."""

    start: int
    end: int  # where reading goes on (the file's end for a torn tail)
    frames: int  # whole frames lost in them (at least that many when not ``exact``)
    exact: bool  # ``frames`` delimited by the records' length fields
    tail: bool  # no whole record after them: a torn tail, cut off


class Scan(NamedTuple):
    size: int  # readable bytes: the segment without its torn tail
    records: int  # whole records
    damage: list[Damage]


def scan_segment(data: bytes) -> Scan:
    """Find a segment's whole records and its damage (see the module docstring)."""
    offset = records = 0
    damage: list[Damage] = []
    while offset < len(data):
        end = _record_end(data, offset)
        if end is not None:
            offset, records = end, records + 1
            continue
        # The length fields say where the damaged records end, unless one is wrong too: a
        # record found before the walk lands (or without it) says so.
        walked, frames = _walk_damaged(data, offset)
        landed = walked < len(data) and _record_end(data, walked) is not None
        found = _next_record(data, offset + 1, walked if landed else len(data))
        if found is not None:
            damage.append(Damage(offset, found, 1, False, False))
        elif landed:
            damage.append(Damage(offset, walked, frames, True, False))
        else:
            damage.append(Damage(offset, len(data), frames, walked == len(data), True))
            break
        offset = found if found is not None else walked
    return Scan(offset, records, damage)


def _walk_damaged(data: bytes, offset: int) -> tuple[int, int]:
    """From ``offset``, over records whose length fits but whose CRC is wrong: (where the walk
    stops, how many it passed)."""
    count = 0
    while len(data) - offset >= HEADER.size:
        length = HEADER.unpack_from(data, offset)[0]
        end = offset + HEADER.size + length
        if not length or end > len(data) or _record_end(data, offset) is not None:
            break
        offset, count = end, count + 1
    return offset, count


def _next_record(data: bytes, start: int, stop: int) -> int | None:
    """The first offset in [start, stop) where a whole record of this format begins. A false
    match needs a payload that decodes as a record and a matching CRC-32."""
    view = memoryview(data)
    for match in _PAYLOAD_START.finditer(data, start + HEADER.size):
        offset = match.start() - HEADER.size
        if offset >= stop:
            return None
        length = HEADER.unpack_from(data, offset)[0]
        end = offset + HEADER.size + length
        if end > len(data):
            continue
        try:  # (before the CRC: garbage fails within a few bytes, a CRC reads them all)
            _decode(view[offset + HEADER.size : end])
        except msgspec.DecodeError:
            continue
        if _record_end(data, offset) == end:
            return offset
    return None


class Spill:
    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        fsync_every_s: float | None = 0.0,
        drop_oldest: bool = False,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync_every_s = fsync_every_s
        self.drop_oldest = drop_oldest
        self.segment_bytes = segment_bytes
        self.torn = 0  # stretches of damaged bytes found (torn tails included)
        self.dropped = 0  # frames lost: drop-oldest, unreadable or damaged records
        self.write_error: OSError | None = None  # the disk refused the last append's write
        self.missing_segments = 0  # found missing (deleted) or unreadable at open
        self._next_number = 1  # of a new segment, at least: past every one found at open
        self._segments: list[_Segment] = []
        self._writer: int | None = None  # fd of the last segment, open for appending
        self._last_fsync = time.monotonic()
        self._dirty = False
        self._new_name = False  # a segment created since the directory was last synced
        # draining, in the first segment: where its first unconsumed record starts, the end
        # offsets of records taken but not yet consumed, and a window of its bytes
        self._read_offset = 0
        self._taken: list[int] = []
        self._window = b""
        self._window_start = 0
        self._lock_fd: int | None = None

    # -- life ---------------------------------------------------------------------------------
    def open(self) -> Spill:
        """Take the directory (lock) and find the segments a predecessor left."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpillError(f"spill directory {self.directory}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpillError(
                f"spill directory {self.directory} is in use by another producer "
                "(give each producer its own producer.name)"
            ) from None
        self._lock_fd = fd
        paths = sorted(self.directory.glob("*.seg"))
        for path in paths:
            if not path.stem.isdigit():
                logger.warning("spill %s: %s is not a segment: left alone", self.directory, path)
        paths = [p for p in paths if p.stem.isdigit()]
        self._missing(paths)
        self._next_number = max((int(p.stem) + 1 for p in paths), default=1)
        for path in paths:
            segment = self._scan(path)
            if segment is None:
                continue
            if segment.records:
                self._segments.append(segment)
                continue
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("spill %s: no records left, cannot be deleted: %s", path, exc)
        if self._segments:
            logger.warning(
                "spill %s holds %d frames (%d bytes) from an earlier run: draining them first",
                self.directory, self.records, self.bytes,
            )  # fmt: skip
        return self

    def _missing(self, paths: list[Path]) -> None:
        """Segments are numbered in order and drained from the first: one missing between two
        that are left was deleted by someone else, and its frames are lost (how many, nobody
        can say now). Logged, so a loss is not silent."""
        numbers = [int(p.stem) for p in paths if p.stem.isdigit()]
        for before, after in itertools.pairwise(numbers):
            if after > before + 1:
                self.missing_segments += after - before - 1
                logger.error(
                    "spill %s: segments %d..%d are missing (deleted?): their frames are lost",
                    self.directory, before + 1, after - 1,
                )  # fmt: skip

    def close(self) -> None:
        self.sync()
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _scan(self, path: Path) -> _Segment | None:
        """A segment found at open, its damage logged and counted and its torn tail cut off the
        file; None if it cannot be read (left in place: a disk error may pass by the next
        start, and a file or directory someone put there is theirs)."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.missing_segments += 1
            logger.error(
                "spill %s cannot be read (%s): its frames are lost, how many is not known; "
                "skipped, left in place", path, exc,
            )  # fmt: skip
            return None
        scan = scan_segment(data)
        for damage in scan.damage:
            self._damaged(path, damage, len(data))
        if scan.size < len(data):
            try:
                with open(path, "r+b") as fh:
                    fh.truncate(scan.size)
            except OSError as exc:  # new records go to a new segment anyway, never after it
                logger.warning(
                    "spill %s: its torn tail cannot be cut off (%s): the %d records before "
                    "it are read, it is not", path, exc, scan.records,
                )  # fmt: skip
        skips = {d.start: d.end for d in scan.damage if not d.tail}
        return _Segment(path, scan.size, scan.records, skips)

    def _damaged(self, path: Path, damage: Damage, size: int) -> None:
        self.torn += 1
        self.dropped += damage.frames
        if damage.tail:
            logger.error(
                "spill %s: torn record at byte %d of %d (a crash mid-write): skipped the rest%s",
                path.name, damage.start, size,
                f"; {damage.frames} whole frames in it (a wrong CRC) are lost"
                if damage.frames else "",
            )  # fmt: skip
        else:
            logger.error(
                "spill %s: bytes %d..%d are damaged (a wrong CRC or length): %s%d frames lost; "
                "the records after them are read",
                path.name, damage.start, damage.end, "" if damage.exact else "at least ",
                damage.frames,
            )  # fmt: skip

    def _torn(self, path: Path, offset: int, size: int) -> None:
        self.torn += 1
        logger.error(
            "spill %s: torn record at byte %d of %d (a crash mid-write): skipped the rest",
            path.name, offset, size,
        )  # fmt: skip

    # -- state --------------------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def records(self) -> int:
        """Records not yet consumed (those taken and not yet consumed included)."""
        return sum(s.records for s in self._segments)

    def __bool__(self) -> bool:
        return bool(self._segments)

    # -- writing ------------------------------------------------------------------------------
    def append(self, records: Iterable[Record]) -> int:
        """Append ``records`` in order; returns how many were taken (fewer when the spill is
        full and the policy is ``block``). Not while records are taken (see ``take``)."""
        assert not self._taken, "append while a drain is under way"
        taken = count = 0
        chunk = bytearray()
        for record in records:
            blob = encode_record(record)
            if chunk and (
                len(chunk) + len(blob) > READ_CHUNK or self._segment_room() < len(chunk) + len(blob)
            ):
                # a segment ends at a write: keep writes within one
                if not self._written(chunk, count):
                    return taken
                taken += count
                chunk, count = bytearray(), 0
            if not self._room(len(chunk) + len(blob)):
                break
            chunk += blob
            count += 1
        if chunk:
            if not self._written(chunk, count):
                return taken
            taken += count
        return taken

    def _segment_room(self) -> int:
        """Bytes the segment being written takes before the next write starts a new one."""
        last = self._segments[-1] if self._segments else None
        if self._writer is None or last is None or last.size >= self.segment_bytes:
            return self.segment_bytes
        return self.segment_bytes - last.size

    def _room(self, more: int) -> bool:
        if self.bytes + more <= self.max_bytes:
            return True
        if not self.drop_oldest:
            return False
        while self.bytes + more > self.max_bytes and self._segments:
            self._drop_first()
        return self.bytes + more <= self.max_bytes

    def _drop_first(self) -> None:
        first = self._segments.pop(0)
        if not self._segments and self._writer is not None:
            os.close(self._writer)
            self._writer = None
        self.dropped += first.records
        self._read_offset, self._window, self._window_start = 0, b"", 0
        first.path.unlink(missing_ok=True)
        logger.error(
            "spill full (%d bytes): deleted its oldest segment, %d frames lost",
            self.max_bytes, first.records,
        )  # fmt: skip

    def _written(self, chunk: bytearray, count: int) -> bool:
        """Write ``chunk`` (``count`` whole records); False, with nothing of it kept, when the
        disk refuses it."""
        try:
            self._write(chunk, count)
        except OSError as exc:
            if self.write_error is None or self.write_error.errno != exc.errno:
                logger.error(
                    "spill cannot be written (%s): %d frames refused until it can",
                    exc, count,
                )  # fmt: skip
            self.write_error = exc
            return False
        if self.write_error is not None:
            logger.warning("spill written again after: %s", self.write_error)
            self.write_error = None
        return True

    def _write(self, chunk: bytearray, count: int) -> None:
        last = self._segments[-1] if self._segments else None
        if self._writer is None or last is None or last.size >= self.segment_bytes:
            if self._writer is not None:
                self._fsync()
                os.close(self._writer)
                self._writer = None
            number = max(int(last.path.stem) + 1 if last is not None else 1, self._next_number)
            last = _Segment(self.directory / f"{number:016d}.seg", 0, 0)
            self._writer = os.open(last.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._segments.append(last)
            self._new_name = True  # its name is durable once the directory is synced too
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self._writer, view) :]
        except OSError:
            self._cut_back(last)
            raise
        last.size += len(chunk)
        last.records += count
        self._dirty = True
        if self.fsync_every_s is not None and (
            time.monotonic() - self._last_fsync >= self.fsync_every_s
        ):
            self._fsync()

    def _cut_back(self, last: _Segment) -> None:
        """After a failed write: the segment ends at its last whole record again (an empty new
        one goes), so later records never follow torn bytes."""
        assert self._writer is not None
        try:
            os.ftruncate(self._writer, last.size)
            kept = bool(last.records)
        except OSError:  # the torn bytes stay past its end (a reopen cuts them): a new one next
            kept = False
        if not kept:
            os.close(self._writer)
            self._writer = None
        if not last.records:
            self._segments.remove(last)
            last.path.unlink(missing_ok=True)

    def _fsync(self) -> None:
        if self._new_name:  # a new segment: without its directory entry, its synced data is
            self._new_name = False  # lost with it after a host crash
            try:
                fd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                logger.error(
                    "spill directory fsync failed (%s): a new segment may not survive a crash "
                    "of the host", exc,
                )  # fmt: skip
        if self._writer is not None and self._dirty:
            try:
                os.fsync(self._writer)
            except OSError as exc:  # (reported once by the kernel: asking again says nothing)
                logger.error(
                    "spill fsync failed (%s): frames appended since the last one may not "
                    "survive a crash of the host", exc,
                )  # fmt: skip
            self._dirty = False
        self._last_fsync = time.monotonic()

    def sync(self) -> None:
        """fsync what was appended (at a stop, whatever the policy)."""
        self._fsync()

    # -- draining -----------------------------------------------------------------------------
    def take(self, n: int, max_bytes: int | None = None) -> list[Record]:
        """Up to ``n`` of the oldest records not yet taken (from the first segment only), and
        frames of no more than ``max_bytes`` but for a first one larger than that. Follow with
        :meth:`consume` once they are in Redis, or :meth:`untake`."""
        out: list[Record] = []
        size = 0
        while self._segments:
            first = self._segments[0]
            while len(out) < n and len(self._taken) < first.records:
                offset = self._taken[-1] if self._taken else self._read_offset
                try:
                    record, end = self._read(first, offset)
                except OSError as exc:
                    if out or self._taken:
                        return out  # these first; the error again at the next take
                    self._unreadable(first, exc)
                    break
                if record is None:
                    break
                if max_bytes is not None and out and size + len(record.frame) > max_bytes:
                    break  # (read again from the window by the next take)
                size += len(record.frame)
                out.append(record)
                self._taken.append(end)
            if out or first.records > 0:
                return out
            self._forget_first()  # nothing readable left in it (a torn record, a lost file)
        return out

    def _unreadable(self, segment: _Segment, exc: OSError) -> None:
        """A segment that cannot be read (deleted, a disk error): its records are lost, counted
        as the full spill's are, and the drain goes on with the next one instead of retrying
        it for ever while everything newer waits behind it."""
        logger.error(
            "spill %s cannot be read (%s): its %d frames are lost; draining the next segment",
            segment.path.name, exc, segment.records,
        )  # fmt: skip
        self.dropped += segment.records
        segment.records = 0

    def _read(self, segment: _Segment, offset: int) -> tuple[Record | None, int]:
        """The record at ``offset`` or, past damage and records that do not decode, the next
        one; (None, offset) when none is left."""
        while True:
            while offset in segment.skips:
                offset = segment.skips[offset]
            if len(self._taken) >= segment.records:
                return None, offset
            record, end = self._read_at(segment, offset)
            if record is not None or end == offset:
                return record, end
            offset = end  # (one that does not decode: skipped, counted)

    def _read_at(self, segment: _Segment, offset: int) -> tuple[Record | None, int]:
        rel = offset - self._window_start
        end = _record_end(self._window, rel) if 0 <= rel <= len(self._window) else None
        if end is None:  # not in the window: read the next WINDOW bytes, or this record whole
            with open(segment.path, "rb") as fh:
                fh.seek(offset)
                head = fh.read(HEADER.size)
                length = HEADER.unpack(head)[0] if len(head) == HEADER.size else 0
                more = min(segment.size - offset, max(WINDOW, HEADER.size + length))
                self._window = head + fh.read(max(0, more - len(head)))
            self._window_start, rel = offset, 0
            end = _record_end(self._window, 0)
        if end is None:  # torn after the scan (cannot happen to what we wrote; be safe)
            self._torn(segment.path, offset, segment.size)
            segment.records = len(self._taken)
            segment.size = offset
            return None, offset
        try:
            record = _decode(self._window[rel + HEADER.size : end])
        except msgspec.DecodeError as exc:  # another version's format, or a bug: this one only
            self._undecodable(segment, offset, self._window_start + end, exc)
            return None, self._window_start + end
        return record, self._window_start + end

    def _undecodable(self, segment: _Segment, offset: int, end: int, exc: Exception) -> None:
        """Skip a whole record that does not decode, for good (an ``untake`` reads past it
        without counting it again)."""
        segment.skips[offset] = end
        segment.records -= 1
        self.dropped += 1
        logger.error(
            "spill %s: the record at byte %d does not decode (%s): its frame is lost; the "
            "records after it are read", segment.path.name, offset, exc,
        )  # fmt: skip

    def consume(self, n: int) -> None:
        """The first ``n`` records taken are in Redis: forget them (a drained segment goes)."""
        if n <= 0:
            return
        first = self._segments[0]
        self._read_offset = self._taken[n - 1]
        del self._taken[:n]
        first.records -= n
        if first.records <= 0 and not self._taken:
            self._forget_first()

    def _forget_first(self) -> None:
        first = self._segments.pop(0)
        if not self._segments and self._writer is not None:
            os.close(self._writer)  # it was the segment being written
            self._writer = None
        with contextlib.suppress(OSError):  # (an unreadable one may not unlink either)
            first.path.unlink(missing_ok=True)
        self._read_offset, self._window, self._window_start = 0, b"", 0

    def untake(self) -> None:
        """The records taken could not be sent: they are taken again next time."""
        self._taken = []


def _record_end(data: bytes, offset: int) -> int | None:
    """Where the record at ``offset`` of ``data`` ends; None if it is torn or incomplete."""
    if len(data) - offset < HEADER.size:
        return None
    length, crc = HEADER.unpack_from(data, offset)
    start = offset + HEADER.size
    end: int = start + length
    # (a payload is never empty: zeros, as a host crash may leave, are no record)
    if not length or end > len(data) or zlib.crc32(data[start:end]) != crc:
        return None
    return end
