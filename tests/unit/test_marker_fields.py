"""A coverage marker's text reaches PostgreSQL only when PostgreSQL takes it: every text field
(the entry's exchange, context and connection id, the body's producer, run, symbols, channels
and reason) is checked in ``consumer.process``, and a marker that fails is a dead letter with
its reason. Without that, one NUL in the context field made ``write_markers`` raise a
DataError that stopped the consumer, entry after entry, until the delivery budget ran out."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.adapt import PyFormat, Transformer

from common.markers import EVENTS, NAME_MAX, MarkerBody, encode_marker
from consumer.batching import Batch
from consumer.process import Outcome, Processor
from consumer.validate import marker_problem, text_problem
from tests.fuzzing import fuzz

NS = 1_764_504_000_000_000_000
PROC = Processor(subscribed={}, symbol_maps={}, max_future_skew_ns=10**10)
BODY = MarkerBody("subscribed", "p1", "1764504000000", ["BTC-USDT"], ["trades"])
PK_BYTES = 2_000  # a btree entry holds ~2,700 bytes (SQLSTATE 54000 past it): keys stay below


def fields(
    frame: bytes, *, exchange: bytes = b"binance", context: bytes = b"", conn: bytes = b"c1"
) -> list[bytes]:
    """A marker entry as XREADGROUP returns it: the producer's field order, a flat list."""
    return [b"f", frame, b"k", b"m", b"e", exchange, b"x", context, b"c", conn, b"n", b"1",
            b"t", str(NS).encode()]  # fmt: skip


def both_forms(flat: list[bytes]) -> list[Any]:
    """The flat list (the fast path) and the same fields as a map (the general path)."""
    return [flat, dict(zip(flat[::2], flat[1::2], strict=True))]


def dumps_as_text(value: str) -> bool:
    """Whether psycopg sends ``value`` as a text parameter (it refuses a NUL, DataError, and a
    lone surrogate, UnicodeEncodeError, before PostgreSQL sees them)."""
    try:
        Transformer().get_dumper(value, PyFormat.TEXT).dump(value)
    except Exception:
        return False
    return True


def assert_storable(out: Outcome) -> None:
    """An accepted marker holds only text PostgreSQL takes, within the index's size."""
    m = out.marker
    assert m is not None and out.dead is None and out.control == "marker"
    b = m.body
    for value in (m.exchange, m.context, m.conn, b.producer, b.run, b.reason, *b.symbols,
                  *b.channels):  # fmt: skip
        assert dumps_as_text(value), value
        assert value.isprintable(), value
    assert len(m.context) <= NAME_MAX and len(b.reason) <= 2_000
    assert len(f"{m.exchange}{m.conn}".encode()) <= PK_BYTES  # feed_sessions' primary key
    assert len(f"{m.exchange}{b.producer}{b.run}".encode()) <= PK_BYTES  # producer_runs'


def assert_dead_letter(out: Outcome) -> None:
    assert out.marker is None and out.dead is not None
    assert 0 < len(out.dead) <= 500 and out.dead.isprintable(), out.dead


# -- the reviewer's case, and its neighbours ----------------------------------------------------


@pytest.mark.parametrize(
    ("context", "why"),
    [
        (b"spot\x00x", r"bad marker: context 'spot\x00x' holds an unprintable character"),
        (b"\x00", r"bad marker: context '\x00' holds an unprintable character"),
        (b"linear\n", r"bad marker: context 'linear\n' holds an unprintable character"),
        (b"\x1b[31m", r"bad marker: context '\x1b[31m' holds an unprintable character"),
        (b"x" * 201, f"bad marker: context '{'x' * 40}...' is 201 characters (at most 200)"),
    ],
)
def test_a_marker_whose_context_postgresql_refuses_is_a_dead_letter(
    context: bytes, why: str
) -> None:
    for given_fields in both_forms(fields(encode_marker(BODY), context=context)):
        out = PROC.process("1-0", given_fields)
        assert_dead_letter(out)
        assert out.dead is not None and out.dead.startswith(why), out.dead
        assert out.recv_ns == NS
        batch = Batch()  # what the worker does with it: a dead letter, no marker to write
        batch.add("tickvault:raw:{binance}", "1-0", given_fields, out, 0.0)
        assert batch.markers == [] and [d.reason for d in batch.dead] == [out.dead]


@pytest.mark.parametrize("context", [b"", b"linear", b"microsecond", b"sp\xc3\xb6t", b"x" * 200])
def test_a_marker_with_a_good_context_is_kept(context: bytes) -> None:
    for given_fields in both_forms(fields(encode_marker(BODY), context=context)):
        out = PROC.process("1-0", given_fields)
        assert_storable(out)
        assert out.marker is not None and out.marker.context == context.decode()


@pytest.mark.parametrize(
    ("conn", "why"),
    [
        (b"c\x00", "bad marker"),
        (b"", "bad marker"),
        (b"\xff", "bad envelope"),
        (b"c" * 201, "bad marker"),
    ],
)
def test_a_marker_whose_connection_id_postgresql_refuses_is_a_dead_letter(
    conn: bytes, why: str
) -> None:
    for given_fields in both_forms(fields(encode_marker(BODY), conn=conn)):
        out = PROC.process("1-0", given_fields)
        assert_dead_letter(out)
        assert out.dead is not None and out.dead.startswith(why), out.dead


def test_marker_problem_names_each_field() -> None:
    out = PROC.process("1-0", fields(encode_marker(BODY)))
    assert out.marker is not None and marker_problem(out.marker) is None
    m = out.marker
    for change, field in [
        ({"exchange": "bin\x00ance"}, "exchange"),
        ({"context": "\x7f"}, "context"),
        ({"conn": ""}, "connection"),
        ({"body": MarkerBody("lost", "p\u2028", "r")}, "producer"),
        ({"body": MarkerBody("lost", "p", "r\ud800")}, "run"),
        ({"body": MarkerBody("lost", "p", "r", ["BTC-USDT", "\t"])}, "symbol"),
        ({"body": MarkerBody("lost", "p", "r", channels=["trades\x00"])}, "channel"),
        ({"body": MarkerBody("lost", "p", "r", reason="x" * 2_001)}, "reason"),
        ({"body": MarkerBody("lost", "p", "r", reason="closed\r\n")}, "reason"),
    ]:
        problem = marker_problem(msgspec.structs.replace(m, **change))
        assert problem is not None and problem.startswith(f"{field} "), (change, problem)


def test_text_problem() -> None:
    assert text_problem("linear", 200) is None
    assert text_problem("", 200, empty_ok=True) is None
    assert text_problem("", 200) == "is empty"
    assert text_problem("abc", 2) == "is 3 characters (at most 2)"
    for bad in ("\x00", "a\nb", "\ud800", "\x85", "\u2029"):
        assert text_problem(bad, 200) is not None, repr(bad)


# -- any text, from outside ---------------------------------------------------------------------

FUZZ = fuzz(300)
# Text as it may come: NUL and other controls, lone surrogates, line separators, long runs.
any_text = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(codec="utf-8"), max_size=12),
    st.sampled_from(["", "\x00", "a\x00b", "\ud800", "\n", "\u2028", "é" * 201, "x" * 200]),
)
any_bytes = st.one_of(
    any_text.map(lambda t: t.encode("utf-8", "surrogatepass")),  # a surrogate: invalid UTF-8
    st.binary(max_size=12),
    st.sampled_from([b"", b"linear", b"\xc3", b"\xed\xa0\x80", b"x" * 201]),
)
# A good marker's values: each example hurts some fields and keeps the others good, so that a
# bad value in any one field is tried alongside good ones (all bad is almost always refused
# by the first check, which would leave the others untried).
GOOD: dict[str, Any] = {
    "producer": "p1", "run": "1764504000000", "symbols": ["BTC-USDT"], "channels": ["trades"],
    "reason": "closed by the venue", "exchange": b"binance", "context": b"linear", "conn": b"c1",
}  # fmt: skip
ANY: dict[str, st.SearchStrategy[Any]] = {
    "producer": any_text,
    "run": any_text,
    "symbols": st.lists(any_text, max_size=3),
    "channels": st.lists(any_text, max_size=3),
    "reason": any_text | st.text(min_size=1_990, max_size=2_010),
    "exchange": st.sampled_from([b"binance", b"kraken"]) | any_bytes,
    "context": any_bytes,
    "conn": any_bytes,
}


@FUZZ
@given(
    event=st.sampled_from(sorted(EVENTS)),
    hurt=st.sets(st.sampled_from(sorted(ANY)), min_size=1, max_size=3) | st.just(set(ANY)),
    flat=st.booleans(),
    data=st.data(),
)
def test_a_marker_with_any_text_is_stored_as_text_or_dead_lettered(
    event: str, hurt: set[str], flat: bool, data: st.DataObject
) -> None:
    v = {k: data.draw(ANY[k], label=k) if k in hurt else good for k, good in GOOD.items()}
    body = {"event": event, **{k: v[k] for k in ("producer", "run", "symbols", "channels",
                                                 "reason")}}  # fmt: skip
    frame = json.dumps(body, ensure_ascii=True).encode()  # lone surrogates as \ud800 escapes
    entry = fields(frame, exchange=v["exchange"], context=v["context"], conn=v["conn"])
    out = PROC.process("1-0", entry if flat else both_forms(entry)[1])  # never raises
    if out.dead is not None:
        assert_dead_letter(out)
    else:
        assert_storable(out)
