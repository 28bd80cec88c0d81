"""Simulated venue protocols: every module here that defines ``DIALECT`` is found by itself."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from ..dialect import Dialect


@cache
def all_dialects() -> dict[str, Dialect]:
    found: dict[str, Dialect] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        dialect = getattr(module, "DIALECT", None)
        if isinstance(dialect, Dialect):
            found[dialect.exchange] = dialect
    return dict(sorted(found.items()))


def get_dialect(exchange: str) -> Dialect:
    dialects = all_dialects()
    try:
        return dialects[exchange]
    except KeyError:
        raise KeyError(f"no simulator for {exchange!r}; simulated: {', '.join(dialects)}") from None
