"""Property tests of the whole per-frame path (envelope -> venue parser -> validation): for any
bytes in a stream entry, the outcome is rows within the documented bounds or a dead letter with
a reason, never an exception."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from common.envelope import Envelope, encode_entry
from common.records import Quote, Trade
from common.venues import all_venues
from consumer.process import Outcome, Processor
from consumer.validate import EARLIEST_NS, MAX_DIGITS, MAX_ID_BYTES, MAX_SCALE
from tests.fuzzing import fuzz

FIXTURES = Path(__file__).parents[1] / "fixtures"
NOW = 1_800_000_000_123_456_789  # 2027: every recorded fixture is in its past
SKEW = 10 * 10**9
FUZZ = fuzz(150)


class Everything(frozenset[str]):
    """Every symbol counts as subscribed, so that the bounds, not the symbol, decide."""

    def __contains__(self, item: object) -> bool:
        return True


P = Processor(
    subscribed={name: Everything() for name in all_venues()},
    symbol_maps={},
    max_future_skew_ns=SKEW,
)

FRAMES: list[tuple[str, str, bytes]] = sorted(
    (path.parent.name, path.name, path.read_bytes().rstrip(b"\n"))
    for path in FIXTURES.glob("*/*.json")
)


def _decimal_ok(text: str, *, zero_ok: bool) -> bool:
    value = Decimal(text)  # the validator let it through: it must be a number PostgreSQL takes
    if not value.is_finite() or value < 0 or (value == 0 and not zero_ok):
        return False
    if value == 0:
        return True
    digits = value.normalize().as_tuple()
    assert isinstance(digits.exponent, int)
    return (
        value < Decimal(10) ** 20
        and len(digits.digits) <= MAX_DIGITS
        and -digits.exponent <= MAX_SCALE
    )


def _id_ok(text: str) -> bool:
    raw = text.encode()  # raises on a lone surrogate: that would fail the test
    return 0 < len(raw) <= MAX_ID_BYTES and not any(ord(c) < 32 or ord(c) == 127 for c in text)


def check_rows(out: Outcome) -> None:
    for frame_out in out.frames or [out]:
        assert frame_out.frames is None
        if frame_out.dead is not None:
            assert 0 < len(frame_out.dead) <= 500 and "\n" not in frame_out.dead
        for t in frame_out.trades:
            check_trade(t)
        for q in frame_out.quotes:
            check_quote(q)


def check_trade(t: Trade) -> None:
    assert _decimal_ok(t.price, zero_ok=False), t
    assert _decimal_ok(t.amount, zero_ok=False), t
    assert _id_ok(t.trade_id), t
    assert t.side in ("buy", "sell", None)
    assert EARLIEST_NS <= t.ts_ns <= t.recv_ns + SKEW


def check_quote(q: Quote) -> None:
    assert _decimal_ok(q.bid_price, zero_ok=False) and _decimal_ok(q.ask_price, zero_ok=False)
    assert _decimal_ok(q.bid_amount, zero_ok=True) and _decimal_ok(q.ask_amount, zero_ok=True)
    assert _id_ok(q.update_id), q
    assert EARLIEST_NS <= q.ts_ns <= q.recv_ns + SKEW


def fields_for(exchange: str, frame: bytes, binary: bool = False) -> dict[bytes, bytes]:
    return Envelope(frame, binary, exchange, "", "c1", 1, NOW).fields()


# -- values built to hurt -------------------------------------------------------------------

EXTREMES: list[Any] = [
    10**1000, -(10**1000), -1, 0, 2**63, 2**64 + 1, 1e308, -0.0, 5e-324, 0.1,
    "9" * 1000, "1e999", "1e-999", "NaN", "Infinity", "-1", "0", "", " 1", "1,5", "0x10",
    "\u0000", "12\u00003", "\ud800", "\u0661", "x" * 10_000, "é" * 200, "2099-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z", "0000-00-00T00:00:00Z", None, True, [], {}, [[[[]]]],
    {"a": {"b": {"c": None}}},
]  # fmt: skip
RAW_TOKENS = [b"NaN", b"Infinity", b"-Infinity", b"1e999999", b"-0", b"01", b"1." + b"0" * 5000]


def leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in leaf_paths(v, (*path, k))] + [path]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in leaf_paths(v, (*path, i))] + [path]
    return [path]


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    copy = list(value)
    copy[head] = replaced(copy[head], rest, new)
    return copy


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode()  # lone surrogates escaped, as a venue


@FUZZ
@given(data=st.data())
def test_fixtures_with_one_field_made_extreme(data: st.DataObject) -> None:
    exchange, _, raw = data.draw(st.sampled_from(FRAMES))
    doc = json.loads(raw)
    path = data.draw(st.sampled_from(leaf_paths(doc)))
    new = data.draw(st.sampled_from(EXTREMES))
    frame = _json(replaced(doc, path, new))
    if data.draw(st.booleans()):  # or a raw token JSON does not allow, in place of the value
        token = data.draw(st.sampled_from(RAW_TOKENS))
        frame = frame.replace(b"null", token, 1) if b"null" in frame else frame
    check_rows(P.process("1700000000123-0", fields_for(exchange, frame)))


@FUZZ
@given(data=st.data())
def test_fixtures_cut_spliced_and_corrupted(data: st.DataObject) -> None:
    exchange, _, raw = data.draw(st.sampled_from(FRAMES))
    at = data.draw(st.integers(0, len(raw)))
    junk = data.draw(st.sampled_from([b"\xff\xfe", b"\xc3", b"\x00", b"\xed\xa0\x80", b""]))
    frame = raw[:at] + junk + (raw[at:] if data.draw(st.booleans()) else b"")
    binary = data.draw(st.booleans())
    check_rows(P.process("1700000000123-0", fields_for(exchange, frame, binary)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@FUZZ
@given(exchange=st.sampled_from(sorted(all_venues())), value=json_values)
def test_any_json_document(exchange: str, value: Any) -> None:
    frame = json.dumps(value).encode()  # floats' NaN/Infinity come out as bare tokens
    check_rows(P.process("1-0", fields_for(exchange, frame)))


@FUZZ
@given(exchange=st.sampled_from(sorted(all_venues())), frame=st.binary(max_size=300))
def test_any_bytes(exchange: str, frame: bytes) -> None:
    check_rows(P.process("1-0", fields_for(exchange, frame)))


def test_deep_nesting_and_a_huge_frame() -> None:
    for exchange in all_venues():
        for frame in (b"[" * 100_000, b'{"a":' * 50_000, b'{"e":"trade","p":"' + b"1" * 2**21):
            out = P.process("1-0", fields_for(exchange, frame))
            assert out.dead is not None and len(out.dead) <= 500


@FUZZ
@given(
    fields=st.dictionaries(
        st.sampled_from([b"f", b"k", b"e", b"x", b"c", b"n", b"t", b"l", b"zz"]) | st.binary(),
        st.binary(max_size=40)
        | st.sampled_from([b"binance", b"t", b"b", b"1", b"-1", b"9" * 5000]),
        max_size=9,
    )
)
def test_any_entry_fields(fields: dict[bytes, bytes]) -> None:
    check_rows(P.process("1-0", fields))
    flat = [x for pair in fields.items() for x in pair]
    check_rows(P.process("1-0", flat))


@FUZZ
@given(data=st.data())
def test_runs_with_lying_lengths_and_times(data: st.DataObject) -> None:
    exchange, _, raw = data.draw(st.sampled_from(FRAMES))
    n = data.draw(st.integers(2, 5))
    fields = encode_entry([Envelope(raw, False, exchange, "", "c1", i, NOW) for i in range(n)])
    if data.draw(st.booleans()):
        fields[b"l"] = data.draw(st.sampled_from([b"", b"1,2", b"-5,99", b"x", b"99999999999"]))
    if data.draw(st.booleans()):
        fields[b"t"] = data.draw(st.sampled_from([b"", b"1", b"9" * 400, b"a,b", b"-1,-1"]))
    check_rows(P.process("1-0", fields))
