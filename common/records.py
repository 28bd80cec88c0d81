"""Normalised rows, the one schema every venue is parsed into.

Prices and amounts are kept as the venue's exact decimal text (``"0.00100000"``): PostgreSQL's
``numeric`` parses text exactly, so no ``Decimal`` or float is built on the hot path. Times are
integer nanoseconds since the Unix epoch, UTC; the store turns them into ``timestamptz`` in SQL.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec


class Trade(msgspec.Struct, frozen=True, gc=False):
    """One trade. ``side`` is the TAKER side (``"buy"``/``"sell"``), ``None`` when unknown."""

    exchange: str
    symbol: str  # canonical
    trade_id: str  # the venue's id, or a deterministic one derived from the frame
    price: str  # exact decimal text
    amount: str  # exact decimal text, base units (contracts where the venue counts so)
    side: str | None
    ts_ns: int  # exchange trade time
    recv_ns: int  # producer receive time
    flags: int = 0  # consumer.flags.Flag bits: checks it failed (0: clean); never a reason to drop

    @property
    def price_decimal(self) -> Decimal:
        return Decimal(self.price)

    @property
    def amount_decimal(self) -> Decimal:
        return Decimal(self.amount)


class Quote(msgspec.Struct, frozen=True, gc=False):
    """Best bid and ask with their amounts.

    ``update_id`` is the venue's book update id where it has one, else a deterministic id built
    from the stream entry, so replays insert nothing twice.
    """

    exchange: str
    symbol: str
    update_id: str
    bid_price: str
    bid_amount: str
    ask_price: str
    ask_amount: str
    ts_ns: int  # exchange time where the venue gives one, else the receive time
    recv_ns: int
    flags: int = 0  # consumer.flags.Flag bits (crossed, locked, wide spread)
