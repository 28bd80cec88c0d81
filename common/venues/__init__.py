"""Venue registry: every module in this package that defines ``VENUE`` is a venue.

Adding a venue is adding one module (plus fixtures and a simulator dialect); nothing here changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from .base import Channel, ConnectionPlan, FrameContext, Keepalive, Parsed, Venue

__all__ = [
    "Channel",
    "ConnectionPlan",
    "FrameContext",
    "Keepalive",
    "Parsed",
    "Venue",
    "all_venues",
    "get_venue",
]


@cache
def all_venues() -> dict[str, Venue]:
    """Exchange id -> venue, for every venue module in this package."""
    found: dict[str, Venue] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        venue = getattr(module, "VENUE", None)
        if isinstance(venue, Venue):
            found[venue.exchange] = venue
    return dict(sorted(found.items()))


def get_venue(exchange: str) -> Venue:
    """The venue for ``exchange``; KeyError names the known ids."""
    venues = all_venues()
    try:
        return venues[exchange]
    except KeyError:
        raise KeyError(f"unknown exchange {exchange!r}; known: {', '.join(venues)}") from None
