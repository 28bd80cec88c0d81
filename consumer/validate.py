"""Checks a normalised row must pass before it is stored (pure).

- prices positive and finite, amounts positive (quotes: not negative), written as plain decimal
  text (``NaN``, ``Infinity``, signs and floats' ``inf`` never pass);
- the trade time is plausible: not before 2009 and at most ``max_future_skew_ns`` after the
  receive time (old trades are legitimate: replays, snapshots, backfills);
- the symbol is one the configuration subscribes for that exchange.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from common.records import Quote, Trade

_DECIMAL = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_NONZERO = re.compile(r"[1-9]")
# Plain decimals with at least one non-zero digit: positive. The hot path's one check per value;
# anything else (exponents, "1.") takes the general path.
_PLAIN_POSITIVE = re.compile(r"(?=[0-9.]*[1-9])[0-9]+(?:\.[0-9]+)?\Z")
EARLIEST_NS = 1_230_768_000 * 1_000_000_000  # 2009-01-01T00:00:00Z


def _decimal(text: str) -> bool:
    return _DECIMAL.match(text) is not None


def _positive(text: str) -> bool:
    if _DECIMAL.match(text) is None:
        return False
    if text[0] in "123456789":
        return True  # a leading non-zero digit: positive (the common case, no more work)
    mantissa = text.split("e", 1)[0].split("E", 1)[0]
    return _NONZERO.search(mantissa) is not None


class Validator:
    def __init__(self, subscribed: Mapping[str, frozenset[str]], max_future_skew_ns: int) -> None:
        self.subscribed = subscribed
        self.skew = max_future_skew_ns

    def _time(self, ts_ns: int, recv_ns: int) -> str | None:
        if ts_ns < EARLIEST_NS:
            return f"time {ts_ns} ns is before 2009"
        if ts_ns > recv_ns + self.skew:
            return f"time {ts_ns} ns is {(ts_ns - recv_ns) / 1e9:.3f} s after its receive time"
        return None

    def _symbol(self, exchange: str, symbol: str) -> str | None:
        if symbol not in self.subscribed.get(exchange, ()):
            return f"symbol {symbol!r} is not subscribed on {exchange}"
        return None

    def trade(self, t: Trade) -> str | None:
        """None when ``t`` is valid, else the reason."""
        plain = _PLAIN_POSITIVE.match
        if (
            plain(t.price) is not None
            and plain(t.amount) is not None
            and (t.side == "buy" or t.side == "sell" or t.side is None)
            and EARLIEST_NS <= t.ts_ns <= t.recv_ns + self.skew
            and t.symbol in self.subscribed.get(t.exchange, ())
        ):
            return None  # the common case, in one expression
        if not _positive(t.price):
            return f"trade {t.trade_id}: price {t.price!r} is not a positive decimal"
        if not _positive(t.amount):
            return f"trade {t.trade_id}: amount {t.amount!r} is not a positive decimal"
        if t.side not in ("buy", "sell", None):
            return f"trade {t.trade_id}: side {t.side!r}"
        problem = self._time(t.ts_ns, t.recv_ns) or self._symbol(t.exchange, t.symbol)
        return f"trade {t.trade_id}: {problem}" if problem else None

    def quote(self, q: Quote) -> str | None:
        for name in ("bid_price", "ask_price"):
            if not _positive(getattr(q, name)):
                return f"quote {q.update_id}: {name} {getattr(q, name)!r} is not positive"
        for name in ("bid_amount", "ask_amount"):
            if not _decimal(getattr(q, name)):
                return f"quote {q.update_id}: {name} {getattr(q, name)!r} is not a decimal"
        problem = self._time(q.ts_ns, q.recv_ns) or self._symbol(q.exchange, q.symbol)
        return f"quote {q.update_id}: {problem}" if problem else None
