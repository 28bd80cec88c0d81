"""Deterministic synthetic market data (pure: no clock, no I/O).

Trade ``n`` of a symbol always has the same price, amount and taker side, so a test can compute
what must be in PostgreSQL from the ids alone.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple


class SimTrade(NamedTuple):
    symbol: str  # canonical
    trade_id: int  # consecutive per symbol, from 1
    price: str  # exact decimal text
    amount: str
    side: str  # taker side: "buy" or "sell"
    ts_ns: int


class SimQuote(NamedTuple):
    symbol: str
    update_id: int
    bid_price: str
    bid_amount: str
    ask_price: str
    ask_amount: str
    ts_ns: int


def _cents(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


# Prices, amounts and sides repeat with the id (tables: the simulator is a firehose). Prices go up
# and down by a cent a trade (100.00 .. 125.00 and back): a market, not a saw-tooth that would
# crash 20 % every 5,000 trades.
_PRICES = [_cents(10_000 + (i if i < 2_500 else 5_000 - i)) for i in range(5_000)]
_AMOUNTS = [f"0.{i + 1:05d}" for i in range(997)]
_SIDES = ["sell", "buy", "buy"]


def trade_price(trade_id: int) -> str:
    """Price of trade ``trade_id``: 100.00 .. 125.00, exact."""
    return _PRICES[trade_id % 5_000]


def trade_amount(trade_id: int) -> str:
    """Amount of trade ``trade_id``: 0.00001 .. 0.00997 (five decimals, never zero)."""
    return _AMOUNTS[trade_id % 997]


def trade_side(trade_id: int) -> str:
    return _SIDES[trade_id % 3]


# With ``abnormal`` (the demo): now and then a fat finger (an amount 1,000 times the usual) and a
# short flash crash (two trades 30 % down, then back), the same trades for the same ids, so the
# REST backfill serves what the WebSocket streamed.
FAT_FINGER_EVERY = 997  # trade ids ≡ 500 (mod 997)
FLASH_CRASH_EVERY = 2_000  # trade ids ≡ 1000, 1001 (mod 2000)


def is_fat_finger(trade_id: int) -> bool:
    return trade_id % FAT_FINGER_EVERY == 500


def is_flash_crash(trade_id: int) -> bool:
    return trade_id % FLASH_CRASH_EVERY in (1_000, 1_001)


def make_trade(symbol: str, trade_id: int, ts_ns: int, abnormal: bool = False) -> SimTrade:
    price, amount = _PRICES[trade_id % 5_000], _AMOUNTS[trade_id % 997]
    if abnormal:
        if is_fat_finger(trade_id):
            units = trade_id % 997 + 1  # the amount in 1e-5: times 1,000 is in 1e-2
            amount = f"{units // 100}.{units % 100:02d}"
        if is_flash_crash(trade_id):
            cents = 10_000 + (
                trade_id % 5_000 if trade_id % 5_000 < 2_500 else 5_000 - trade_id % 5_000
            )
            price = _cents(cents * 7 // 10)
    return SimTrade(symbol, trade_id, price, amount, _SIDES[trade_id % 3], ts_ns)


def make_quote(symbol: str, update_id: int, ts_ns: int) -> SimQuote:
    mid = 10_000 + update_id % 5_000
    return SimQuote(
        symbol=symbol,
        update_id=update_id,
        bid_price=_cents(mid - 1),
        bid_amount=f"{update_id % 50 + 1}.5",
        ask_price=_cents(mid + 1),
        ask_amount=f"{update_id % 40 + 1}.25",
        ts_ns=ts_ns,
    )


@dataclass(slots=True)
class Pacer:
    """How many events are due at a given time for a steady ``rate`` per second.

    ``due(now_s)`` returns the count to emit now so that the total tracks ``rate * elapsed``,
    capped at ``limit`` in all (``limit`` 0: no cap).
    """

    rate: float
    limit: int = 0
    started_s: float | None = None
    emitted: int = 0

    def due(self, now_s: float) -> int:
        if self.started_s is None:
            self.started_s = now_s
        target = int((now_s - self.started_s) * self.rate) + 1
        if self.limit:
            target = min(target, self.limit)
        count = max(0, target - self.emitted)
        self.emitted += count
        return count

    @property
    def finished(self) -> bool:
        return bool(self.limit) and self.emitted >= self.limit


@dataclass(slots=True)
class TradeBook:
    """Every trade the simulator has emitted, per symbol: what its REST endpoints serve.

    Trade ``n`` of a symbol is ``make_trade(symbol, n, <its time>)``; only the times are kept
    (8 bytes a trade), ids run from 1 and times never decrease."""

    times: dict[str, array[int]] = field(default_factory=dict)
    abnormal: bool = False  # trades as make_trade(..., abnormal=True) makes them

    def record(self, symbol: str, first_id: int, count: int, ts_ns: int) -> None:
        """Trades ``first_id .. first_id + count - 1`` of ``symbol`` happened at ``ts_ns``."""
        stamps = self.times.get(symbol)
        if stamps is None:
            stamps = self.times[symbol] = array("q")
        if first_id != len(stamps) + 1:
            raise ValueError(f"{symbol}: trade {first_id} after {len(stamps)}")
        stamps.extend([ts_ns] * count)

    def last_id(self, symbol: str) -> int:
        """The newest trade's id (0: none yet)."""
        return len(self.times.get(symbol, ()))

    def trade(self, symbol: str, trade_id: int) -> SimTrade:
        return make_trade(symbol, trade_id, self.times[symbol][trade_id - 1], self.abnormal)

    def trades(self, symbol: str, first_id: int, last_id: int) -> list[SimTrade]:
        """Trades ``first_id .. last_id`` (both included, clipped to what exists), oldest first."""
        stamps = self.times.get(symbol)
        if stamps is None:
            return []
        lo, hi = max(1, first_id), min(len(stamps), last_id)
        return [make_trade(symbol, i, stamps[i - 1], self.abnormal) for i in range(lo, hi + 1)]

    def first_id_at(self, symbol: str, ts_ns: int) -> int:
        """The id of the first trade at or after ``ts_ns`` (last id + 1 if none)."""
        stamps = self.times.get(symbol, array("q"))
        return bisect.bisect_left(stamps, ts_ns) + 1

    def first_id_after(self, symbol: str, ts_ns: int) -> int:
        """The id of the first trade strictly after ``ts_ns`` (last id + 1 if none)."""
        stamps = self.times.get(symbol, array("q"))
        return bisect.bisect_right(stamps, ts_ns) + 1

    def symbols(self) -> Iterator[str]:
        return iter(self.times)
