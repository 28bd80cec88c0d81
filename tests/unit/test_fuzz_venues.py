"""A frame can never stop the pipeline: every venue parser, fed anything, returns rows of the
declared types or raises PoisonFrame naming the venue, never another exception.

Inputs, for every venue in ``all_venues()`` and every connection context its plans use:
- arbitrary bytes; arbitrary JSON, and JSON-like text with the tokens JSON forbids (NaN,
  Infinity), lone surrogates (escaped ``\\ud800``, or raw, which is invalid UTF-8), NUL, numbers
  of thousands of digits, 1e308, -0, 1e-320, strings of 10 KB;
- nesting 100,000 deep, alone and inside every top- and second-level field of the fixtures;
- every recorded fixture (``tests/fixtures/<venue>/``) with each node in turn replaced by each
  extreme value or removed, with invalid UTF-8 spliced in, and cut short at every byte.

The sweeps over fixed values are plain loops (exhaustive, and cheaper than random draws); the
random ones are hypothesis properties, derandomized and without an example database, so every run
tries the same examples and none is saved. (Hypothesis still caches its Unicode tables and the
constants it reads from source files under ``.hypothesis/`` unless ``HYPOTHESIS_STORAGE_DIRECTORY``
points elsewhere; those caches never change which examples run.)
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Iterator
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import PoisonFrame
from common.records import Quote, Trade
from common.symbols import Kind, Symbol, parse_symbol
from common.venues import Channel, FrameContext, Parsed, Venue, all_venues
from tests.fuzzing import fuzz
from tests.venue_helpers import FIXTURES, RECV_NS, parse

VENUES = sorted(all_venues())

# Examples per venue and property: the whole file stays within ~10 s on two cores (it runs in
# `make test`); the exhaustive sweeps below carry most of the fixed-value coverage.
FUZZ = fuzz(60)

# -- the property -------------------------------------------------------------------------------


def check(exchange: str, frame: bytes, context: str, symbols: dict[str, str]) -> None:
    """Rows of the declared types, or PoisonFrame with a reason naming the venue. Any other
    exception propagates and fails the test."""
    try:
        parsed = parse(exchange, frame, context=context, symbols=symbols)
    except PoisonFrame as exc:
        assert type(exc.reason) is str and exc.reason.startswith(f"{exchange}: "), exc.reason
        return
    assert type(parsed) is Parsed
    assert parsed.control is None or type(parsed.control) is str
    for t in parsed.trades:
        assert type(t) is Trade, t
        for text in (t.exchange, t.symbol, t.trade_id, t.price, t.amount):
            assert type(text) is str, t
            text.encode()  # no lone surrogate: rows are written as UTF-8
        assert t.exchange == exchange, t
        assert t.side in ("buy", "sell", None), t
        assert type(t.ts_ns) is int and type(t.recv_ns) is int, t
        assert t.recv_ns == RECV_NS, t
    for q in parsed.quotes:
        assert type(q) is Quote, q
        for text in (
            q.exchange, q.symbol, q.update_id, q.bid_price, q.bid_amount, q.ask_price, q.ask_amount
        ):  # fmt: skip
            assert type(text) is str, q
            text.encode()
        assert q.exchange == exchange, q
        assert type(q.ts_ns) is int and type(q.recv_ns) is int, q
        assert q.recv_ns == RECV_NS, q


def check_all(exchange: str, frames: Iterable[bytes], *, every_context: bool = False) -> None:
    """``check`` each frame in every context of the venue, or in its contexts taken in turn;
    name the frame on failure."""
    cases = (
        ((f, c) for f in frames for c in contexts(exchange))
        if every_context
        else zip(frames, itertools.cycle(contexts(exchange)))
    )
    for frame, (context, symbols) in cases:
        try:
            check(exchange, frame, context, symbols)
        except Exception as exc:
            shown = frame if len(frame) <= 300 else frame[:300] + b"..."
            raise AssertionError(
                f"{exchange}, context {context!r}: {type(exc).__name__}: {exc} for {shown!r}"
            ) from exc


# -- the contexts the venues' plans produce, with and without the subscribed-symbol map ---------

SAMPLES = {
    Kind.SPOT: ("BTC-USDT", "BTC-KRW", "BTC-USD"),
    Kind.PERP: ("BTC-USDT-PERP",),
    Kind.FUTURE: ("BTC-USDT-250627",),
}


def _servable(venue: Venue, symbol: Symbol) -> bool:
    try:
        venue.check_symbol(symbol)
        venue.venue_symbol(symbol)
    except ValueError:
        return False
    return True


@cache
def contexts(exchange: str) -> tuple[tuple[str, dict[str, str]], ...]:
    """``(context, symbol map)`` for every context of every option combination's plans."""
    venue = all_venues()[exchange]
    symbols = [parse_symbol(s) for kind in sorted(venue.kinds) for s in SAMPLES[kind]]
    symbols = [s for s in symbols if _servable(venue, s)]
    found: dict[str, dict[str, str]] = {"": {}}
    names = list(venue.options)
    for values in itertools.product(*(venue.options[n] for n in names)):
        options = dict(zip(names, values, strict=True))
        for channels in ([Channel.TRADES, Channel.QUOTES], [Channel.TRADES]):
            try:
                plans = venue.plan(channels=channels, symbols=symbols, url=None, options=options)
            except ValueError:
                continue  # e.g. quotes on bithumb's legacy stream
            for plan in plans:
                mapping = found.setdefault(plan.context, {})
                for s in symbols:
                    if str(s) in plan.symbols:
                        mapping[venue.venue_symbol(s)] = str(s)
    out = []
    for context, mapping in sorted(found.items()):
        out.append((context, {}))
        if mapping:
            out.append((context, mapping))
    return tuple(out)


def test_contexts_cover_the_plans_options() -> None:
    assert {c for c, _ in contexts("binance")} == {"", "microsecond"}
    assert {c for c, _ in contexts("bybit")} == {"", "spot", "linear"}
    assert {c for c, _ in contexts("bithumb")} == {"", "legacy"}


# -- JSON text we control: Raw is written verbatim (NaN, 1e999, 5000 digits, deep nesting) -----


class Raw(str):
    """JSON text written as is."""


def dump(value: Any, ascii_only: bool = True) -> str:
    if isinstance(value, Raw):
        return str(value)
    if value is None or isinstance(value, bool | float):
        return json.dumps(value)  # floats: NaN, Infinity and -Infinity, which JSON forbids
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=ascii_only)  # lone surrogates escaped if ascii
    if isinstance(value, list):
        return "[" + ",".join(dump(v, ascii_only) for v in value) + "]"
    assert isinstance(value, dict)
    items = (f"{dump(k, ascii_only)}:{dump(v, ascii_only)}" for k, v in value.items())
    return "{" + ",".join(items) + "}"


def encode(text: str) -> bytes:
    """UTF-8, except that a lone surrogate is kept as its (invalid) three bytes."""
    return text.encode("utf-8", "surrogatepass")


def deep(n: int, open_: str = "[", close: str = "]") -> Raw:
    return Raw(open_ * n + close * n)


def test_the_writer_writes_what_json_forbids() -> None:
    assert dump([math.nan, -math.inf, "\ud800", Raw("1e999")]) == '[NaN,-Infinity,"\\ud800",1e999]'
    assert encode(dump("\ud800", ascii_only=False)) == b'"\xed\xa0\x80"'


DEEP = 100_000
HUGE = "9" * 1200
EXTREMES: tuple[Any, ...] = (
    # numbers
    Raw(HUGE),
    Raw("-" + HUGE),
    Raw("9" * 5000),  # more digits than Python's int() converts
    -1,
    0,
    1,
    2**63,
    2**64,
    -(2**63) - 1,
    1.5,
    -0.0,
    Raw("-0"),
    1e308,
    Raw("1e-320"),
    5e-324,
    Raw("1e999"),
    Raw("-1e999"),
    Raw("NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
    # times in other units than documented: s, µs, ns, and ms in year 9999
    1_700_000_000,
    1_700_000_000_000_000,
    1_700_000_000_000_000_000,
    253_402_300_799_999,
    # strings
    "",
    "a\x00b",
    "\x00",
    "x" * 10_240,
    HUGE,
    "1e999",
    "-1e999",
    "NaN",
    "Infinity",
    "-1",
    "0",
    "1.5",
    "1_000",
    "\u00b2",  # superscript two: str.isdigit() says yes, int() says no
    "\u0661\u0662\u0663",  # Arabic-Indic digits: int() reads them
    " 1",
    "\ud800",
    "\udfff",
    "2024-02-30T25:61:61Z",
    "0001-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59.999999999-23:59",
    "0000-01-01 00:00:00",
    "0001-01-01 00:00:00",
    "9999-12-31 23:59:59.999999999",
    "BTC",
    "buy",
    "trade",
    # other shapes
    None,
    True,
    False,
    [],
    [1, 2],
    ["1", "2"],
    [[]],
    [["1"]],
    {},
    {"a": {"b": {"c": [1, {"d": None}]}}},
    # Deeper than the recursion limit; the 100,000-deep cases are test_deep_nesting's.
    deep(2_000),
    deep(2_000, '{"a":', "}"),
)

INVALID_UTF8 = (
    b"\xff",
    b"\x80",
    b"\xc0\x80",  # overlong NUL
    b"\xc3",  # a sequence cut short
    b"\xe2\x82",
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xfe\xfe\xff\xff",
)


# -- the fixtures as JSON trees -----------------------------------------------------------------


@cache
def fixture_frames(exchange: str) -> tuple[bytes, ...]:
    """Every frame file of the venue's fixture folder (README files and REST answers
    ``rest_*`` excluded: those are fuzzed by their own tests, ``test_rest_<venue>``)."""
    files = sorted((FIXTURES / exchange).iterdir())
    return tuple(
        p.read_bytes().rstrip(b"\n")
        for p in files
        if p.suffix != ".md" and not p.name.startswith("rest_")
    )


@cache
def fixture_trees(exchange: str) -> tuple[Any, ...]:
    """The JSON fixtures as trees, numbers kept as their exact text."""
    trees = []
    for frame in fixture_frames(exchange):
        try:
            trees.append(json.loads(frame, parse_float=Raw, parse_int=Raw, parse_constant=Raw))
        except ValueError:
            continue  # okx's "pong"
    return tuple(trees)


Path = tuple[str | int, ...]


def paths(tree: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every node's path, the root first; of a list, the first two items and the last (the
    parsers treat the ones between like the second: an orderbook's 15 levels need not be 15
    times the work)."""
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for i in sorted({0, 1, len(tree) - 1} & set(range(len(tree)))):
            yield from paths(tree[i], (*prefix, i))


@cache
def fixture_paths(exchange: str) -> tuple[tuple[Any, tuple[Path, ...]], ...]:
    return tuple((tree, tuple(paths(tree))) for tree in fixture_trees(exchange))


_DELETE = object()
_HOLE = Raw("\x00HOLE\x00")  # cannot occur in dumped JSON: a raw NUL is always escaped


def replaced(tree: Any, path: Path, value: Any) -> Any:
    """A copy of ``tree`` with the node at ``path`` replaced by ``value`` (removed: _DELETE)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, dict):
        out = dict(tree)
        if not rest and value is _DELETE:
            del out[head]
        else:
            out[head] = replaced(tree[head], rest, value)
        return out
    assert isinstance(head, int)
    items = list(tree)
    if not rest and value is _DELETE:
        del items[head]
    else:
        items[head] = replaced(tree[head], rest, value)
    return items


def _vocabulary() -> tuple[list[str], list[str]]:
    """Keys and string values of every venue's fixtures: random JSON that speaks the venues'
    language gets further into the parsers than random keys do."""
    keys: set[str] = set()
    strings: set[str] = set()
    for exchange in VENUES:
        stack = list(fixture_trees(exchange))
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                keys.update(node)
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
            elif isinstance(node, str) and not isinstance(node, Raw):
                strings.add(node)
    return sorted(keys), sorted(strings)


KEYS, STRINGS = _vocabulary()


# -- strategies ---------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),  # NaN, +-Infinity, -0.0, subnormals
    st.sampled_from([1e308, -1e308, 5e-324, -0.0, 1e-320]),
    st.sampled_from(
        [Raw(t) for t in ("NaN", "-NaN", "Infinity", "-Infinity", "1e999", "-0", "1e-320", "01")]
        + [Raw("9" * 1000), Raw("-" + "9" * 4400), Raw("0." + "0" * 400 + "1")]
    ),
    st.text(max_size=20),
    st.text(st.characters(codec=None, categories=["Cs", "Cc", "Co"]), max_size=4),
    st.sampled_from(["\x00", "\ud800", "x" * 10_240, "1e999", "NaN", "-1", ""]),
    st.sampled_from(STRINGS),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=4)), children, max_size=6
        ),
    ),
    max_leaves=20,
)


replacements = st.one_of(json_values, st.sampled_from(EXTREMES), st.just(_DELETE))
invalid_utf8 = st.one_of(st.sampled_from(INVALID_UTF8), st.binary(min_size=1, max_size=4))


@st.composite
def mutated_fixtures(draw: st.DrawFn, exchange: str) -> bytes:
    """A fixture with one or two nodes replaced by a random or extreme value, or removed."""
    tree, tree_paths = draw(st.sampled_from(fixture_paths(exchange)))
    for n in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(tree_paths if n == 0 else tuple(paths(tree))))
        value = draw(replacements)
        if path or value is not _DELETE:
            tree = replaced(tree, path, value)
    return encode(dump(tree, ascii_only=draw(st.booleans())))


@st.composite
def spliced_fixtures(draw: st.DrawFn, exchange: str) -> bytes:
    """A fixture with invalid UTF-8 inserted or written over, mostly at the start of a string."""
    frame = draw(st.sampled_from(fixture_frames(exchange)))
    quotes = [i + 1 for i, c in enumerate(frame) if c == ord('"')] or [0]
    at = draw(st.one_of(st.sampled_from(quotes), st.integers(0, len(frame))))
    bad = draw(invalid_utf8)
    resume = at + (len(bad) if draw(st.booleans()) else 0)  # overwrite or insert
    return frame[:at] + bad + frame[resume:]


def in_context(exchange: str) -> st.SearchStrategy[tuple[str, dict[str, str]]]:
    return st.sampled_from(contexts(exchange))


# -- properties (hypothesis) --------------------------------------------------------------------


@pytest.mark.parametrize("exchange", VENUES)
@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_arbitrary_bytes(exchange: str, data: st.DataObject) -> None:
    frame = data.draw(st.binary(max_size=300))
    check(exchange, frame, *data.draw(in_context(exchange)))


@pytest.mark.parametrize("exchange", VENUES)
@settings(FUZZ, max_examples=50)
@given(data=st.data())
def test_arbitrary_json(exchange: str, data: st.DataObject) -> None:
    frame = encode(dump(data.draw(json_values), ascii_only=data.draw(st.booleans())))
    check(exchange, frame, *data.draw(in_context(exchange)))


@pytest.mark.parametrize("exchange", VENUES)
@FUZZ
@given(data=st.data())
def test_fixture_with_random_fields(exchange: str, data: st.DataObject) -> None:
    frame = data.draw(mutated_fixtures(exchange))
    check(exchange, frame, *data.draw(in_context(exchange)))


@pytest.mark.parametrize("exchange", VENUES)
@FUZZ
@given(data=st.data())
def test_fixture_with_invalid_utf8(exchange: str, data: st.DataObject) -> None:
    frame = data.draw(spliced_fixtures(exchange))
    check(exchange, frame, *data.draw(in_context(exchange)))


# -- exhaustive sweeps --------------------------------------------------------------------------


@pytest.mark.parametrize("exchange", VENUES)
def test_every_field_of_every_fixture_at_every_extreme(exchange: str) -> None:
    values = [encode(dump(v)) for v in EXTREMES]

    def frames() -> Iterator[bytes]:
        for tree, tree_paths in fixture_paths(exchange):
            for path in tree_paths:
                if path:
                    yield encode(dump(replaced(tree, path, _DELETE)))
                # Dump once with a hole, then fill the hole with each value.
                before, after = encode(dump(replaced(tree, path, _HOLE))).split(encode(_HOLE))
                for value in values:
                    yield before + value + after

    check_all(exchange, frames())


@pytest.mark.parametrize("exchange", VENUES)
def test_every_truncation_of_every_fixture(exchange: str) -> None:
    check_all(exchange, (f[:n] for f in fixture_frames(exchange) for n in range(len(f))))


@pytest.mark.parametrize("exchange", VENUES)
def test_invalid_utf8_after_every_quote_of_every_fixture(exchange: str) -> None:
    def frames() -> Iterator[bytes]:
        for frame in fixture_frames(exchange):
            for at in (i + 1 for i, c in enumerate(frame) if c == ord('"')):
                for bad in INVALID_UTF8:
                    yield frame[:at] + bad + frame[at:]

    check_all(exchange, frames())


@pytest.mark.parametrize("exchange", VENUES)
def test_deep_nesting(exchange: str) -> None:
    nested = [
        b"[" * DEEP,
        deep(DEEP).encode(),
        b'{"a":' * DEEP,
        deep(DEEP, '{"a":', "}").encode(),
        b"[" * DEEP + b"]" * (DEEP - 1),  # one bracket short
    ]
    # Deep values in every top- and second-level field of the fixtures, in every context.
    for tree, tree_paths in fixture_paths(exchange):
        for path in tree_paths:
            if 0 < len(path) <= 2:
                nested.append(encode(dump(replaced(tree, path, deep(DEEP)))))
    check_all(exchange, nested, every_context=True)


# -- row keys come from the frame, never from the stream entry ----------------------------------

ENTRY_IDS = ("1700000000123-0", "1800000000000-7", "1800000000001-0/31")  # alone, requeued, a run


def _parsed_or_reason(
    exchange: str, frame: bytes, context: str, symbols: dict[str, str], entry_id: str
) -> Parsed | str:
    ctx = FrameContext(exchange, context, RECV_NS, entry_id, symbols)
    try:
        return all_venues()[exchange].parse(frame, ctx)
    except PoisonFrame as exc:
        return exc.reason


@pytest.mark.parametrize("exchange", VENUES)
def test_rows_do_not_depend_on_the_entry_id(exchange: str) -> None:
    """The same frame under another entry id (a requeued dead letter, a replay, a frame of a
    run) gives the same rows, so the same natural keys: the idempotent insert skips it."""
    for frame in fixture_frames(exchange):
        for context, symbols in contexts(exchange):
            a, b, c = (_parsed_or_reason(exchange, frame, context, symbols, e) for e in ENTRY_IDS)
            assert a == b == c, (exchange, context, frame[:200])
