"""Kraken spot (``kraken``): past trades from the public ``Trades`` endpoint.

Docs (official):
- Get Recent Trades, ``GET https://api.kraken.com/0/public/Trades?pair=&since=&count=``:
  https://docs.kraken.com/api/docs/rest-api/get-recent-trades ("Returns the last 1000 trades by
  default"; ``since`` "Return trade data since given timestamp"; ``count`` "Return specific
  number of trades, up to 1000", 1..1000). Answer ``{"error": [], "result": {"<pair>":
  [[<price>, <volume>, <time>, <buy/sell>, <market/limit>, <miscellaneous>, <trade_id>], ...],
  "last": "<ID to be used as since when polling for new trade data>"}}``.
- ``since`` is "a UNIX timestamp at nanosecond resolution" and the endpoint serves "the entire
  trading history of our markets" by paging forward with it:
  https://support.kraken.com/hc/en-us/articles/218198197 (How to retrieve historical time and
  sales). ``last`` is such a nanosecond timestamp (the docs' example: ``"1688671969993150842"``).
- Errors come in the ``error`` array ("HTTP status codes are generally not used by the API to
  indicate request success or failure"), e.g. ``["EQuery:Unknown asset pair"]``.
- Rate limit: "The Spot public endpoints are rate limited by IP address and currency pair for
  calls to Trades and OHLC ... Calling the public endpoints at a frequency of 1 per second (or
  less) would remain within the rate limits":
  https://support.kraken.com/hc/en-us/articles/206548367 (What are the API rate limits?).

Pair names: the request uses Kraken's REST name (``XBTUSD``: v1 asset codes, XBT for BTC); the
answer keys the trades by Kraken's internal name (``XXBTZUSD``), which is neither the request's
nor the WebSocket v2 name (``BTC/USD``): the one key besides ``last`` is taken, whatever it is.

Paging (by time, forwards): ``since`` starts 1 ms before the span's ``after_ns`` and then follows
``last`` minus 1 ns, so trades sharing ``last``'s timestamp (one taker order filling several
makers) are asked for again rather than skipped, whichever way the venue bounds ``since``; the
repeats are dropped by id in the shell. Paging stops at the span's last id (or end time), at a
short page (the present), or when ``last`` does not move.

KEYS DO NOT MATCH THE WEBSOCKET EXACTLY: REST ``time`` is a JSON float of seconds (the docs'
example ``1688669597.8277369``: seven decimals, more than a microsecond-aligned time can print as
a shortest float repr, so Kraken's engine clock is finer than a microsecond, as ``last``'s
nanoseconds also show), while WebSocket v2 ``timestamp`` is RFC 3339 with microseconds. A float64
near 1.7e9 s is only good to about 0.24 µs, and whether the WebSocket truncates or rounds the
engine time to the microsecond is not documented, so no conversion recovers the WebSocket's
microsecond exactly. Here the REST time's exact decimal text becomes ns (no float on the way):
the row's ``ts_ns`` is within about a microsecond of the WebSocket's for the same ``trade_id``
but, in general, not equal to it. Everything else is equal: symbol, ``trade_id`` (Kraken's
per-book sequence number), taker side, and price and amount (REST pads them with zeros to the
pair's decimals, ``"30243.40000"``, where WebSocket v2 numbers carry none, ``30243.4``: the
padding is trimmed, which keeps the value).
"""

from __future__ import annotations

import re
from typing import ClassVar

import msgspec

from ..records import Trade
from ..symbols import ASSET_ALIASES, parse_symbol
from ..venues.base import DECODE_ERRORS
from ..venues.kraken import _decimal
from .base import BadAnswer, Page, RateLimit, Request, Span, TradeHistory

COUNT = 1000  # trades per request: the documented maximum
TRADES_PATH = "/0/public/Trades"
SINCE_MARGIN_NS = 1_000_000  # the first ``since`` is this much before the span's start
_NS = 1_000_000_000
_TIME = re.compile(r"(0|[1-9][0-9]{0,11})(?:\.([0-9]{1,18}))?")  # plain seconds[.fraction]
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_SIDES = {"b": "buy", "s": "sell"}  # "<buy/sell>": the taker's side, as on the WebSocket
_V1 = {canonical: venue for venue, canonical in ASSET_ALIASES.items()}  # BTC -> XBT


class WireTrade(msgspec.Struct, array_like=True, frozen=True):
    """``[<price>, <volume>, <time>, <buy/sell>, <market/limit>, <miscellaneous>, <trade_id>]``
    (trailing elements a later API version may add are ignored)."""

    price: str
    volume: str
    time: msgspec.Raw  # a JSON number of seconds: kept as text
    side: str
    ord_type: str
    misc: str
    trade_id: int


class _Answer(msgspec.Struct, frozen=True):
    error: list[str]
    result: dict[str, msgspec.Raw] | None = None


_answer = msgspec.json.Decoder(_Answer)
_trades = msgspec.json.Decoder(list[WireTrade])
_last = msgspec.json.Decoder(str | int)


def rest_pair(symbol: str) -> str:
    """Kraken's REST name of a canonical spot symbol: ``BTC-USD`` -> ``XBTUSD``."""
    parsed = parse_symbol(symbol)
    return _V1.get(parsed.base, parsed.base) + _V1.get(parsed.quote, parsed.quote)


def seconds_ns(text: str) -> int:
    """Decimal seconds text (``1688669597.8277369``) as int ns, exactly (digits past the
    nanosecond are dropped).

    Raises:
        ValueError: not plain ``seconds[.fraction]`` text.
    """
    m = _TIME.fullmatch(text)
    if m is None:
        raise ValueError(f"not a time in seconds: {text!r}")
    fraction = (m.group(2) or "")[:9].ljust(9, "0")
    return int(m.group(1)) * _NS + int(fraction)


def trim(text: str, name: str) -> str:
    """A REST decimal without its zero padding (``30243.40000`` -> ``30243.4``), the way
    WebSocket v2 numbers come; ValueError when ``text`` is not a plain decimal."""
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"{name} is not a decimal: {text!r}")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _since(request: Request) -> int:
    return int(dict(request.params)["since"])


class KrakenHistory(TradeHistory):
    exchange: ClassVar[str] = "kraken"
    default_url: ClassVar[str] = "https://api.kraken.com"
    limit: ClassVar[RateLimit] = RateLimit(units=1, per_s=1.0)  # "1 per second (or less)"
    reach: ClassVar[str] = "all history (forward by time from since, ns; 1000 trades a request)"

    def first(self, span: Span) -> Request:
        return self._request(span.symbol, max(0, span.after_ns - SINCE_MARGIN_NS))

    @staticmethod
    def _request(symbol: str, since_ns: int) -> Request:
        params = (("pair", rest_pair(symbol)), ("since", str(since_ns)), ("count", str(COUNT)))
        return Request(TRADES_PATH, params)

    def page(self, span: Span, request: Request, body: bytes, recv_ns: int) -> Page:
        trades, last = self._decode(span, body, recv_ns)
        since = _since(request)
        if not trades:
            return Page([], None)
        short = None
        ids = [int(t.trade_id) for t in trades]
        if span.by_id:
            assert span.first_id is not None and span.last_id is not None
            if since == _since(self.first(span)) and min(ids) > span.first_id:
                short = (
                    f"the venue's first trade after since={since} is {min(ids)}: trades "
                    f"{span.first_id}..{min(ids) - 1} are not served"
                )
            done = max(ids) >= span.last_id
        else:
            done = max(t.ts_ns for t in trades) >= span.before_ns
        if done or len(trades) < COUNT:  # the span is covered, or this is the present
            return Page(trades, None, short)
        next_since = last - 1  # ties with ``last`` are asked again (see the module docstring)
        if next_since <= since:
            return Page(trades, None, f"last={last} does not move past since={since}")
        return Page(trades, self._request(span.symbol, next_since), short)

    def _decode(self, span: Span, body: bytes, recv_ns: int) -> tuple[list[Trade], int]:
        try:
            answer = _answer.decode(body)
            if answer.error:
                raise BadAnswer(f"kraken: Trades error: {'; '.join(answer.error)}")
            if answer.result is None:
                raise BadAnswer("kraken: Trades answer without result")
            pairs = [key for key in answer.result if key != "last"]
            if len(pairs) != 1 or "last" not in answer.result:
                raise BadAnswer(f"kraken: Trades result keys {sorted(answer.result)}")
            wires = _trades.decode(answer.result[pairs[0]])
            last = _last.decode(answer.result["last"])
            if isinstance(last, str) and not (
                last.isascii() and last.isdigit() and len(last) <= 19
            ):
                raise ValueError(f"last is not a timestamp: {last!r}")
        except (*DECODE_ERRORS, msgspec.ValidationError, ValueError) as exc:
            raise BadAnswer(f"kraken: unreadable Trades answer: {exc}") from None
        try:
            trades = [self._trade(span, w, recv_ns) for w in wires]
        except ValueError as exc:
            raise BadAnswer(f"kraken: bad trade in Trades answer: {exc}") from None
        return trades, int(last)

    def _trade(self, span: Span, w: WireTrade, recv_ns: int) -> Trade:
        if w.trade_id < 0:
            raise ValueError(f"trade_id {w.trade_id}")
        return Trade(
            exchange=self.exchange,
            symbol=span.symbol,  # the answer's key is Kraken's internal pair name
            trade_id=str(w.trade_id),
            price=trim(w.price, "price"),
            amount=trim(w.volume, "volume"),
            side=_SIDES.get(w.side),
            ts_ns=seconds_ns(_decimal(w.time, "time")),
            recv_ns=recv_ns,
        )


HISTORY = KrakenHistory()
