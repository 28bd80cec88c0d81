"""Helpers for venue unit tests: load fixture frames and parse them with a fixed context."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from common.venues import FrameContext, Parsed, get_venue

FIXTURES = Path(__file__).parent / "fixtures"
RECV_NS = 1_700_000_000_123_456_789  # a fixed receive time for every fixture parse
ENTRY_ID = "1700000000123-0"


def fixture(venue: str, name: str) -> bytes:
    """The exact bytes of ``tests/fixtures/<venue>/<name>``."""
    return (FIXTURES / venue / name).read_bytes().rstrip(b"\n")


def parse(
    exchange: str,
    frame: bytes,
    *,
    context: str = "",
    symbols: Mapping[str, str] | None = None,
) -> Parsed:
    ctx = FrameContext(
        exchange=exchange,
        context=context,
        recv_ns=RECV_NS,
        entry_id=ENTRY_ID,
        symbols=dict(symbols or {}),
    )
    return get_venue(exchange).parse(frame, ctx)
