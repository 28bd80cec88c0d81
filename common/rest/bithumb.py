"""Bithumb past trades: ``GET /v1/trades/ticks``, Upbit's endpoint (see :mod:`.upbit`), walked
back day by day from the present.

Docs: https://apidocs.bithumb.com/reference/최근-체결-내역 (v2.1.5: "최근 체결 내역"),
https://apidocs.bithumb.com/docs/api-요청-수-제한-안내 (rate limits).
- ``GET https://api.bithumb.com/v1/trades/ticks``: ``market`` (``KRW-BTC``); ``to`` "마지막 체결
  시각. 형식 : [HHmmss 또는 HH:mm:ss]"; ``count`` "체결 개수" (default 1; the page gives no maximum:
  we ask for Upbit's 500); ``cursor`` "페이지네이션 커서 (sequentialId)"; ``daysAgo`` (camelCase,
  where Upbit has ``days_ago``) "최근 체결 날짜 기준 7일 이내의 이전 데이터 조회 가능 ... (범위: 1 ~
  7)". The answer has Upbit's fields: ``timestamp`` "체결 타임스탬프" (Long), ``sequential_id``
  "체결 번호(Unique)", ``ask_bid``, ``trade_price``/``trade_volume`` (Double), ...
- Rate limit: "API 요청 수는 IP 주소 및 API 분류 항목별로 제한", Public API "분류 항목별 150회"
  a second, with "별도 공지 없이 API 요청량을 제한하거나 하향 조정할 수 있습니다": we keep to 30.

Differences from Upbit that change the paging: the docs do not say in which time zone a day of
``daysAgo`` starts, nor ``to``'s (the answer's dates are UTC, Bithumb's candles count KST), so
``to`` is never sent and paging never jumps to a day: it walks back from the present, stopping at
a page that reaches the span's start, or at a day that starts before the span's start whether
days start at 00:00 UTC or 00:00 KST (15:00 UTC).

Same key as the WebSocket rows of ``api = "v2"`` (the current stream, parsed by Upbit's code):
``sequential_id`` and the ms ``timestamp`` ("체결 타임스탬프", as the WebSocket's
``trade_timestamp``). NOT for ``api = "legacy"`` (connection context ``legacy``): its rows carry
no trade id, and ours is a hash of the frame's fields, among them ``contDtm`` in microseconds
(:mod:`common.venues.bithumb`); no REST row carries those, so a legacy span is refused before
any request (``cannot``) instead of storing the same trades again under other keys.
"""

from __future__ import annotations

from typing import ClassVar

from ..venues.bithumb import KST_OFFSET_S, LEGACY_CONTEXT
from ..venues.bithumb import VENUE as BITHUMB
from ..venues.upbit import Upbit
from .base import RateLimit, Span
from .upbit import PATH, UpbitHistory


class BithumbHistory(UpbitHistory):
    exchange = "bithumb"
    default_url = "https://api.bithumb.com"
    limit: ClassVar[RateLimit] = RateLimit(units=30, per_s=1.0)
    reach = (
        "the current day and the 7 before it (daysAgo 1..7), 500 trades a request; "
        "feeds of api = 'v2' only"
    )

    venue: ClassVar[Upbit] = BITHUMB
    days_param: ClassVar[str] = "daysAgo"
    # Undocumented: UTC (as the answer's dates) or KST (as the candles); both are allowed for.
    day_offsets_ns: ClassVar[tuple[int, ...]] = (0, KST_OFFSET_S * 1_000_000_000)

    def cannot(self, span: Span) -> str | None:
        if span.context != LEGACY_CONTEXT:
            return None
        return (
            f"bithumb: {span.symbol}: rows of the legacy transaction stream have derived ids (a "
            f"hash of the frame's fields, contDtm in µs); {PATH} rows (sequential_id, ms times) "
            "cannot have the same keys"
        )


HISTORY = BithumbHistory()

__all__ = ["HISTORY", "BithumbHistory"]
