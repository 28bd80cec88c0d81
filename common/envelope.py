"""The stream entry: one raw frame, exactly as received, plus where and when it came from.

Fields (short names keep Redis memory per entry small)::

    f  the frame's bytes, unchanged (text frames UTF-8 encoded)
    k  b"t" for a text frame, b"b" for a binary frame
    e  exchange id
    x  connection context chosen by the venue's plan (e.g. Bybit "linear"); may be empty
    c  connection id (unique per connection, e.g. "binance-1-1732400000")
    n  frame number within the connection, from 1 (a gap inside one connection is our loss)
    t  receive time, integer nanoseconds since the epoch (wall clock)

Keys: ``tickvault:raw:{<exchange>}`` and ``tickvault:dead:{<exchange>}``. The hash tag keeps each
exchange's keys in one Redis Cluster slot.
"""

from __future__ import annotations

from typing import NewType

import msgspec

from .errors import PoisonFrame

StreamId = NewType("StreamId", str)

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


def decode_fields(fields: dict[bytes, bytes]) -> Envelope:
    """Rebuild an envelope from an XREADGROUP entry's field map.

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
    "Envelope",
    "StreamId",
    "dead_key",
    "decode_fields",
    "exchange_of_key",
    "raw_key",
]
