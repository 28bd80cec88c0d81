"""Fetch one span's trades from a venue's REST API: the thin shell around a
:class:`~common.rest.base.TradeHistory` (sync httpx; runs in the backfill thread or the CLI).

- Requests go out within the venue's rate limit (:class:`Bucket`, shared by every span of the
  venue in this process).
- 429, 418 and 5xx answers and transport errors are retried with capped backoff, honouring
  ``Retry-After``; after ``retries`` in a row the fetch fails with :class:`Unavailable` (the gap
  stays open and is tried again later).
- Another non-200 answer is final when the venue module says so (``refusal``): the span cannot
  be served, :attr:`Fetched.refused` says why.
- Paging stops when the venue says it is done, when it repeats a request (a venue bug would loop
  forever), or after ``max_requests``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from ..errors import backoff
from ..records import Trade
from .base import BadAnswer, Request, Span, TradeHistory

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({418, 429, 500, 502, 503, 504})
RETRY_AFTER_MAX_S = 120.0  # a longer Retry-After is capped (and the venue asked for it)


class Unavailable(Exception):
    """The venue could not be reached or kept asking to retry: try the span again later."""


@dataclass(slots=True)
class Bucket:
    """A token bucket: ``units`` per ``per_s`` seconds, starting full (pure: time is passed in)."""

    units: float
    per_s: float
    tokens: float = -1.0
    at: float | None = None

    def wait_s(self, weight: float, now: float) -> float:
        """Seconds to wait before ``weight`` units may be spent; 0 spends them now."""
        rate = self.units / self.per_s
        if self.at is None or self.tokens < 0:
            self.tokens, self.at = self.units, now
        self.tokens = min(self.units, self.tokens + (now - self.at) * rate)
        self.at = now
        need = min(weight, self.units)
        if self.tokens >= need:
            self.tokens -= need
            return 0.0
        return (need - self.tokens) / rate


@dataclass(slots=True)
class Fetched:
    trades: list[Trade] = field(default_factory=list)  # inside the span, each id once (no sink)
    count: int = 0  # trades inside the span, each id once (also those given to a sink)
    requests: int = 0
    short: str | None = None  # the venue could not reach the span's start: why
    refused: str | None = None  # the venue refused the span for good: why


def retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return min(RETRY_AFTER_MAX_S, max(0.0, float(value)))
    except ValueError:
        return None


def fetch_span(
    client: httpx.Client,
    base_url: str,
    history: TradeHistory,
    span: Span,
    *,
    bucket: Bucket,
    retries: int = 5,
    max_requests: int = 10_000,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    sink: Callable[[list[Trade]], None] | None = None,
) -> Fetched:
    """The trades of ``span`` that the venue still serves: in :attr:`Fetched.trades`, or,
    with ``sink``, handed to it page by page as they come (an hour of a busy symbol is
    millions of trades: they are stored as they arrive, never all held at once).

    Raises:
        Unavailable: transport errors or retry answers ``retries`` times in a row.
        BadAnswer: an answer the venue module cannot read.
    """
    out = Fetched()
    out.refused = history.cannot(span)
    if out.refused is not None:
        return out
    previous: set[str] = set()  # the ids of the page before (venues re-ask a boundary)
    asked: set[Request] = set()
    request: Request | None = history.first(span)
    base = base_url.rstrip("/")
    while request is not None:
        if request in asked:
            logger.warning("%s: the venue repeats a request (%s); stopping", span.symbol, request)
            break
        if out.requests >= max_requests:
            out.short = f"stopped after {max_requests} requests"
            break
        asked.add(request)
        response = _get(client, base, request, bucket, retries, sleep, clock)
        out.requests += 1
        if response.status_code != 200:
            out.refused = history.refusal(response.status_code, response.content)
            if out.refused is None:
                raise Unavailable(f"HTTP {response.status_code} for {request.path}")
            return out
        page = history.page(span, request, response.content, time.time_ns())
        current: set[str] = set()
        fresh: list[Trade] = []
        for trade in page.trades:
            tid = trade.trade_id
            if span.holds(trade) and tid not in previous and tid not in current:
                current.add(tid)
                fresh.append(trade)
        previous = current
        out.count += len(fresh)
        if sink is None:
            out.trades += fresh
        elif fresh:
            sink(fresh)
        if page.short is not None:
            out.short = page.short
        request = page.next
    return out


def _get(
    client: httpx.Client,
    base: str,
    request: Request,
    bucket: Bucket,
    retries: int,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> httpx.Response:
    delays = backoff(initial=0.5, cap=30.0)
    failures = 0
    while True:
        wait = bucket.wait_s(request.weight, clock())
        while wait > 0:
            sleep(wait)
            wait = bucket.wait_s(request.weight, clock())
        try:
            response = client.get(
                base + request.path, params=list(request.params), headers=list(request.headers)
            )
        except httpx.TransportError as exc:  # refused, reset, timed out: the venue may be back
            failures += 1
            if failures > retries:
                raise Unavailable(f"{base}{request.path}: {exc!r}") from exc
            sleep(next(delays))
            continue
        if response.status_code not in RETRY_STATUSES:
            return response
        failures += 1
        if failures > retries:
            raise Unavailable(f"HTTP {response.status_code} {retries + 1} times for {request.path}")
        after = retry_after_s(response)
        sleep(next(delays) if after is None else after)


__all__ = ["BadAnswer", "Bucket", "Fetched", "Unavailable", "fetch_span", "retry_after_s"]
