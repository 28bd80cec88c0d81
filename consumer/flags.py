"""Flags for abnormal trades and quotes (pure: no I/O, no clock; times come from the rows).

Every row is kept; the flagger only returns a small bitmask (:class:`Flag`, ``0`` when clean)
to store next to it. :meth:`Flagger.trade` updates the state of the row's (exchange, symbol);
:meth:`Flagger.quote` keeps none.

Trades
------
The *reference price* of a symbol is the median of its last ``window`` accepted trades (kept as
a deque for expiry plus a sorted list, ``bisect.insort``: O(log n) search, a short memmove).
A trade at price ``p`` is a ``PRICE_OUTLIER`` when, with ``ref`` the reference::

    |p - ref| / ref > band
    band = max(price_band * max(1, sqrt(gap_s / 60)), 4 * mad)

- ``gap_s``: seconds between this trade's time and the latest trade time seen for the symbol.
  A symbol that trades once an hour may move more between two trades than one that trades every
  millisecond: the band grows with the square root of the gap, as a random walk's spread does
  (an hour: x7.7, a 10 % band becomes 77 %). Below a minute it is the base band.
- ``mad``: the window's median absolute deviation relative to ``ref``, estimated as half its
  interquartile range, ``(q3 - q1) / (2 * ref)``: equal to the MAD for a symmetric spread of
  prices, read in O(1) from the sorted window, and robust like it (a few wild prices move
  neither quartile far). A volatile symbol gets a band of at least 4 of its own deviations.

Outliers do not enter the window, so a spike does not move the reference, and the trades after
a spike that reverts are clean. A move that *holds* is different: when ``rebase_after``
consecutive outliers (of the symbol, prices that could be judged) fall on the same side of the
reference, the window is reset to those outliers' prices. A crash or a rally that holds is thus
flagged for its first ``rebase_after`` trades only; a spike that lasts that long is taken for a
real move (and its reversal is flagged the same way). A slow move, each step within the band,
drags the median along and is never flagged.

``SIZE_OUTLIER``: the amount is above ``size_factor`` times the median amount of the last
``window`` trades that were not size outliers (a fat finger stays out of that window too).

Neither verdict is given before ``min_history`` trades of the symbol with a usable value
(positive and finite as ``float``) were seen; a value that is not usable gets no verdict and
leaves the state as it is. ``float()`` is enough for these checks; the stored text stays
exact. ``LATE`` and ``EARLY`` compare the trade time with its receive time and need no
history.

State is kept for at most ``max_symbols`` (exchange, symbol) pairs; the least recently
touched is forgotten first (and starts again with ``min_history`` when it comes back).

Why a window per consumer is enough
-----------------------------------
Consumers of a group share the stream, so each sees an interleaved sample of a symbol's trades:
with N consumers each still sees about 1/N of them, in order, and its median over 64 of them is
a fine estimate of the recent level. A spike is judged against the same level by whichever
consumer sees it. What N changes: reaching ``min_history`` and re-basing take up to N times as
many trades of the stream (a crash that holds can be flagged ``rebase_after`` times by each
consumer), and a consumer sees gaps about N times as long (the band widens only for symbols
that trade less often than about N times a minute). Sharing the state through Redis would cost a
round trip per row on the hot path, for no better verdict.

Quotes
------
``CROSSED`` when bid > ask, ``LOCKED`` when bid == ask (exactly: equal floats are compared
again as decimals), ``WIDE_SPREAD`` when ``(ask - bid) / mid > spread_band``. A quote whose
prices are not usable gets no flag.

Nothing here raises on a row's values.
"""

from __future__ import annotations

import enum
import math
from bisect import bisect_left, insort
from collections import OrderedDict, deque
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from common.errors import ConfigError
from common.records import Quote, Trade

if TYPE_CHECKING:
    from collections.abc import Iterator

    from common.config import FlagsSettings

__all__ = ["Flag", "FlagSettings", "Flagger", "flag_names", "flagger_from"]


class Flag(enum.IntFlag):
    PRICE_OUTLIER = 1  # price far from the symbol's recent reference
    SIZE_OUTLIER = 2  # amount far above the symbol's recent typical size (fat finger)
    LATE = 4  # trade time more than late_s before its receive time
    EARLY = 8  # trade time more than early_s after its receive time
    CROSSED = 16  # quote: bid > ask
    LOCKED = 32  # quote: bid == ask
    WIDE_SPREAD = 64  # quote: spread beyond spread_band of the mid


# Plain ints on the hot path: IntFlag's operators are Python code.
_PRICE = int(Flag.PRICE_OUTLIER)
_SIZE = int(Flag.SIZE_OUTLIER)
_LATE = int(Flag.LATE)
_EARLY = int(Flag.EARLY)
_CROSSED = int(Flag.CROSSED)
_LOCKED = int(Flag.LOCKED)
_WIDE = int(Flag.WIDE_SPREAD)

_NAMES = tuple((int(f), f.name.lower()) for f in Flag if f.name)  # the metrics' "check" label
_INF = math.inf
_MINUTE_NS = 60_000_000_000
_MAX_GAP_NS = 1 << 62  # ~146 years: a gap is capped before it is made a float


@dataclass(frozen=True, slots=True, kw_only=True)
class FlagSettings:
    window: int = 64  # recent trades per (exchange, symbol) for the references
    min_history: int = 16  # no price/size verdict before this many trades were seen
    price_band: float = 0.10  # base band around the reference price (10 %)
    rebase_after: int = 3  # this many outliers in a row on the same side: a real move, re-base
    size_factor: float = 50.0  # amount above this many times the recent median amount
    late_s: float = 5.0
    early_s: float = 1.0
    spread_band: float = 0.05  # quote spread above 5 % of the mid
    max_symbols: int = 10_000  # state kept for at most this many (exchange, symbol) pairs

    def __post_init__(self) -> None:
        # the keys are those of the configuration's ``flags`` section, which has these fields
        for name in ("window", "min_history", "rebase_after", "max_symbols"):
            count = getattr(self, name)
            least = 0 if name == "min_history" else 1
            if count < least:
                raise ConfigError(f"flags.{name}", f"must be at least {least}, got {count}")
        for name in ("price_band", "size_factor", "late_s", "early_s", "spread_band"):
            value = getattr(self, name)
            if not 0.0 < value < _INF:  # (NaN too)
                raise ConfigError(f"flags.{name}", f"must be positive, got {value}")


class _Symbol:
    """What the flagger remembers of one (exchange, symbol)."""

    __slots__ = (
        "amounts",
        "last_ns",
        "priced",
        "prices",
        "run",
        "run_side",
        "sized",
        "sorted_amounts",
        "sorted_prices",
    )

    def __init__(self, ts_ns: int) -> None:
        self.last_ns = ts_ns  # the latest trade time seen
        self.prices: deque[float] = deque()  # accepted prices, oldest first
        self.sorted_prices: list[float] = []
        self.priced = 0  # usable prices seen, counted up to min_history
        self.run: list[float] = []  # the current run of outliers on one side
        self.run_side = 0  # +1 above the reference, -1 below
        self.amounts: deque[float] = deque()
        self.sorted_amounts: list[float] = []
        self.sized = 0


def _positive(text: str) -> float:
    """The decimal ``text`` as a float when it is finite and positive, else 0.0 (no verdict)."""
    try:
        value = float(text)
    except (ValueError, TypeError):
        return 0.0
    return value if 0.0 < value < _INF else 0.0


def _remember(window: deque[float], ranked: list[float], value: float, size: int) -> None:
    """``value`` enters a rolling window of ``size`` (arrival order) and its sorted copy."""
    window.append(value)
    insort(ranked, value)
    if len(window) > size:
        del ranked[bisect_left(ranked, window.popleft())]


class Flagger:
    """Flags for trades and quotes, one instance per consumer process (not thread-safe)."""

    def __init__(self, settings: FlagSettings = FlagSettings()) -> None:
        self.settings = settings
        self._states: OrderedDict[tuple[str, str], _Symbol] = OrderedDict()
        self._late_ns = round(settings.late_s * 1e9)
        self._early_ns = round(settings.early_s * 1e9)
        # an empty window gives no reference: 0 and 1 mean the same
        self._min_history = max(1, settings.min_history)
        self._window = settings.window
        self._band = settings.price_band
        self._size_factor = settings.size_factor
        self._last_key: tuple[str, str] | None = None  # the last trade's symbol, and its state
        self._last: _Symbol | None = None

    @property
    def tracked(self) -> int:
        """How many (exchange, symbol) pairs have state (at most ``max_symbols``)."""
        return len(self._states)

    def trade(self, trade: Trade) -> int:
        """The flags of ``trade`` (0: clean); the trade enters its symbol's history.
        (Runs for every trade: the last trade's symbol state is kept at hand.)"""
        ts = trade.ts_ns
        lag = trade.recv_ns - ts
        flags = _LATE if lag > self._late_ns else _EARLY if -lag > self._early_ns else 0

        key = (trade.exchange, trade.symbol)
        st = self._last
        if st is None or key != self._last_key:  # (the same symbol: last in the LRU order)
            states = self._states
            st = states.get(key)
            if st is None:
                st = states[key] = _Symbol(ts)
                if len(states) > self.settings.max_symbols:
                    states.popitem(last=False)
            else:
                states.move_to_end(key)
            self._last_key, self._last = key, st
        gap = ts - st.last_ns
        if gap > 0:
            st.last_ns = ts

        price = _positive(trade.price)
        if price:
            ranked = st.sorted_prices
            if st.priced < self._min_history:
                st.priced += 1
                outlier = False
            else:
                ref = ranked[len(ranked) >> 1]
                outlier = abs(price - ref) > self._band * ref and self._outlier(st, price, gap)
            if outlier:
                flags |= _PRICE
            else:
                if st.run_side:  # the run of outliers is broken
                    st.run = []
                    st.run_side = 0
                _remember(st.prices, ranked, price, self._window)

        amount = _positive(trade.amount)
        if amount:
            ranked = st.sorted_amounts
            if st.sized < self._min_history:
                st.sized += 1
            elif amount > self._size_factor * ranked[len(ranked) >> 1]:
                return flags | _SIZE
            _remember(st.amounts, ranked, amount, self._window)
        return flags

    def _outlier(self, st: _Symbol, price: float, gap_ns: int) -> bool:
        """Whether ``price``, outside the base band, is outside the widened one too (then it
        joins the run of outliers, which re-bases the window once it is long enough)."""
        s = self.settings
        ranked = st.sorted_prices
        n = len(ranked)
        ref = ranked[n >> 1]
        band = s.price_band
        if gap_ns > _MINUTE_NS:  # an illiquid symbol: the band grows with sqrt(gap / 1 min)
            band *= math.sqrt(min(gap_ns, _MAX_GAP_NS) / _MINUTE_NS)
        # 4 median absolute deviations, the MAD estimated as half the interquartile range
        band = max(band, 2.0 * (ranked[(3 * n) >> 2] - ranked[n >> 2]) / ref)
        if not abs(price - ref) > band * ref:
            return False
        side = 1 if price > ref else -1
        if side != st.run_side:
            st.run_side = side
            st.run = [price]
        else:
            st.run.append(price)
        if len(st.run) >= s.rebase_after:  # the move holds: re-base on it
            prices = st.run[-s.window :]
            st.prices = deque(prices)
            st.sorted_prices = sorted(prices)
            st.run = []
            st.run_side = 0
        return True

    def quote(self, quote: Quote) -> int:
        """The flags of ``quote`` (0: clean, or prices that cannot be judged)."""
        bid, ask = _positive(quote.bid_price), _positive(quote.ask_price)
        if not (bid and ask):
            return 0
        if bid > ask:  # float rounding is monotonic: bid > ask as decimals too
            return _CROSSED
        if bid == ask:
            return _exact_order(quote.bid_price, quote.ask_price)
        if ask - bid > self.settings.spread_band * 0.5 * (ask + bid):
            return _WIDE
        return 0


def _exact_order(bid: str, ask: str) -> int:
    """LOCKED or CROSSED for two prices whose floats are equal (rare: compare the decimals)."""
    try:
        b, a = Decimal(bid), Decimal(ask)
    except (ArithmeticError, ValueError):
        return _LOCKED
    if b > a:
        return _CROSSED
    return _LOCKED if b == a else 0


def flag_names(bits: int) -> Iterator[str]:
    """The names of the flags set in ``bits``, lower case (``"price_outlier"``), in bit order."""
    for bit, name in _NAMES:
        if bits & bit:
            yield name


def flagger_from(config: FlagsSettings) -> Flagger | None:
    """The flagger the configuration's ``flags`` section asks for; None when it is disabled.

    Raises:
        ConfigError: a value out of range (``flags.<name>``).
    """
    if not config.enabled:
        return None
    return Flagger(
        FlagSettings(
            window=config.window,
            min_history=config.min_history,
            price_band=config.price_band,
            rebase_after=config.rebase_after,
            size_factor=config.size_factor,
            late_s=config.late_s,
            early_s=config.early_s,
            spread_band=config.spread_band,
        )
    )
