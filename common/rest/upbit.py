"""Upbit past trades: ``GET /v1/trades/ticks``, one UTC day at a time, newest first.

Docs: https://docs.upbit.com/kr/reference/list-pair-trades ("페어 체결 이력 조회"),
https://docs.upbit.com/kr/reference/rate-limits.
- ``market`` (``KRW-BTC``); ``count``: "최대 500개 조회를 지원하며 기본 값은 1"; ``cursor``: a
  ``sequential_id`` of an answer, "해당 체결 직전 데이터부터 count개의 이전 체결 이력을 이어서
  조회"; ``days_ago``: "체결 내역은 체결 일을 지정하여 조회해야 하며 최대 7일의 조회 기간을
  지원합니다. 일자 구분은 UTC를 기준" ("1 이상 7 이하 ... 빈 값으로 입력할 경우, 요청 일자에 발생한
  체결 목록"), days before the request date; ``to``: "조회 대상 일자 내 조회 기간의 종료 시각(UTC)",
  ``HHmmss``, "days_ago=1&to=130000 ... 1일 전(어제) UTC 기준 오후 1시 정각 이전 체결 이력을
  최신순으로 반환". Every list is newest first ("시간 역순(최신 체결 순)").
- Answer: a JSON array of ``{market, trade_date_utc, trade_time_utc, timestamp, trade_price,
  trade_volume, prev_closing_price, change_price, ask_bid, sequential_id}``. ``timestamp`` is
  "체결 타임스탬프", the label the WebSocket page gives ``trade_timestamp`` ("체결 타임스탬프(ms)",
  https://docs.upbit.com/kr/reference/websocket-trade), the field the WebSocket rows are stamped
  with; ``sequential_id`` "체결 번호(Unique)", "체결의 순서를 보장하지는 못합니다".
- Rate limit: "초당 최대 10회 호출할 수 있습니다. IP 단위로 측정되며 [체결 그룹] 내에서 요청 가능
  횟수를 공유합니다"; beyond it 429, and repeated excess gets 418 and an IP block. We keep to 8 a
  second (the group is shared with anything else on this IP).
- Errors: a 4xx status with ``{"error": {"name": ..., "message": ...}}`` (the default
  ``refusal``: final, reason kept).

Paging (time spans, both ends included: ``sequential_id`` is unique, not consecutive): the first
request asks for the current day up to ``to`` = the second after the span's end (Upbit's ``to``
has seconds); an answer from a UTC day after the span's last day jumps there (``days_ago``
counted from the day the answer came from, not from our clock, plus ``to``). Inside a day the
next request is the ``cursor`` of the answer's last (oldest) row; an empty answer means the day
is listed to its start, and the day before comes next (``days_ago + 1``). Paging stops once a
page reaches past the span's start (a trade before ``after_ns``) or a day that starts at or
before it. Beyond ``days_ago`` 7 the rest of the span is out of reach (``Page.short``). The
venue's date comes from its rows; only an empty answer makes our clock stand in for it, read so
that a minute of skew around midnight costs a day listed twice, never a day skipped (at
``days_ago`` 7, where no day is left to list, it is read as it is).

Same key as the WebSocket rows: each row becomes the :class:`~common.records.Trade` the
WebSocket parser (:class:`~common.venues.upbit.Upbit`) makes of the same trade, through its own
helpers: ``trade_id`` is ``str(sequential_id)``, ``ts_ns`` the ms ``timestamp`` x 10^6 (the
WebSocket's ``trade_timestamp``, same unit), prices and volumes the exact JSON number text
(``number``), the taker side from ``ask_bid``, the symbol through ``Upbit.canonical``.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from ..records import Trade
from ..symbols import parse_symbol
from ..venues.base import DECODE_ERRORS, FrameContext
from ..venues.upbit import VENUE as UPBIT
from ..venues.upbit import Upbit, epoch_ms_ns, number
from .base import BadAnswer, Page, RateLimit, Request, Span, TradeHistory

PATH = "/v1/trades/ticks"
PAGE_SIZE = 500  # "최대 500개 조회를 지원"
S_NS = 1_000_000_000
DAY_NS = 86_400 * S_NS
# The venue's date is read from its answers; where an answer is empty our clock stands in, and it
# may be off by this much near midnight: each use leans the safe way (list a day more, not less).
CLOCK_SLACK_NS = 60 * S_NS


class WireTick(msgspec.Struct, frozen=True):
    """One row of ``/v1/trades/ticks`` (the fields a Trade needs; the rest is ignored)."""

    market: str
    timestamp: int | str
    trade_price: msgspec.Raw
    trade_volume: msgspec.Raw
    ask_bid: str
    sequential_id: int | str


_ticks = msgspec.json.Decoder(list[WireTick])


def day_of(ts_ns: int, offset_ns: int) -> int:
    """The number of the venue day holding ``ts_ns``, days starting at UTC midnight - offset."""
    return (ts_ns + offset_ns) // DAY_NS


def day_start_ns(day: int, offset_ns: int) -> int:
    return day * DAY_NS - offset_ns


class UpbitHistory(TradeHistory):
    exchange = "upbit"
    default_url = "https://api.upbit.com"
    limit: ClassVar[RateLimit] = RateLimit(units=8, per_s=1.0)
    reach = "the current UTC day and the 7 before it (days_ago 1..7), 500 trades a request"

    venue: ClassVar[Upbit] = UPBIT
    days_param: ClassVar[str] = "days_ago"
    max_days_ago: ClassVar[int] = 7
    # Where the venue's days start, as offsets east of UTC. One documented offset lets paging
    # jump to the span's day and time (``days_ago`` + ``to``); several (undocumented) make it
    # walk back day by day from the present and stop only where every candidate agrees.
    day_offsets_ns: ClassVar[tuple[int, ...]] = (0,)  # "일자 구분은 UTC를 기준"

    @property
    def seeks(self) -> bool:
        return len(self.day_offsets_ns) == 1

    # -- requests ------------------------------------------------------------------------------
    def market(self, span: Span) -> str:
        return self.venue.venue_symbol(parse_symbol(span.symbol))

    def request(
        self,
        span: Span,
        days: int,
        *,
        to: str | None = None,
        cursor: str | None = None,
        count: int = PAGE_SIZE,
    ) -> Request:
        params = [("market", self.market(span)), ("count", str(count))]
        if to is not None:
            params.append(("to", to))
        if cursor is not None:
            params.append(("cursor", cursor))
        if days:
            params.append((self.days_param, str(days)))
        return Request(PATH, tuple(params))

    def to_param(self, span: Span, day: int) -> str | None:
        """``to`` for the trades of venue day ``day`` up to ``span.before_ns`` included: the
        second after it, so no trade of its second is cut (None: the whole day)."""
        seconds = (span.before_ns - day_start_ns(day, self.day_offsets_ns[0])) // S_NS + 1
        if seconds >= 86_400:
            return None
        return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"

    def first(self, span: Span) -> Request:
        if not self.seeks:
            return self.request(span, 0)
        # The span most often ends today: ask for today up to its end (an answer from a later day
        # than the span's makes ``page`` jump back).
        end = day_of(span.before_ns, self.day_offsets_ns[0])
        return self.request(span, 0, to=self.to_param(span, end))

    # -- answers -------------------------------------------------------------------------------
    def page(self, span: Span, request: Request, body: bytes, recv_ns: int) -> Page:
        why = self.cannot(span)
        if why is not None:  # fetch_span asks ``cannot`` first; a direct caller gets this
            return Page([], None, short=why)
        rows = self._decode(body)
        trades = self._trades(span, rows, recv_ns)
        asked = dict(request.params)
        days = int(asked.get(self.days_param, "0"))
        if self.seeks and "cursor" not in asked:
            seek = self._seek(span, request, days, trades, recv_ns)
            if seek is not None:
                return seek
        if trades and min(t.ts_ns for t in trades) < span.after_ns:
            return Page(trades, None)  # reached past the span's start
        if trades:  # the day goes on past the oldest row
            return Page(trades, self.request(span, days, cursor=str(rows[-1].sequential_id)))
        # An empty answer: the day is listed to its start.
        if days >= self.max_days_ago:  # no day before it: our clock as it is decides
            if self._day_starts_by_span_start(span, days, recv_ns, slack_ns=0):
                return Page([], None)
            return Page([], None, short=self._too_old(span))
        if self._day_starts_by_span_start(span, days, recv_ns, slack_ns=CLOCK_SLACK_NS):
            return Page([], None)
        return Page([], self.request(span, days + 1))

    def _seek(
        self, span: Span, request: Request, days: int, trades: list[Trade], recv_ns: int
    ) -> Page | None:
        """The request for the span's last day when the answer came from another day (or from
        the right day, cut by a ``to`` meant for another); None to go on with this answer."""
        offset = self.day_offsets_ns[0]
        end = day_of(span.before_ns, offset)
        if trades:
            served = day_of(max(t.ts_ns for t in trades), offset)
        elif days:  # an empty day we jumped to: it is the day asked for (the venue's date)
            return None
        else:  # an empty today, no date in the answer: our clock, read early (never too far)
            served = day_of(recv_ns - CLOCK_SLACK_NS, offset)
        if served == end or (served < end and "to" not in dict(request.params)):
            return None
        target = served + days - end  # days from the venue's date back to the span's last day
        if target > self.max_days_ago:
            return Page(trades, None, short=self._too_old(span))
        if target < 0:  # the span ends after the venue's today: all of today
            nxt = self.request(span, 0)
        else:
            nxt = self.request(span, target, to=self.to_param(span, end))
        return None if nxt == request else Page(trades, nxt)

    def _day_starts_by_span_start(
        self, span: Span, days: int, recv_ns: int, *, slack_ns: int
    ) -> bool:
        """Whether the day listed with ``days`` starts at or before the span's start (for every
        candidate day boundary; our clock read ``slack_ns`` late, so no day too early): every
        older trade is then before the span."""
        return all(
            day_start_ns(day_of(recv_ns + slack_ns, off) - days, off) <= span.after_ns
            for off in self.day_offsets_ns
        )

    def _too_old(self, span: Span) -> str:
        return (
            f"{self.exchange}: {self.market(span)}: {PATH} serves {self.reach}; "
            "the span starts before that"
        )

    def _decode(self, body: bytes) -> list[WireTick]:
        try:
            return _ticks.decode(body)
        except (*DECODE_ERRORS, msgspec.ValidationError) as exc:
            raise BadAnswer(f"{self.exchange}: unreadable {PATH} answer: {exc}") from None

    def _trades(self, span: Span, rows: list[WireTick], recv_ns: int) -> list[Trade]:
        code = self.market(span)
        ctx = self.frame_context(span, recv_ns, code)
        trades = []
        for row in rows:
            if row.market != code:
                raise BadAnswer(
                    f"{self.exchange}: asked for {code}, got a trade of {row.market[:40]!r}"
                )
            try:
                trades.append(self.trade(row, ctx))
            except ValueError as exc:
                raise BadAnswer(f"{self.exchange}: bad {PATH} row: {exc}") from None
        return trades

    def trade(self, row: WireTick, ctx: FrameContext) -> Trade:
        """The row as the WebSocket parser (``Upbit._trade``) makes the same trade."""
        trade_id = str(row.sequential_id)
        if not trade_id:
            raise ValueError("empty sequential_id")
        return Trade(
            exchange=self.exchange,
            symbol=self.venue.canonical(row.market, ctx),
            trade_id=trade_id,
            price=number(row.trade_price, "trade_price"),
            amount=number(row.trade_volume, "trade_volume"),
            side=self.venue.sides.get(row.ask_bid),
            ts_ns=epoch_ms_ns(row.timestamp, "timestamp"),
            recv_ns=ctx.recv_ns,
        )


HISTORY = UpbitHistory()

__all__ = ["HISTORY", "PAGE_SIZE", "PATH", "UpbitHistory", "WireTick"]
