"""Canonical symbols: ``BASE-QUOTE`` (spot), ``BASE-QUOTE-PERP`` (perpetual swap),
``BASE-QUOTE-YYMMDD`` (dated future). Upper case; Kraken's XBT is BTC.

Venue modules map between these and their own names; this module only parses and checks them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

_CANONICAL = re.compile(r"^([A-Z0-9]{1,20})-([A-Z0-9]{1,20})(?:-(PERP|\d{6}))?$")

# Venue asset codes that differ from the canonical ones (both directions are derived from this).
ASSET_ALIASES = {"XBT": "BTC", "XDG": "DOGE"}


class Kind(StrEnum):
    SPOT = "spot"
    PERP = "perp"
    FUTURE = "future"


@dataclass(frozen=True, slots=True)
class Symbol:
    """A parsed canonical symbol."""

    base: str
    quote: str
    kind: Kind
    expiry: str = ""  # YYMMDD for dated futures

    def __str__(self) -> str:
        if self.kind is Kind.PERP:
            return f"{self.base}-{self.quote}-PERP"
        if self.kind is Kind.FUTURE:
            return f"{self.base}-{self.quote}-{self.expiry}"
        return f"{self.base}-{self.quote}"


def parse_symbol(text: str) -> Symbol:
    """Parse a canonical symbol, raising ``ValueError`` with the expected shape."""
    m = _CANONICAL.match(text)
    if m is None:
        raise ValueError(
            f"{text!r} is not a canonical symbol: use BASE-QUOTE (BTC-USDT), "
            "BASE-QUOTE-PERP (BTC-USDT-PERP) or BASE-QUOTE-YYMMDD (BTC-USD-250627), upper case"
        )
    base, quote, suffix = m.groups()
    base = ASSET_ALIASES.get(base, base)
    quote = ASSET_ALIASES.get(quote, quote)
    if suffix is None:
        return Symbol(base, quote, Kind.SPOT)
    if suffix == "PERP":
        return Symbol(base, quote, Kind.PERP)
    return Symbol(base, quote, Kind.FUTURE, suffix)


def canonical_asset(code: str) -> str:
    """A venue asset code in canonical form (``XBT`` -> ``BTC``)."""
    code = code.upper()
    return ASSET_ALIASES.get(code, code)
