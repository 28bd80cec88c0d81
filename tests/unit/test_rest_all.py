"""Every venue's REST history (``common.rest.all_histories()``) reads any answer at all as a Page
of Trades or a BadAnswer with the exchange's prefix, never another exception: arbitrary bytes and
arbitrary JSON, as the answer to the first request of each kind of span the venue pages and to a
later page's request. JSON shaped like a venue's answer is fuzzed in that venue's test module."""

from __future__ import annotations

from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.rest import Request, Span, all_histories, binance, binance_futures, bithumb, upbit
from tests.rest_helpers import ANY_JSON, FUZZ, make_span, page_or_bad_answer
from tests.venue_helpers import RECV_NS

NS = 1_000_000_000
T0 = 1_730_336_862 * NS  # 2024-10-31 01:07:42 UTC
T1 = T0 + 10 * NS
DAY = 86_400 * NS


class Case(NamedTuple):
    span: Span
    later: tuple[Request, ...] = ()  # requests of later pages, besides the span's first
    now: int = RECV_NS  # the receive time (Upbit's and Bithumb's paging count days from it)


def _binance(s: Span) -> Case:
    return Case(s, (binance.HISTORY.by_id(s, 2000),))


def _futures(s: Span) -> Case:
    return Case(s, (binance_futures.HISTORY.by_id(s, 0),))


_UPBIT = make_span("upbit", "BTC-KRW", T0 - DAY, T0)
_BITHUMB = make_span("bithumb", "BTC-KRW", T0 - DAY, T0)

# exchange -> the spans (with later pages' requests) its answers are read for
CASES: dict[str, list[Case]] = {
    "binance": [
        _binance(make_span("binance", "BTC-USDT", 0, 2**62, first_id=500, last_id=2600)),
        _binance(make_span("binance", "BTC-USDT", 0, 2**62, first_id=0, last_id=2600)),
    ],
    "binance-futures": [
        _futures(make_span("binance-futures", "BTC-USDT-PERP", 0, 2**62, first_id=0, last_id=2600)),
        _futures(make_span("binance-futures", "BTC-USDT-PERP", 0, 2**62)),
    ],
    "bithumb": [Case(_BITHUMB, (bithumb.HISTORY.request(_BITHUMB, 0, cursor="7"),), now=T0)],
    "bybit": [Case(make_span("bybit", "BTC-USDT", T0, T1, context="spot"))],
    "coinbase": [Case(make_span("coinbase", "BTC-USD", T0, T1, first_id=5, last_id=10))],
    "kraken": [Case(make_span("kraken", "BTC-USD", T0, T1, first_id=61044952, last_id=61044956))],
    "okx": [Case(make_span("okx", "BTC-USDT", T0, T1, context="trades-all"))],
    "upbit": [Case(_UPBIT, (upbit.HISTORY.request(_UPBIT, 0, cursor="7"),), now=T0)],
}
EXCHANGES = sorted(all_histories())


def check(exchange: str, body: object) -> None:
    assert exchange in CASES, f"no fuzz case for {exchange}: add one to CASES"
    history = all_histories()[exchange]
    for case in CASES[exchange]:
        page_or_bad_answer(history, case.span, body, later=case.later, now=case.now)


def test_every_case_is_a_history() -> None:
    assert set(CASES) == set(EXCHANGES)


@pytest.mark.parametrize("exchange", EXCHANGES)
@FUZZ
@given(body=st.binary(max_size=300))
def test_page_on_arbitrary_bytes(exchange: str, body: bytes) -> None:
    check(exchange, body)


@pytest.mark.parametrize("exchange", EXCHANGES)
@FUZZ
@given(value=ANY_JSON)
def test_page_on_arbitrary_json(exchange: str, value: object) -> None:
    check(exchange, value)
