"""Bithumb as the simulator speaks it, both public streams on one server:

- ``/websocket/v1`` (api v2): Upbit's protocol (see :mod:`.upbit`) with Bithumb's differences:
  ``trade_date``/``trade_time`` in Korean time, SIMPLE key ``tdt`` for ``trade_date``, formats
  DEFAULT and SIMPLE. Frames go out as binary WebSocket frames, as Upbit's do (Bithumb's docs do
  not say; clients in the wild read them as binary).
- ``/pub/ws`` (legacy): text frames; ``{"status":"0000","resmsg":"Connected Successfully"}`` on
  connect; ``{"type":"transaction","symbols":["BTC_KRW"]}`` -> ``Filter Registered
  Successfully`` (or ``5100`` ``Invalid Filter Syntax``); trades batched in ``content.list`` with
  ``contDtm`` in Korean time to the microsecond. No best bid/ask stream (the venue parser supports
  trades only on legacy).

REST ``GET /v1/trades/ticks`` is Upbit's (see :mod:`.upbit`) with the parameter ``daysAgo``
(https://apidocs.bithumb.com/reference/최근-체결-내역) and days, and ``to``, in Korean time: the
docs do not say which zone they use, and the REST history must not depend on it.

``expected_trade_id`` is the v2 ``sequential_id``; legacy trades have derived ids instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import tzinfo
from decimal import Decimal
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from ...venues.base import Channel
from ..dialect import Frame, SimSession
from ..engine import SimQuote, SimTrade
from .upbit import TRADE_KEYS, UpbitDialect, clock, encode

KST = ZoneInfo("Asia/Seoul")
LEGACY_PATH = "/pub/ws"
LEGACY_TYPES = ("ticker", "transaction", "orderbookdepth", "orderbooksnapshot")
CONNECTED = {"status": "0000", "resmsg": "Connected Successfully"}
REGISTERED = {"status": "0000", "resmsg": "Filter Registered Successfully"}
INVALID = {"status": "5100", "resmsg": "Invalid Filter Syntax"}


class BithumbDialect(UpbitDialect):
    exchange = "bithumb"
    binary = False  # v2 frames are returned as bytes (binary); legacy frames as text
    trades_per_frame = 5  # legacy batches trades in content.list
    trade_keys: ClassVar[dict[str, str]] = {**TRADE_KEYS, "trade_date": "tdt"}
    zone: ClassVar[tzinfo] = KST  # "최근 거래 일자(KST)"
    rest_days_param: ClassVar[str] = "daysAgo"
    rest_day_offset_s: ClassVar[int] = 9 * 3_600  # KST (undocumented; see the module docstring)

    def accepts(self, path: str) -> bool:
        return path.split("?", 1)[0] in (self.path, LEGACY_PATH)

    @staticmethod
    def legacy(session: SimSession) -> bool:
        return session.path.split("?", 1)[0] == LEGACY_PATH

    def frame(self, session: SimSession, message: Any) -> Frame:
        return encode(message).encode()  # a bytes frame goes out as a binary frame

    def greeting(self, session: SimSession) -> list[Frame]:
        return [encode(CONNECTED)] if self.legacy(session) else []

    def on_message(self, session: SimSession, message: Frame) -> list[Frame]:
        if not self.legacy(session):
            return super().on_message(session, message)
        try:
            request = json.loads(message)
            kind, symbols = request["type"], request["symbols"]
            if kind not in LEGACY_TYPES or not isinstance(symbols, list) or not symbols:
                raise ValueError(kind)
            names = [str(s) for s in symbols]
        except (ValueError, KeyError, TypeError):
            return [encode(INVALID)]
        if kind == "transaction":
            for name in names:
                base, _, quote = name.partition("_")
                session.subscriptions[(Channel.TRADES, f"{base}-{quote}")] = kind
        return [encode(REGISTERED)]

    def request(self, session: SimSession, request: Any) -> list[Frame]:
        fmt = next(
            (x.get("format") for x in request if isinstance(x, dict) and "format" in x), None
        ) if isinstance(request, list) else None  # fmt: skip
        if fmt not in (None, "DEFAULT", "SIMPLE"):
            return [self.error(session, "INVALID_PARAM", f"format {fmt!r}")]
        return super().request(session, request)

    def trade_frames(self, session: SimSession, trades: Sequence[SimTrade]) -> list[Frame]:
        if not self.legacy(session):
            return super().trade_frames(session, trades)
        items = []
        for t in trades:
            at = clock(t.ts_ns, KST)
            micros = t.ts_ns % 1_000_000_000 // 1_000
            base, quote = t.symbol.split("-")[:2]
            items.append({
                "symbol": f"{base}_{quote}", "buySellGb": "2" if t.side == "buy" else "1",
                "contPrice": t.price, "contQty": t.amount,
                "contAmt": str(Decimal(t.price) * Decimal(t.amount)),
                "contDtm": f"{at:%Y-%m-%d %H:%M:%S}.{micros:06d}", "updn": "up",
            })  # fmt: skip
        return [encode({"type": "transaction", "content": {"list": items}})]

    def quote_frames(self, session: SimSession, quote: SimQuote) -> list[Frame]:
        if self.legacy(session):
            return []  # no best bid/ask on the legacy stream
        return super().quote_frames(session, quote)


DIALECT = BithumbDialect()
