"""Helpers of the REST backfill tests: a simulated venue's REST API on 127.0.0.1 served from a
trade book the test fills, fetches against it, in-process answers of a dialect, and the property
every reading of an answer keeps (a Page of Trades, or a BadAnswer)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import httpx
import msgspec
import pytest
from hypothesis import strategies as st

from common.records import Trade
from common.rest.base import BadAnswer, Page, Request, Span, TradeHistory
from common.rest.fetch import Bucket, Fetched, fetch_span
from common.simulator.dialect import Dialect, RestReply
from common.simulator.dialects import get_dialect
from common.simulator.engine import TradeBook
from common.simulator.server import Simulator, SimulatorConfig
from tests.fuzzing import fuzz
from tests.venue_helpers import RECV_NS

# The property tests' settings: reproducible, no example database, no deadline.
FUZZ = fuzz(60)
# Any JSON value, NaN and the infinities included (``json.dumps`` writes them as JavaScript does).
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def make_span(
    exchange: str,
    symbol: str,
    after_ns: int,
    before_ns: int,
    *,
    first_id: int | None = None,
    last_id: int | None = None,
    context: str = "",
    id_prefix: str = "",
) -> Span:
    """A span of ``symbol``'s trades: ids ``first_id..last_id`` where given (of the id space
    ``id_prefix``), else the times ``after_ns..before_ns``; ``context`` is the WebSocket rows'
    connection context."""
    return Span(
        exchange=exchange,
        symbol=symbol,
        context=context,
        first_id=first_id,
        last_id=last_id,
        after_ns=after_ns,
        before_ns=before_ns,
        id_prefix=id_prefix,
    )


def bad_answer(history: TradeHistory, span: Span, body: bytes) -> str:
    """The reason of the BadAnswer ``history`` must raise for ``body`` as the answer to the
    span's first request, which starts with the exchange."""
    with pytest.raises(BadAnswer) as caught:
        history.page(span, history.first(span), body, RECV_NS)
    assert caught.value.reason.startswith(f"{history.exchange}: "), caught.value.reason
    return caught.value.reason


def page_or_bad_answer(
    history: TradeHistory,
    span: Span,
    body: object,
    *,
    later: Iterable[Request] = (),
    now: int = RECV_NS,
) -> None:
    """``history`` reads ``body`` (bytes as they are, any other value as its JSON) as the answer
    to the first request of ``span`` and to each ``later`` one: a Page of Trades, or a BadAnswer
    whose reason starts with the exchange, and nothing else. ``now`` is the receive time."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    for request in (history.first(span), *later):
        try:
            page = history.page(span, request, data, now)
        except BadAnswer as exc:
            assert exc.reason.startswith(f"{history.exchange}: "), exc.reason
            continue
        assert isinstance(page, Page) and all(isinstance(t, Trade) for t in page.trades)


# -- the simulator ------------------------------------------------------------------------------


def book_of(symbol: str, stamps: Iterable[int]) -> TradeBook:
    """A book whose trade n (from 1) of ``symbol`` happened at the n-th of ``stamps``
    (non-decreasing)."""
    book = TradeBook()
    for n, ts in enumerate(stamps, start=1):
        book.record(symbol, n, 1, ts)
    return book


def sim_get(
    dialect: Dialect,
    path: str,
    book: TradeBook,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> RestReply:
    """The dialect's in-process answer to a GET of ``path`` (which it must serve)."""
    query = {k: [v] for k, v in (params or {}).items()}
    reply = dialect.rest(path, query, {k.lower(): v for k, v in (headers or {}).items()}, book)
    assert reply is not None, path
    return reply


def simulated_page(
    history: TradeHistory,
    dialect: Dialect,
    book: TradeBook,
    span: Span,
    request: Request | None = None,
    *,
    now: int = RECV_NS,
) -> Page:
    """``history``'s reading of the dialect's in-process answer (a 200) to ``request``, by
    default the span's first."""
    request = request or history.first(span)
    reply = sim_get(dialect, request.path, book, dict(request.params), dict(request.headers))
    assert reply.status == 200, reply
    return history.page(span, request, reply.body.encode(), now)


@contextmanager
def serving_rest(
    exchange: str, book: TradeBook, *, rest_faults: int = 0
) -> Iterator[tuple[str, Simulator]]:
    """Serve ``exchange``'s simulated REST (and WebSocket) API from ``book`` in a thread;
    yields (base URL, the simulator)."""
    sim = Simulator(get_dialect(exchange), SimulatorConfig(rest_faults=rest_faults))
    sim.book = book
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        port.append(loop.run_until_complete(sim.start()))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("simulator did not start")
    try:
        yield f"http://127.0.0.1:{port[0]}", sim
    finally:
        asyncio.run_coroutine_threadsafe(sim.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def fetch_from(
    history: TradeHistory, book: TradeBook, span: Span, *, faults: int = 0
) -> tuple[Fetched, int]:
    """``fetch_span`` of ``span`` over HTTP from the simulated venue serving ``book``, which
    first answers ``faults`` requests with a 429 (retried without sleeping; the rate limit
    never waits): what was fetched, and how many requests the simulator got."""
    with serving_rest(history.exchange, book, rest_faults=faults) as (url, sim):
        with httpx.Client(timeout=10) as client:
            bucket = Bucket(units=10_000, per_s=1.0)
            fetched = fetch_span(client, url, history, span, bucket=bucket, sleep=lambda _s: None)
        return fetched, sim.rest_requests


def fetch_whole(
    history: TradeHistory,
    book: TradeBook,
    span: Span,
    *,
    requests: int | None = None,
    faults: int = 0,
) -> list[Trade]:
    """The trades ``fetch_from`` gets of ``span``, which must be whole (neither short nor
    refused), in ``requests`` requests where given (and the simulator, ``faults`` more)."""
    fetched, served = fetch_from(history, book, span, faults=faults)
    assert fetched.short is None and fetched.refused is None, (fetched.short, fetched.refused)
    if requests is not None:
        assert (fetched.requests, served) == (requests, requests + faults)
    return fetched.trades


def fetch_by_id(
    history: TradeHistory,
    symbol: str,
    times: list[int],
    first: int,
    last: int,
    *,
    requests: int,
    faults: int = 0,
) -> dict[str, Trade]:
    """Trades ``first..last`` of a book of ``symbol`` whose trade n happened at ``times[n - 1]``,
    fetched whole (``fetch_whole``) as an id span between its stored neighbours' times: exactly
    those trades, each once; by trade id."""
    span = make_span(
        history.exchange, symbol, times[first - 2], times[last], first_id=first, last_id=last
    )
    trades = fetch_whole(history, book_of(symbol, times), span, requests=requests, faults=faults)
    assert sorted(trade_ids(trades)) == list(range(first, last + 1))
    return {t.trade_id: t for t in trades}


# -- comparing trades ---------------------------------------------------------------------------


def trade_ids(trades: Iterable[Trade]) -> list[int]:
    """The trades' ids as numbers, in the trades' order."""
    return [int(t.trade_id) for t in trades]


def by_id(trades: Iterable[Trade]) -> list[Trade]:
    """The trades in id order without their receive times (REST and the WebSocket receive at
    other times)."""
    return sorted(
        (msgspec.structs.replace(t, recv_ns=0) for t in trades), key=lambda t: int(t.trade_id)
    )
