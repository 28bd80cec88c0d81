"""Retention and streams that are gone: which Redis replies say so, and what is forgotten."""

from __future__ import annotations

from common.errors import FatalError, TransientError
from producer.retention import FrameWindow, stream_gone


def test_no_such_key_and_nogroup_say_gone_and_nothing_else_does() -> None:
    fix = "see the README"
    assert stream_gone(FatalError("redis", "ERR", "ERR no such key", fix))
    assert stream_gone(
        TransientError("redis refused 1 of 1 commands: NOGROUP No such key 'k' or consumer group")
    )
    assert not stream_gone(FatalError("redis", "ERR", "ERR unknown command 'XINFO'", fix))
    assert not stream_gone(FatalError("redis", "NOPERM", "NOPERM no such key", fix))
    assert not stream_gone(TransientError("redis connection lost: ConnectionResetError()"))
    assert not stream_gone(ValueError("no such key"))


def test_a_forgotten_stream_counts_from_zero_and_the_others_are_kept() -> None:
    w = FrameWindow(max_frames=10)
    for second in range(3):
        w.add("a", b"%d-0" % (second * 1000), 10)
        w.add("b", b"%d-0" % (second * 1000), 10)
    w.forget("a")
    assert w.trims() == [("b", 2000)]  # "a"'s move forgotten with it
    assert (w.frames("a"), w.target_ms("a"), w.frames("b")) == (0, 0, 10)
    w.add("a", b"5000-0", 3)
    assert w.frames("a") == 3 and w.trims() == []
