"""The stream entry: raw frames, exactly as received, plus where and when they came from.

An entry holds one frame, or, when frames arrive faster than Redis round trips, a *run*: frames
that came back to back on one connection (same kind, consecutive numbers). Redis' cost is mostly
per entry (an XADD, the XREADGROUP delivery it writes to the AOF, an XACK): measured here, a
frame alone costs it ~6.3 us, in runs of 10 ~1.0 us. A slow feed still gives one frame per entry.

Fields, in this order (short names keep Redis memory per entry small)::

    f  the frame's bytes, unchanged (text frames UTF-8 encoded); a run: its frames back to back
    k  b"t" for text frames, b"b" for binary frames
    e  exchange id
    x  connection context chosen by the venue's plan (e.g. Bybit "linear"); may be empty
    c  connection id (unique per connection, e.g. "binance-1-1732400000")
    n  frame number within the connection, from 1 (a gap inside one connection is our loss);
       a run: its first frame's number (the others follow one by one)
    t  receive time, integer nanoseconds since the epoch (wall clock); a run: one per frame,
       comma-separated
    l  only in a run: each frame's length in bytes, comma-separated

A frame inside a run is named ``<entry id>/<index>`` (index from 0) wherever one id is needed:
a dead letter's ``origin``, the base of derived row ids.

Keys: ``tickvault:raw:{<exchange>}`` and ``tickvault:dead:{<exchange>}``. The hash tag keeps each
exchange's keys in one Redis Cluster slot.
"""

from __future__ import annotations

from typing import NewType

import msgspec

from .errors import PoisonFrame

StreamId = NewType("StreamId", str)

RUN_MAX = 32  # frames in one entry at most: bounds what a consumer's read of N entries holds

RAW_PREFIX = "tickvault:raw:"
DEAD_PREFIX = "tickvault:dead:"


def raw_key(exchange: str) -> str:
    return f"{RAW_PREFIX}{{{exchange}}}"


def dead_key(exchange: str) -> str:
    return f"{DEAD_PREFIX}{{{exchange}}}"


def exchange_of_key(key: str) -> str:
    """``tickvault:raw:{binance}`` -> ``binance``."""
    start = key.find("{")
    end = key.rfind("}")
    if start < 0 or end < start:
        raise ValueError(f"not a tickvault stream key: {key!r}")
    return key[start + 1 : end]


class Envelope(msgspec.Struct, frozen=True, gc=False):
    frame: bytes
    binary: bool
    exchange: str
    context: str
    conn: str
    seq: int
    recv_ns: int

    def fields(self) -> dict[bytes, bytes]:
        """The XADD field map."""
        return {
            b"f": self.frame,
            b"k": b"b" if self.binary else b"t",
            b"e": self.exchange.encode(),
            b"x": self.context.encode(),
            b"c": self.conn.encode(),
            b"n": str(self.seq).encode(),
            b"t": str(self.recv_ns).encode(),
        }


def frame_id(entry_id: str, index: int) -> str:
    """The id of frame ``index`` of a run entry."""
    return f"{entry_id}/{index}"


def split_run(blob: bytes, lengths: bytes, times: bytes) -> list[tuple[bytes, int]]:
    """A run's (frame, receive ns) pairs from its ``f``, ``l`` and ``t`` fields.

    Raises:
        PoisonFrame: the lengths and times do not describe the frames.
    """
    try:
        sizes = [int(x) for x in lengths.split(b",")]
        stamps = [int(x) for x in times.split(b",")]
    except ValueError as exc:
        raise PoisonFrame(f"bad envelope: run lengths or times: {exc}") from None
    if len(sizes) != len(stamps) or sum(sizes) != len(blob) or min(sizes) < 0:
        raise PoisonFrame(
            f"bad envelope: run of {len(sizes)} lengths summing to {sum(sizes)} and "
            f"{len(stamps)} times for {len(blob)} bytes"
        )
    out = []
    at = 0
    for size, stamp in zip(sizes, stamps, strict=True):
        out.append((blob[at : at + size], stamp))
        at += size
    return out


def decode_entry(fields: dict[bytes, bytes]) -> list[Envelope]:
    """Every frame of a stream entry (one, or a run's), as envelopes.

    Raises:
        PoisonFrame: a field is missing or malformed (somebody else wrote to our stream).
    """
    if b"l" not in fields:
        return [decode_fields(fields)]
    first = decode_fields({**fields, b"t": b"0"})
    pairs = split_run(first.frame, fields[b"l"], fields.get(b"t", b""))
    return [
        msgspec.structs.replace(first, frame=frame, seq=first.seq + i, recv_ns=recv_ns)
        for i, (frame, recv_ns) in enumerate(pairs)
    ]


def encode_entry(envs: list[Envelope]) -> dict[bytes, bytes]:
    """The field map of an entry holding ``envs`` (one frame, or a run: same connection and
    kind, consecutive numbers), as the producer writes it (``producer.wire`` packs the same
    fields straight into RESP)."""
    fields = envs[0].fields()
    if len(envs) > 1:
        fields[b"f"] = b"".join(e.frame for e in envs)
        fields[b"t"] = b",".join(b"%d" % e.recv_ns for e in envs)
        fields[b"l"] = b",".join(b"%d" % len(e.frame) for e in envs)
    return fields


def frames_in_entry(fields: dict[bytes, bytes]) -> int:
    """How many frames an entry holds (without decoding them)."""
    lengths = fields.get(b"l")
    return 1 if lengths is None else lengths.count(b",") + 1


def run_frame_fields(fields: dict[bytes, bytes], index: int) -> dict[bytes, bytes]:
    """The single-frame field map of frame ``index`` of an entry (the entry itself if it holds
    one frame): what a dead letter of that frame carries."""
    if b"l" not in fields:
        return dict(fields)
    try:
        return decode_entry(fields)[index].fields()
    except (PoisonFrame, IndexError):
        return dict(fields)


def decode_fields(fields: dict[bytes, bytes]) -> Envelope:
    """Rebuild an envelope from a single-frame entry's field map (a run: see ``decode_entry``).

    Raises:
        PoisonFrame: a field is missing or malformed (somebody else wrote to our stream).
    """
    try:
        return Envelope(
            frame=fields[b"f"],
            binary=fields.get(b"k", b"t") == b"b",
            exchange=fields[b"e"].decode(),
            context=fields.get(b"x", b"").decode(),
            conn=fields.get(b"c", b"").decode(),
            seq=int(fields.get(b"n", b"0")),
            recv_ns=int(fields[b"t"]),
        )
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise PoisonFrame(f"bad envelope: {type(exc).__name__}: {exc}") from None


__all__ = [
    "DEAD_PREFIX",
    "RAW_PREFIX",
    "RUN_MAX",
    "Envelope",
    "StreamId",
    "dead_key",
    "decode_entry",
    "decode_fields",
    "encode_entry",
    "exchange_of_key",
    "frame_id",
    "frames_in_entry",
    "raw_key",
    "run_frame_fields",
    "split_run",
]
