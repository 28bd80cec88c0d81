"""The producer's hand-packed XADD is valid RESP with the envelope's fields in order."""

from __future__ import annotations

import hiredis
import pytest

from common.envelope import Envelope, decode_entry, encode_entry
from common.errors import ConfigError
from producer.wire import RedisWire, XaddPacker, command, pack_runs


def _parse(payload: bytes) -> object:
    reader = hiredis.Reader()
    reader.feed(payload)
    return reader.gets()


@pytest.mark.parametrize("binary", [False, True])
def test_packed_xadd_parses_back_to_the_command(binary: bool) -> None:
    packer = XaddPacker("tickvault:raw:{upbit}", "upbit", "ctx", "upbit/0#3@17")
    frame = b'\x00\r\n{"a":1}\xff' if binary else b'{"e":"trade"}'
    assert _parse(packer.pack(frame, binary, 42, 1_700_000_000_000_000_001)) == [
        b"XADD", b"tickvault:raw:{upbit}", b"*",
        b"f", frame, b"k", b"b" if binary else b"t", b"e", b"upbit", b"x", b"ctx",
        b"c", b"upbit/0#3@17", b"n", b"42", b"t", b"1700000000000000001",
    ]  # fmt: skip


def _entries(payload: bytes) -> list[dict[bytes, bytes]]:
    """Each XADD in ``payload`` as the field map Redis would store."""
    reader = hiredis.Reader()
    reader.feed(payload)
    out = []
    while (cmd := reader.gets()) is not False:
        assert isinstance(cmd, list) and cmd[:3] == [b"XADD", b"tickvault:raw:{okx}", b"*"]
        out.append(dict(zip(cmd[3::2], cmd[4::2], strict=True)))
    return out


def test_back_to_back_frames_of_one_connection_share_an_entry() -> None:
    a = XaddPacker("tickvault:raw:{okx}", "okx", "", "conn-a")
    b = XaddPacker("tickvault:raw:{okx}", "okx", "", "conn-b")
    pending = [
        (a, b"a1", False, 1, 101), (a, b"a2\r\n", False, 2, 102), (a, b"", False, 3, 103),
        (b, b"b1", False, 7, 201),  # another connection: a new entry
        (a, b"a4", False, 4, 104),
        (a, b"a5", True, 5, 105),  # binary after text: a new entry
        (a, b"a7", True, 7, 107),  # a number skipped (a dropped frame): a new entry
    ]  # fmt: skip
    payload, sizes = pack_runs(pending)
    entries = _entries(payload)
    assert len(entries) == 5
    assert sizes == [(a.key, 3), (b.key, 1), (a.key, 1), (a.key, 1), (a.key, 1)]
    assert list(entries[0]) == [b"f", b"k", b"e", b"x", b"c", b"n", b"t", b"l"]
    assert entries[0][b"f"] == b"a1a2\r\n" and entries[0][b"l"] == b"2,4,0"
    assert entries[0][b"t"] == b"101,102,103" and entries[0][b"n"] == b"1"
    assert list(entries[1]) == [b"f", b"k", b"e", b"x", b"c", b"n", b"t"]  # one frame: no l
    frames = [env for fields in entries for env in decode_entry(fields)]
    assert [(e.frame, e.binary, e.conn, e.seq, e.recv_ns) for e in frames] == [
        (f, bin_, "conn-a" if p is a else "conn-b", seq, ns) for p, f, bin_, seq, ns in pending
    ]
    # the hand-packed RESP and the envelope's own encoding agree, field order included
    for fields in entries:
        assert list(encode_entry(decode_entry(fields)).items()) == list(fields.items())
    assert frames[1] == Envelope(b"a2\r\n", False, "okx", "", "conn-a", 2, 102)


def test_runs_are_capped() -> None:
    a = XaddPacker("tickvault:raw:{okx}", "okx", "", "c")
    payload, sizes = pack_runs([(a, b"x", False, i, i) for i in range(1, 11)], run_max=4)
    assert [n for _, n in sizes] == [4, 4, 2]
    assert [len(decode_entry(fields)) for fields in _entries(payload)] == [4, 4, 2]


def test_command_and_url_parsing() -> None:
    assert _parse(command(b"SELECT", b"3")) == [b"SELECT", b"3"]
    o = RedisWire("redis://user:p%40ss@example:6380/3").options
    assert (o.host, o.port, o.db, o.username, o.password) == (
        "example", 6380, 3, "user", "p@ss",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="scheme"):  # more in test_redis_url
        RedisWire("http://x")
