"""What one look at the pipeline holds (``tickvault status``), and how its ages and sizes read."""

from __future__ import annotations

import msgspec

# -- the snapshot --------------------------------------------------------------------------------


class _Struct(msgspec.Struct, frozen=True, kw_only=True):
    pass


class ConsumerInfo(_Struct, frozen=True, kw_only=True):
    name: str
    pending: int
    idle_s: float


class GroupInfo(_Struct, frozen=True, kw_only=True):
    name: str
    pending: int
    lag_entries: int | None  # XINFO GROUPS' ``lag``: None where Redis cannot count it
    lag_s: float  # age of the first entry not yet delivered to the group (0: none)
    oldest_pending_s: float | None  # age of the oldest entry delivered and not acked
    consumers: list[ConsumerInfo]

    @property
    def behind_s(self) -> float:
        """How far behind the group is: its oldest entry not done with, in seconds."""
        return max(self.lag_s, self.oldest_pending_s or 0.0)


class StreamInfo(_Struct, frozen=True, kw_only=True):
    exchange: str
    key: str
    exists: bool
    length: int = 0
    memory_bytes: int | None = None
    oldest_age_s: float | None = None
    newest_age_s: float | None = None
    groups: list[GroupInfo] = msgspec.field(default_factory=list)


class FeedInfo(_Struct, frozen=True, kw_only=True):
    producer: str
    label: str
    exchange: str
    context: str
    symbols: list[str]
    state: str  # connected | connecting | backoff | stopped
    connected_since_ns: int | None
    connected_s: float | None
    last_frame_age_s: float | None
    reconnects_1h: int
    conn: str | None
    heartbeat_age_s: float
    every_s: float


class SymbolInfo(_Struct, frozen=True, kw_only=True):
    exchange: str
    symbol: str
    rows_1m: int = 0
    rows_1h: int = 0
    newest_age_s: float | None = None  # None: no trade in the last hour


class DeadInfo(_Struct, frozen=True, kw_only=True):
    exchange: str
    count: int
    sampled: int
    reasons: dict[str, int]  # reason class -> count among the sampled newest


class GapInfo(_Struct, frozen=True, kw_only=True):
    exchange: str
    open: int
    backfilling: int
    oldest_s: float  # since the oldest of them was detected


class Failure(_Struct, frozen=True, kw_only=True):
    source: str  # "redis", "postgresql", "heartbeat"
    text: str
    unreachable: bool


class Snapshot(_Struct, frozen=True, kw_only=True):
    taken_ns: int
    redis: str
    database: str
    configured: list[str]  # exchanges in the configuration
    streams: list[StreamInfo]
    feeds: list[FeedInfo]
    symbols: list[SymbolInfo]
    dead_letters: list[DeadInfo]
    gaps: list[GapInfo] | None  # None: no gaps table (or PostgreSQL unreachable)
    failures: list[Failure]
    redis_ok: bool
    database_ok: bool


class Problem(_Struct, frozen=True, kw_only=True):
    kind: str
    subject: str
    text: str


class Thresholds(_Struct, frozen=True, kw_only=True):
    silent_s: float = 60.0
    lag_s: float = 30.0
    idle_s: float = 60.0


# -- how quantities read ----------------------------------------------------------------------


def fmt_age(seconds: float | None) -> str:
    """``0.3s``, ``42s``, ``4m05s``, ``2h03m``, ``3d04h``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    if s < 120:
        return f"{s:.0f}s"
    whole = int(s)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 172_800:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
