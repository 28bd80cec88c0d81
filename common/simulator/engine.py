"""Deterministic synthetic market data (pure: no clock, no I/O).

Trade ``n`` of a symbol always has the same price, amount and taker side, so a test can compute
what must be in PostgreSQL from the ids alone.
"""

from __future__ import annotations

from dataclasses import dataclass
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


# Prices, amounts and sides repeat with the id (tables: the simulator is a firehose).
_PRICES = [_cents(10_000 + i) for i in range(5_000)]
_AMOUNTS = [f"0.{i + 1:05d}" for i in range(997)]
_SIDES = ["sell", "buy", "buy"]


def trade_price(trade_id: int) -> str:
    """Price of trade ``trade_id``: 100.00 .. 149.99, exact."""
    return _PRICES[trade_id % 5_000]


def trade_amount(trade_id: int) -> str:
    """Amount of trade ``trade_id``: 0.00001 .. 0.00997 (five decimals, never zero)."""
    return _AMOUNTS[trade_id % 997]


def trade_side(trade_id: int) -> str:
    return _SIDES[trade_id % 3]


def make_trade(symbol: str, trade_id: int, ts_ns: int) -> SimTrade:
    return SimTrade(
        symbol,
        trade_id,
        _PRICES[trade_id % 5_000],
        _AMOUNTS[trade_id % 997],
        _SIDES[trade_id % 3],
        ts_ns,
    )


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
