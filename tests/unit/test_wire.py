"""The producer's hand-packed XADD is valid RESP with the envelope's fields in order."""

from __future__ import annotations

import hiredis
import pytest

from producer.wire import RedisWire, XaddPacker, command


def _parse(payload: bytes) -> object:
    reader = hiredis.Reader()
    reader.feed(payload)
    return reader.gets()


@pytest.mark.parametrize("binary", [False, True])
def test_packed_xadd_parses_back_to_the_command(binary: bool) -> None:
    packer = XaddPacker("tickvault:raw:{upbit}", 5_000_000, "upbit", "ctx", "upbit/0#3@17")
    frame = b'\x00\r\n{"a":1}\xff' if binary else b'{"e":"trade"}'
    assert _parse(packer.pack(frame, binary, 42, 1_700_000_000_000_000_001)) == [
        b"XADD", b"tickvault:raw:{upbit}", b"MAXLEN", b"~", b"5000000", b"*",
        b"f", frame, b"k", b"b" if binary else b"t", b"e", b"upbit", b"x", b"ctx",
        b"c", b"upbit/0#3@17", b"n", b"42", b"t", b"1700000000000000001",
    ]  # fmt: skip


def test_command_and_url_parsing() -> None:
    assert _parse(command(b"SELECT", b"3")) == [b"SELECT", b"3"]
    wire = RedisWire("redis://user:p%40ss@example:6380/3")
    assert (wire.host, wire.port, wire.db, wire.username, wire.password) == (
        "example", 6380, 3, "user", "p@ss",
    )  # fmt: skip
    with pytest.raises(ValueError, match="scheme"):
        RedisWire("http://x")
