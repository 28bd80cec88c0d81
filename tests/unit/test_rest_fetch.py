"""The REST fetch shell (``common.rest.fetch``) without sockets: the rate bucket, paging with a
sink, retries and refusals, and the guards against a venue that pages forever."""

from __future__ import annotations

import json
from typing import ClassVar

import httpx
import pytest

from common.records import Trade
from common.rest import Page, RateLimit, Request, Span, TradeHistory
from common.rest.fetch import Bucket, Unavailable, fetch_span, retry_after_s

SPAN = Span(exchange="binance", symbol="BTC-USDT", context="", first_id=3, last_id=9,
            after_ns=0, before_ns=10**19)  # fmt: skip


def trade(i: int) -> Trade:
    return Trade("binance", "BTC-USDT", str(i), "1", "1", "buy", 10**18 + i, 10**18)


class Pages(TradeHistory):
    """Pages of 3 ids from ``from``, overlapping the page before by one (a re-asked boundary)."""

    exchange: ClassVar[str] = "binance"
    default_url: ClassVar[str] = "http://venue"
    limit: ClassVar[RateLimit] = RateLimit(100, 1)
    reach: ClassVar[str] = "test"
    loop: bool = False

    def first(self, span: Span) -> Request:
        return Request("/t", (("from", "1"),))

    def page(self, span: Span, request: Request, body: bytes, recv_ns: int) -> Page:
        start = int(dict(request.params)["from"])
        ids = json.loads(body)
        nxt = start if self.loop else start + 2
        more = ids and max(ids) < 12
        return Page([trade(i) for i in ids], Request("/t", (("from", str(nxt)),)) if more else None)


def client(answers: list[int] | None = None) -> httpx.Client:
    statuses = list(answers or [])

    def handle(request: httpx.Request) -> httpx.Response:
        if statuses:
            return httpx.Response(statuses.pop(0), headers={"Retry-After": "0"}, text="{}")
        start = int(request.url.params["from"])
        return httpx.Response(200, json=list(range(start, start + 3)))

    return httpx.Client(transport=httpx.MockTransport(handle))


def fetch(history: TradeHistory, answers: list[int] | None = None, **kw: object) -> object:
    sleeps: list[float] = []
    kw.setdefault("bucket", Bucket(100, 1))
    out = fetch_span(client(answers), "http://venue", history, SPAN, sleep=sleeps.append, **kw)  # type: ignore[arg-type]
    return out, sleeps


def test_pages_reach_the_sink_once_each_and_only_inside_the_span() -> None:
    pages: list[list[str]] = []
    out, _ = fetch(Pages(), sink=lambda ts: pages.append([t.trade_id for t in ts]))
    assert pages == [["3"], ["4", "5"], ["6", "7"], ["8", "9"]]  # boundary ids once
    assert out.trades == [] and out.count == 7 and out.requests == 6  # type: ignore[attr-defined]


def test_without_a_sink_the_trades_are_returned() -> None:
    out, _ = fetch(Pages())
    assert [t.trade_id for t in out.trades] == [str(i) for i in range(3, 10)]  # type: ignore[attr-defined]


def test_retry_answers_are_retried_then_give_up() -> None:
    out, sleeps = fetch(Pages(), [429, 503, 418])
    assert out.count == 7 and sleeps[:3] == [0.0, 0.0, 0.0]  # type: ignore[attr-defined]
    with pytest.raises(Unavailable, match="HTTP 503 6 times"):
        fetch(Pages(), [503] * 6)


def test_a_final_refusal_is_kept_with_its_reason() -> None:
    out, _ = fetch(Pages(), [400])
    assert out.refused == "HTTP 400: {}"  # type: ignore[attr-defined]


def test_a_venue_that_repeats_itself_or_pages_forever_is_stopped() -> None:
    looping = Pages()
    looping.loop = True
    out, _ = fetch(looping)
    assert out.requests == 1  # type: ignore[attr-defined]
    out, _ = fetch(Pages(), max_requests=2)
    assert out.short == "stopped after 2 requests"  # type: ignore[attr-defined]


def test_the_bucket_spends_its_burst_then_paces() -> None:
    bucket = Bucket(units=10, per_s=1.0)
    assert [bucket.wait_s(5, now=0.0) for _ in range(2)] == [0.0, 0.0]
    assert bucket.wait_s(5, now=0.0) == pytest.approx(0.5)
    assert bucket.wait_s(5, now=0.5) == 0.0
    assert bucket.wait_s(50, now=10.0) == 0.0  # a request heavier than the bucket waits for all


@pytest.mark.parametrize(("value", "seconds"), [("3", 3.0), ("-1", 0.0), ("1e9", 120.0),
                                                 ("soon", None), (None, None)])  # fmt: skip
def test_retry_after(value: str | None, seconds: float | None) -> None:
    headers = {} if value is None else {"Retry-After": value}
    assert retry_after_s(httpx.Response(429, headers=headers)) == seconds
