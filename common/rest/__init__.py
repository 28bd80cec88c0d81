"""REST trade histories: every module in this package that defines ``HISTORY`` is found by itself.

Adding a venue's backfill is adding one module here (plus its simulator endpoint and fixtures).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from .base import BadAnswer, Page, RateLimit, Request, Span, TradeHistory

__all__ = [
    "BadAnswer",
    "Page",
    "RateLimit",
    "Request",
    "Span",
    "TradeHistory",
    "all_histories",
]


@cache
def all_histories() -> dict[str, TradeHistory]:
    """Exchange id -> its REST trade history, for the venues that have one."""
    found: dict[str, TradeHistory] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        history = getattr(module, "HISTORY", None)
        if isinstance(history, TradeHistory):
            found[history.exchange] = history
    return dict(sorted(found.items()))
