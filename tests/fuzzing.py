"""The hypothesis settings of the property tests of what takes bytes from outside."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def fuzz(examples: int) -> settings:
    """``examples`` derandomized examples: the same on every run, so CI is reproducible; no
    failing examples saved and replayed between runs; no deadline (CI's boxes are slow)."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
