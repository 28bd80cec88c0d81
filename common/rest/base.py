"""A venue's past trades over its public REST API (pure: no sockets, no clock).

A backfill asks for the trades of one symbol in a :class:`Span`: the missing ids between two
stored trades (venues whose trade ids are consecutive) or a time interval the feed was blind in
(the others). A venue's :class:`TradeHistory` says which request comes first and, for each
answer, the trades in it and the next request, or that the venue cannot reach the span's start
(``Page.short``: the rest is unfillable). The shell (``consumer.backfill``) sends the requests
with httpx within the venue's documented rate limit, retries what the venue asks to retry, keeps
only the trades inside the span and stores them through the same insert as the WebSocket rows.

Invariant every venue keeps: a trade fetched here is the same :class:`~common.records.Trade` the
WebSocket parser makes of it (same symbol, same ``trade_id``, same ``ts_ns`` at the same
precision), so its natural key matches and a trade seen both ways is stored once.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

from ..errors import PoisonFrame
from ..records import Trade
from ..venues.base import FrameContext


class BadAnswer(PoisonFrame):
    """The venue's answer is not what its docs describe (the gap stays open, with the reason)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Span:
    """The trades one backfill fetches: one symbol, ids ``first_id..last_id`` (both included)
    where the venue's ids are consecutive, else the times ``after_ns <= ts <= before_ns``."""

    exchange: str
    symbol: str  # canonical (BTC-USDT)
    context: str  # connection context of the WebSocket rows (e.g. Binance's time unit)
    first_id: int | None  # None: a time span (venues without consecutive ids)
    last_id: int | None
    after_ns: int  # time of the last stored trade before the span (or the blind interval's start)
    before_ns: int  # time of the first stored trade after it (or the blind interval's end)
    # The id space of an id span: its stored trade_ids are this prefix and the id ("agg-" for
    # Binance spot's aggregate trades, "" for plain trade ids)
    id_prefix: str = ""

    @property
    def by_id(self) -> bool:
        return self.first_id is not None and self.last_id is not None

    def holds(self, trade: Trade) -> bool:
        """Whether ``trade`` belongs to the span (what the shell stores)."""
        if self.by_id:
            assert self.first_id is not None and self.last_id is not None
            prefix, tid = self.id_prefix, trade.trade_id
            if not tid.startswith(prefix):
                return False
            digits = tid[len(prefix) :]
            if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
                return False
            return self.first_id <= int(digits) <= self.last_id
        # both ends included: a missed trade may share its millisecond with a stored neighbour
        # (the insert skips what is stored already)
        return self.after_ns <= trade.ts_ns <= self.before_ns


@dataclass(frozen=True, slots=True)
class Request:
    """One GET: ``path`` on the venue's REST base URL, with its query and headers."""

    path: str
    params: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    weight: int = 1  # units of the venue's rate limit this request spends


@dataclass(frozen=True, slots=True)
class Page:
    """What one answer gave."""

    trades: list[Trade]  # may hold trades outside the span: the shell keeps those inside
    next: Request | None  # None: nothing more to ask for this span
    short: str | None = None  # the venue cannot serve the span back to its start: why


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``units`` of request weight per ``per_s`` seconds (the venue's documented public
    limit, or a safe fraction of it)."""

    units: float
    per_s: float


class TradeHistory(abc.ABC):
    """One venue's REST trade history. Subclasses set the class attributes and the methods."""

    exchange: ClassVar[str]  # the exchange id, as in ``common.venues``
    default_url: ClassVar[str]  # scheme://host[:port] of the public REST API, no slash
    limit: ClassVar[RateLimit]
    reach: ClassVar[str]  # how far back the venue serves trades, one line (README, CLI)

    @abc.abstractmethod
    def first(self, span: Span) -> Request:
        """The first request for ``span``."""

    @abc.abstractmethod
    def page(self, span: Span, request: Request, body: bytes, recv_ns: int) -> Page:
        """The trades in the answer ``body`` to ``request`` (HTTP 200) and what to ask next.
        ``recv_ns`` is the receive time to give the rows.

        Raises:
            BadAnswer: the body is not the venue's documented answer.
        """

    def frame_context(
        self, span: Span, recv_ns: int, venue_symbol: str | None = None, *, context: str = ""
    ) -> FrameContext:
        """What the venue's WebSocket parser is given for the span's trades (the REST rows
        are made by that parser: the same keys). ``context`` overrides the span's."""
        return FrameContext(
            exchange=self.exchange,
            context=context or span.context,
            recv_ns=recv_ns,
            entry_id="",
            symbols={} if venue_symbol is None else {venue_symbol: span.symbol},
        )

    def cannot(self, span: Span) -> str | None:
        """Why the venue's REST cannot give ``span`` the WebSocket rows' keys (a feed variant
        whose rows REST does not serve), before any request; None: it can."""
        return None

    def refusal(self, status: int, body: bytes) -> str | None:
        """For a non-200 answer that is final (not 429, 418 or 5xx, which the shell retries):
        the reason the span cannot be served (it becomes ``unfillable``), or None to keep the
        gap open and retry later. Default: every 4xx is final, with the body's first line."""
        text = body[:200].decode("utf-8", "replace").splitlines()
        return f"HTTP {status}: {text[0] if text else ''}".strip()


__all__ = ["BadAnswer", "Page", "RateLimit", "Request", "Span", "TradeHistory"]
