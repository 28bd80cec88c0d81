"""Bithumb (``bithumb``): two public WebSocket APIs, chosen per feed with ``options.api``.

``api = "v2"`` (default): the current public stream, Upbit-compatible.
Docs: https://apidocs.bithumb.com/reference/기본-정보 (endpoint, limits),
https://apidocs.bithumb.com/v2.1.5/reference/체결-trade, https://apidocs.bithumb.com/v2.1.5/reference/호가-orderbook,
https://apidocs.bithumb.com/reference/연결-관리 (keepalive).
- ``wss://ws-api.bithumb.com/websocket/v1``; the request is Upbit's JSON array
  (``ticket`` / ``type`` + ``codes`` / ``format`` DEFAULT or SIMPLE); codes are QUOTE-BASE
  (``KRW-BTC``). Parsing is Upbit's (:class:`~common.venues.upbit.Upbit`), with what differs:
  ``trade_date``/``trade_time`` are KST strings in formats that differ between pages
  (``20240910``/``091617`` on ticker, ``2024-09-10``/``09:58:54`` on trade), so only the epoch
  fields are used: ``trade_timestamp`` (ms) and the orderbook ``timestamp`` (ms as a JSON number,
  as documented; µs as a JSON string, as recorded frames show it: see ``book_time_ns``; the
  unit is never guessed from the size); ``sequential_id`` may likewise come as a string.
- ``ask_bid``: "ASK: 매도, BID: 매수", stored as the taker side as on Upbit.
- Keepalive as Upbit: "약 120초가 경과하면 Idle Timeout"; protocol PING frames are answered and a
  text ``PING`` gets ``{"status":"UP"}`` every 10 s. Limit: 10 connection requests/s per IP
  (429 beyond; repeated excess blocks the IP for 10 minutes).

``api = "legacy"``: the older stream, trades only.
Docs: https://apidocs.bithumb.com/v1.2.0/reference/빗썸-거래소-정보-수신
- ``wss://pubwss.bithumb.com/pub/ws``; on connect ``{"status":"0000","resmsg":"Connected
  Successfully"}``; subscribe ``{"type":"transaction","symbols":["BTC_KRW"]}``; ack
  ``{"status":"0000","resmsg":"Filter Registered Successfully"}``; error ``{"status":"5100",...}``.
- ``transaction`` frames batch trades in ``content.list``: ``buySellGb`` "체결종류(1:매도체결,
  2:매수체결)" (a fill made by a sell / buy order: the taker side), ``contPrice``, ``contQty``
  (strings), ``contDtm`` ("2020-01-29 12:24:18.830039", Korean Standard Time: UTC+9, without
  daylight saving since 1988; converted by integer arithmetic, microseconds kept), ``symbol``
  ``BTC_KRW``.
- No trade id: ours is a hash of the item's fields and its occurrence number among identical items
  in the frame, so a redelivered (or re-batched) frame yields the same ids.
- Best bid/ask: ``orderbookdepth`` sends level deltas with no snapshot to apply them to, and the
  ``orderbooksnapshot`` reply format is not documented, so quotes need ``api = "v2"``.
- Keepalive undocumented: protocol pings; no heartbeat, so the silence watchdog derives its
  threshold from the feed's own pace (quiet markets send nothing for long: ``producer.liveness``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from hashlib import blake2b
from typing import ClassVar

import msgspec

from ..errors import PoisonFrame
from ..records import Trade
from ..symbols import Symbol, canonical_asset
from .base import (
    DECODE_ERRORS,
    Channel,
    ConnectionPlan,
    FrameContext,
    Keepalive,
    Parsed,
    chunks,
    civil_seconds,
    decode_error,
    epoch_int,
)
from .upbit import Head, Upbit

KST_OFFSET_S = 9 * 3_600  # Korea Standard Time, UTC+9
LEGACY_URL = "wss://pubwss.bithumb.com"
LEGACY_PATH = "/pub/ws"
LEGACY_CONTEXT = "legacy"
LEGACY_SYMBOLS_PER_CONNECTION = 100  # our own budget: no documented cap

_DTM = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?", re.ASCII)
_DECIMAL = re.compile(r"-?\d+(?:\.\d+)?", re.ASCII)
# "체결종류(1:매도체결, 2:매수체결)": the side of the order that made the fill.
_LEGACY_SIDES = {"1": "sell", "2": "buy"}


class _LegacyStatus(msgspec.Struct, frozen=True):
    status: str
    resmsg: str | None = None


class WireTransaction(msgspec.Struct, frozen=True):
    """One item of a legacy ``transaction`` frame's ``content.list``."""

    symbol: str
    buySellGb: str
    contPrice: str
    contQty: str
    contDtm: str
    contAmt: str | None = None
    updn: str | None = None


class _TransactionContent(msgspec.Struct, frozen=True):
    items: list[WireTransaction] = msgspec.field(name="list")


class _TransactionFrame(msgspec.Struct, frozen=True):
    content: _TransactionContent


_status = msgspec.json.Decoder(_LegacyStatus)
_transactions = msgspec.json.Decoder(_TransactionFrame)


def kst_ns(text: str) -> int:
    """``2020-01-29 12:24:18.830039`` in Korean time (UTC+9, no DST) as ns since the epoch, UTC."""
    m = _DTM.fullmatch(text)
    if m is None:
        raise ValueError(f"contDtm is not 'YYYY-MM-DD HH:MM:SS[.ffffff]': {text!r}")
    year, month, day, hour, minute, second, fraction = m.groups()
    seconds = civil_seconds(text, year, month, day, hour, minute, second) - KST_OFFSET_S
    return seconds * 1_000_000_000 + (int(fraction.ljust(9, "0")) if fraction else 0)


def _decimal(text: str, name: str) -> str:
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"{name} is not a decimal: {text!r}")
    return text


class Bithumb(Upbit):
    exchange = "bithumb"
    title = "Bithumb (KRW markets; v2 or legacy stream)"
    default_url = "wss://ws-api.bithumb.com"
    limits = "10 connects/s/IP (429, then a 10 min block); 120 s idle timeout"
    caveats = (
        "v2 (default): Upbit-style binary frames, QUOTE-BASE codes (KRW-BTC), quote update_id "
        "derived; legacy: trades only, no trade id (derived), times in KST"
    )
    options: ClassVar[dict[str, tuple[str, ...]]] = {
        "api": ("v2", "legacy"),
        "format": ("DEFAULT", "SIMPLE"),
    }
    path: ClassVar[str] = "/websocket/v1"
    ticket_prefix: ClassVar[str] = "tickvault-bithumb"

    def legacy_symbol(self, symbol: Symbol) -> str:
        return f"{symbol.base}_{symbol.quote}"

    def canonical(self, code: str, ctx: FrameContext) -> str:
        if "_" in code and code not in ctx.symbols:
            base, _, quote = code.partition("_")  # legacy BTC_KRW
            return f"{canonical_asset(base)}-{canonical_asset(quote)}"
        return super().canonical(code, ctx)

    # -- plan ----------------------------------------------------------------------------------
    def plan(
        self,
        *,
        channels: Sequence[Channel],
        symbols: Sequence[Symbol],
        url: str | None,
        options: dict[str, str],
    ) -> list[ConnectionPlan]:
        if options.get("api", "v2") != "legacy":
            return super().plan(channels=channels, symbols=symbols, url=url, options=options)
        if Channel.QUOTES in channels:
            raise ValueError(
                "bithumb's legacy stream has no best bid/ask (orderbookdepth sends deltas only): "
                "use options.api = 'v2' for quotes"
            )
        base = (url or LEGACY_URL).rstrip("/")
        plans = []
        names = [str(s) for s in symbols]
        for n, group in enumerate(chunks(names, LEGACY_SYMBOLS_PER_CONNECTION)):
            members = set(group)
            venue_names = [self.legacy_symbol(s) for s in symbols if str(s) in members]
            request = {"type": "transaction", "symbols": venue_names}
            plans.append(
                ConnectionPlan(
                    url=f"{base}{LEGACY_PATH}",
                    subscribe=(msgspec.json.encode(request).decode(),),
                    symbols=tuple(group),
                    channels=(Channel.TRADES,),
                    context=LEGACY_CONTEXT,
                    # No documented heartbeat (silence_s=None): the silence threshold is derived
                    # from the feed's own rate (producer.liveness); quiet markets send nothing.
                    keepalive=Keepalive(protocol_ping_s=30.0, silence_s=None),
                    name=f"{self.exchange}/{LEGACY_CONTEXT}/{n}",
                )
            )
        return plans

    # -- parse ---------------------------------------------------------------------------------
    def parse_untyped(self, head: Head, frame: bytes) -> Parsed:
        if head.status is not None and head.status != "UP":
            try:
                status = _status.decode(frame)
            except msgspec.ValidationError as exc:
                raise PoisonFrame(f"{self.exchange}: bad status frame: {exc}") from None
            except DECODE_ERRORS as exc:  # e.g. invalid UTF-8 in resmsg, which the head skipped
                raise decode_error(self.exchange, exc) from None
            if status.status != "0000":
                return Parsed.of_control("error")  # 5100 "Invalid Filter Syntax", ...
            if status.resmsg == "Connected Successfully":
                return Parsed.of_control("connected")
            return Parsed.of_control("ack")  # "Filter Registered Successfully"
        return super().parse_untyped(head, frame)

    def parse_other(self, kind: str, frame: bytes, ctx: FrameContext) -> Parsed:
        if kind != "transaction":
            return super().parse_other(kind, frame, ctx)
        try:
            items = _transactions.decode(frame).content.items
            return Parsed(trades=self._transactions(items, ctx))
        except (msgspec.ValidationError, ValueError) as exc:
            raise PoisonFrame(f"{self.exchange}: bad transaction message: {exc}") from None
        except DECODE_ERRORS as exc:
            raise decode_error(self.exchange, exc) from None

    def book_time_ns(self, stamp: int | str) -> int:
        """The orderbook ``timestamp`` as ns. The v2.1.5 orderbook page documents it as Long ms;
        recorded frames quoted by client libraries carry it as a JSON STRING of µs
        (tests/fixtures/bithumb/README.md), as Bithumb's REST orderbook returned µs for a single
        market until 2025-11-11 ("호가 정보 조회 API Timestamp 단위(ms) 일원화 안내",
        https://apidocs.bithumb.com/changelog/업데이트-호가-정보-조회-timestamp-포맷-일원화).
        So the unit follows the JSON type, never the size: a number is ms, a string µs."""
        value = epoch_int(stamp, "timestamp")
        if value <= 0:
            raise ValueError(f"timestamp is not a positive epoch number: {value}")
        return value * 1_000 if isinstance(stamp, str) else value * 1_000_000

    def _transactions(self, items: Sequence[WireTransaction], ctx: FrameContext) -> list[Trade]:
        trades = []
        seen: dict[str, int] = {}
        for t in items:
            key = "|".join((t.symbol, t.buySellGb, t.contPrice, t.contQty, t.contDtm))
            occurrence = seen.get(key, 0)
            seen[key] = occurrence + 1
            trades.append(
                Trade(
                    exchange=self.exchange,
                    symbol=self.canonical(t.symbol, ctx),
                    trade_id=blake2b(f"{key}|{occurrence}".encode(), digest_size=10).hexdigest(),
                    price=_decimal(t.contPrice, "contPrice"),
                    amount=_decimal(t.contQty, "contQty"),
                    side=_LEGACY_SIDES.get(t.buySellGb),
                    ts_ns=kst_ns(t.contDtm),
                    recv_ns=ctx.recv_ns,
                )
            )
        return trades


VENUE = Bithumb()
