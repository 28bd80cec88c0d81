"""Checks a normalised row must pass before it is stored (pure).

Everything PostgreSQL would refuse, or would store although it cannot be true, is stopped here,
with a reason, so that the database's own refusals are the rare case:

- prices positive, amounts positive (quotes: not negative), written as plain decimal text
  (``NaN``, ``Infinity``, signs and floats' ``inf`` never pass), within :data:`MAX_DIGITS`
  significant digits, below ``10**MAX_INTEGER_DIGITS`` and with at most :data:`MAX_SCALE`
  digits after the point (an exponent counts: ``1e-30`` has 30);
- the trade time is plausible: not before 2009 and at most ``max_future_skew_ns`` after the
  receive time (old trades are legitimate: replays, snapshots, backfills);
- ids (trade ids, quote update ids) are 1 to :data:`MAX_ID_BYTES` bytes of UTF-8 without NUL or
  other C0 control characters (PostgreSQL's text cannot hold NUL);
- the symbol is one the configuration subscribes for that exchange; the side is buy, sell or
  unknown;
- a coverage marker's text (exchange, connection context and id, producer, run, symbols,
  channels, reason) is printable (no NUL, control character or lone surrogate) and bounded
  (:func:`marker_problem`): a batch's markers are written in one transaction that is not split
  to find a bad row, so a marker PostgreSQL would refuse is stopped here, as a dead letter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from common.markers import LIST_MAX, NAME_MAX, REASON_MAX, Marker
from common.records import Quote, Trade

MAX_DIGITS = 40  # significant digits of a price or an amount
MAX_INTEGER_DIGITS = 20  # a value is below 10**20
MAX_SCALE = 24  # digits after the point (wei-sized amounts have 18)
MAX_ID_BYTES = 128
EARLIEST_NS = 1_230_768_000 * 1_000_000_000  # 2009-01-01T00:00:00Z

_DECIMAL = re.compile(r"([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]{1,6}))?\Z")  # ASCII digits only
# The hot path's one check per value: plain digits with at most MAX_INTEGER_DIGITS before the
# point, and a non-zero digit somewhere (positive); the length check keeps it within MAX_DIGITS
# and MAX_SCALE. Anything else (exponents, leading zeros, "1.") takes the general path.
_PLAIN_POSITIVE = re.compile(r"(?=[0-9.]*[1-9])[0-9]{1,20}(?:\.[0-9]+)?\Z")
_PLAIN_MAX_LEN = 25  # 20 digits, the point and 4 decimals, or fewer digits before it
# Ids: printable ASCII, the common case, in one match; others take the general path.
_PLAIN_ID = re.compile(r"[\x21-\x7e]{1,128}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def decimal_problem(text: str, *, zero_ok: bool = False) -> str | None:
    """None when ``text`` is a decimal within the bounds (positive, or >= 0 with ``zero_ok``);
    else what is wrong with it."""
    if len(text) > 2 * MAX_DIGITS + 10:
        return f"is {len(text)} characters long"
    m = _DECIMAL.match(text)
    if m is None or not (m.group(1) or m.group(2)):
        return "is not a decimal number"
    whole, fraction, exponent = m.group(1), m.group(2) or "", int(m.group(3) or 0)
    digits = (whole + fraction).lstrip("0")
    if not digits:
        return None if zero_ok else "is not positive"
    significant = digits.rstrip("0")
    if len(digits) > MAX_DIGITS and len(significant) > MAX_DIGITS:
        return f"has more than {MAX_DIGITS} significant digits"
    # magnitude: the position of the first significant digit, counted from the point
    integer_digits = len(whole.lstrip("0")) + exponent if whole.lstrip("0") else None
    if integer_digits is None:
        integer_digits = exponent - (len(fraction) - len(fraction.lstrip("0")))
    if integer_digits > MAX_INTEGER_DIGITS:
        return f"is not below 1e{MAX_INTEGER_DIGITS}"
    scale = len(fraction) - exponent
    # trailing zeros after the point say nothing: 1.50000 has scale 1
    scale -= len(fraction) - len(fraction.rstrip("0")) if fraction else 0
    if scale > MAX_SCALE:
        return f"has more than {MAX_SCALE} digits after the point"
    return None


def id_problem(value: str) -> str | None:
    """None when ``value`` can be stored as an id; else what is wrong with it."""
    if _PLAIN_ID.match(value) is not None:
        return None
    if not value:
        return "is empty"
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        return "is not valid UTF-8 (a lone surrogate)"
    if size > MAX_ID_BYTES:
        return f"is {size} bytes (at most {MAX_ID_BYTES})"
    if _CONTROL.search(value) is not None:
        return "holds a control character (NUL, tab, newline, ...)"
    return None


def text_problem(value: str, limit: int, *, empty_ok: bool = False) -> str | None:
    """None when ``value`` is text PostgreSQL stores as it is: at most ``limit`` characters,
    printable (``str.isprintable``: no NUL, control character or lone surrogate, each of which
    it refuses or would store unreadable); else what is wrong with it."""
    if not value:
        return None if empty_ok else "is empty"
    if len(value) > limit:
        return f"is {len(value)} characters (at most {limit})"
    if not value.isprintable():
        return "holds an unprintable character (NUL, a control character, a lone surrogate, ...)"
    return None


def marker_problem(m: Marker) -> str | None:
    """None when every text field of the marker ``m`` can be stored; else the first problem,
    naming the field. (``common.markers.decode_marker`` already bounds the body's names; this
    covers the entry's fields, the context above all, and checks all of them in one place.)"""
    b = m.body
    if len(b.symbols) > LIST_MAX or len(b.channels) > LIST_MAX:
        return f"more than {LIST_MAX} symbols or channels"
    named: list[tuple[str, str, int, bool]] = [
        ("exchange", m.exchange, NAME_MAX, False),
        ("context", m.context, NAME_MAX, True),  # "" for most venues
        ("connection", m.conn, NAME_MAX, False),
        ("producer", b.producer, NAME_MAX, False),
        ("run", b.run, NAME_MAX, False),
        ("reason", b.reason, REASON_MAX * 4, True),  # decode_marker cuts longer ones
    ]
    named += [("symbol", s, NAME_MAX, False) for s in b.symbols]
    named += [("channel", c, NAME_MAX, False) for c in b.channels]
    for field, value, limit, empty_ok in named:
        problem = text_problem(value, limit, empty_ok=empty_ok)
        if problem is not None:
            return f"{field} {_short(value)} {problem}"
    return None


def _short(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")


class Validator:
    def __init__(self, subscribed: Mapping[str, frozenset[str]], max_future_skew_ns: int) -> None:
        self.subscribed = subscribed
        self.skew = max_future_skew_ns

    def _time(self, ts_ns: int, recv_ns: int) -> str | None:
        if ts_ns < EARLIEST_NS:
            return f"time {_short(str(ts_ns))} ns is before 2009"
        if ts_ns > recv_ns + self.skew:
            late = (ts_ns - recv_ns) // 1_000_000  # integers: a giant time must not overflow
            return f"time is {_short(str(late))} ms after its receive time (beyond the skew)"
        return None

    def _symbol(self, exchange: str, symbol: str) -> str | None:
        if symbol not in self.subscribed.get(exchange, ()):
            return f"symbol {_short(symbol)} is not subscribed on {exchange}"
        return None

    def trade(self, t: Trade) -> str | None:
        """None when ``t`` is valid, else the reason."""
        plain = _PLAIN_POSITIVE.match
        price, amount = t.price, t.amount
        if (
            len(price) <= _PLAIN_MAX_LEN
            and plain(price) is not None
            and len(amount) <= _PLAIN_MAX_LEN
            and plain(amount) is not None
            and _PLAIN_ID.match(t.trade_id) is not None
            and (t.side == "buy" or t.side == "sell" or t.side is None)
            and EARLIEST_NS <= t.ts_ns <= t.recv_ns + self.skew
            and t.symbol in self.subscribed.get(t.exchange, ())
        ):
            return None  # the common case, in one expression
        tid = _short(t.trade_id)
        problem = id_problem(t.trade_id)
        if problem is not None:
            return f"trade id {tid} {problem}"
        for name, value in (("price", price), ("amount", amount)):
            problem = decimal_problem(value)
            if problem is not None:
                return f"trade {tid}: {name} {_short(value)} {problem}"
        if t.side not in ("buy", "sell", None):
            return f"trade {tid}: side {_short(str(t.side))}"
        problem = self._time(t.ts_ns, t.recv_ns) or self._symbol(t.exchange, t.symbol)
        return f"trade {tid}: {problem}" if problem else None

    def quote(self, q: Quote) -> str | None:
        """None when ``q`` is valid, else the reason."""
        uid = _short(q.update_id)
        problem = id_problem(q.update_id)
        if problem is not None:
            return f"quote id {uid} {problem}"
        for name in ("bid_price", "ask_price", "bid_amount", "ask_amount"):
            value: str = getattr(q, name)
            problem = decimal_problem(value, zero_ok=name.endswith("amount"))
            if problem is not None:
                return f"quote {uid}: {name} {_short(value)} {problem}"
        problem = self._time(q.ts_ns, q.recv_ns) or self._symbol(q.exchange, q.symbol)
        return f"quote {uid}: {problem}" if problem else None
