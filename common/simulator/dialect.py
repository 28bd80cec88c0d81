"""The interface one venue's simulated protocol implements.

A dialect is pure: it turns client messages into replies and subscriptions, and synthetic trades
and quotes into the venue's frames. The server owns the sockets and the clock.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..venues.base import Channel
from .engine import SimQuote, SimTrade, TradeBook

Frame = str | bytes


@dataclass(frozen=True, slots=True)
class RestReply:
    """An answer of the venue's REST API: status, body (JSON text) and extra headers."""

    status: int
    body: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class SimSession:
    """One client connection as the dialect sees it."""

    path: str  # request path with query string, e.g. "/stream" or "/ws/v5/public"
    # (channel, canonical symbol) -> the venue's variant (e.g. "trade" or "aggTrade")
    subscriptions: dict[tuple[Channel, str], str] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # dialect scratch (sequence numbers)


class Dialect(abc.ABC):
    exchange: ClassVar[str]
    binary: ClassVar[bool] = False  # data frames sent as binary WebSocket frames
    server_ping_s: ClassVar[float | None] = 20.0  # protocol pings the server sends
    trades_per_frame: ClassVar[int] = 1  # how many trades the venue packs in one frame at most
    ts_unit_ns: ClassVar[int] = 1_000_000  # the precision of the venue's trade times
    reports_side: ClassVar[bool] = True  # False where the stored side is NULL
    heartbeat_s: ClassVar[float | None] = None  # application heartbeats every so often

    @abc.abstractmethod
    def accepts(self, path: str) -> bool:
        """Whether the venue serves WebSockets at ``path`` (the URL shape)."""

    def greeting(self, session: SimSession) -> list[Frame]:
        """Frames sent as soon as a client connects."""
        return []

    @abc.abstractmethod
    def on_message(self, session: SimSession, message: Frame) -> list[Frame]:
        """Handle one client message (subscribe, ping, ...): update ``session``, return replies."""

    @abc.abstractmethod
    def trade_frames(self, session: SimSession, trades: Sequence[SimTrade]) -> list[Frame]:
        """Frames carrying ``trades`` (all of one symbol, at most ``trades_per_frame``)."""

    def trade_frames_batch(self, session: SimSession, trades: Sequence[SimTrade]) -> list[Frame]:
        """Frames carrying any number of ``trades`` of one symbol, ``trades_per_frame`` at most
        in each. A dialect may override this with a faster path for its firehose."""
        per = self.trades_per_frame
        frames: list[Frame] = []
        for i in range(0, len(trades), per):
            frames += self.trade_frames(session, trades[i : i + per])
        return frames

    @abc.abstractmethod
    def quote_frames(self, session: SimSession, quote: SimQuote) -> list[Frame]:
        """Frames carrying one best bid/ask update."""

    def heartbeat_frames(self, session: SimSession, now_ns: int) -> list[Frame]:
        """Application heartbeats due every ``heartbeat_s`` (Coinbase, Kraken)."""
        return []

    def rest(
        self,
        path: str,
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
        book: TradeBook,
    ) -> RestReply | None:
        """Answer a GET on the venue's public REST API (``path`` without the query, ``query``
        as ``urllib.parse.parse_qs`` gives it, header names lower case) from ``book``, the
        trades streamed so far, in the venue's documented format; None: no such endpoint
        (404). A venue without a REST trades endpoint keeps this default."""
        return None

    def expected_trade_id(self, trade: SimTrade) -> str | None:
        """The trade id the venue parser must produce (None where it derives one)."""
        return str(trade.trade_id)
