"""Query parameters of the simulated REST endpoints, as ``urllib.parse.parse_qs`` gives them (a
name -> its values; a repeated parameter: the last value counts). Each dialect answers a bad one in
its venue's own error format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import overload


@overload
def param(query: Mapping[str, list[str]], name: str) -> str | None: ...


@overload
def param(query: Mapping[str, list[str]], name: str, default: str) -> str: ...


def param(query: Mapping[str, list[str]], name: str, default: str | None = None) -> str | None:
    """The value of ``name``; ``default`` when it is absent."""
    values = query.get(name)
    return values[-1] if values else default


def is_uint(text: str, max_digits: int = 19) -> bool:
    """Whether ``text`` is a non-negative integer written as at most ``max_digits`` ASCII digits
    (no sign, no spaces; 19 digits: every value fits a signed 64-bit integer)."""
    return text.isascii() and text.isdigit() and len(text) <= max_digits


def uint_param(query: Mapping[str, list[str]], name: str, max_digits: int = 19) -> int | None:
    """The value of ``name`` as a non-negative integer (``is_uint``); None when it is absent.

    Raises:
        ValueError: the value is not such an integer.
    """
    text = param(query, name)
    if text is None:
        return None
    if not is_uint(text, max_digits):
        raise ValueError(f"{name} must be a non-negative integer, got {text!r}")
    return int(text)
