"""Binance USD-M futures (``binance-futures``): ``<sym>@aggTrade`` and ``<sym>@bookTicker``.

Docs: https://developers.binance.com/docs/derivatives/usds-margined-futures/websocket-market-streams
- Since 2026 the streams are routed by data type (announcement of 2026-03-06; the unrouted
  legacy URLs were retired on 2026-04-23): ``wss://fstream.binance.com/market`` carries "regular
  market data" such as ``@aggTrade``, ``wss://fstream.binance.com/public`` the "high-frequency
  public market data" such as ``@bookTicker`` and ``@depth``. "Connections that do not include a
  routed path ... will only receive data from the Public endpoint. Streams belonging to /market
  ... will not push data on unrouted connections": a stream on the wrong route fails silently.
  So trades and quotes never share a connection: one plan per route, each on the combined
  ``/stream`` path with SUBSCRIBE requests (events arrive as ``{"stream": ..., "data": ...}``).
- "The websocket server will send a ping frame every 3 minutes. If the websocket server does not
  receive a pong frame back from the connection within a 10 minute period, the connection will be
  disconnected"; the websockets library answers pings by itself.
- "A single connection is only valid for 24 hours": the producer rolls over before that.
- "WebSocket connections have a limit of 10 incoming messages per second" (pings, pongs and
  SUBSCRIBE requests count). "A single connection can listen to a maximum of 1024 streams" on
  some versions of the page, 200 on others: we budget 200.
- Aggregate trades: "aggregated for fills with same price and taking side every 100
  milliseconds"; ``a`` is the aggregate trade id (consecutive per symbol), kept as the plain id:
  this venue subscribes no other trade stream, so there is no id space to keep apart (spot
  prefixes ``agg-``). ``m`` "Is the buyer the market maker?": true means the seller took.
  https://developers.binance.com/docs/derivatives/usds-margined-futures/websocket-market-streams/Aggregate-Trade-Streams
- ``bookTicker`` carries ``E`` (event time) and ``T`` (transaction time, our quote ts) and ``u``,
  the order book update id (our quote key).
  https://developers.binance.com/docs/derivatives/usds-margined-futures/websocket-market-streams/Individual-Symbol-Book-Ticker-Streams
- Symbols: ``BTCUSDT`` is the perpetual (canonical ``BTC-USDT-PERP``); quarterly delivery
  contracts are ``BTCUSDT_250627`` (canonical ``BTC-USDT-250627``). Times are milliseconds
  (USD-M documents no ``timeUnit`` switch).

Parsing is the spot module's (:class:`~common.venues.binance.Binance`); this class changes the
symbols, the trade time unit, the aggTrade id prefix and the connection plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import msgspec

from ..symbols import Kind, Symbol
from .base import (
    Channel,
    ConnectionPlan,
    FrameContext,
    Keepalive,
    chunks,
    ms_to_ns,
    split_concatenated,
)
from .binance import Binance

STREAMS_PER_CONNECTION = 200  # the docs say 200 or 1024 depending on the page: budget the lower
PARAMS_PER_SUBSCRIBE = 200
SUBSCRIBE_INTERVAL_S = 0.25  # 4 messages/s, well under the 10/s incoming limit
LIFETIME_S = 23.5 * 3600  # Binance closes connections after 24 h

# channel -> (route, stream suffix); see the routing table in the module docstring.
ROUTES: dict[Channel, tuple[str, str]] = {
    Channel.TRADES: ("/market", "aggTrade"),
    Channel.QUOTES: ("/public", "bookTicker"),
}


class BinanceFutures(Binance):
    exchange = "binance-futures"
    title = "Binance USD-M futures"
    default_url = "wss://fstream.binance.com"
    kinds = frozenset({Kind.PERP, Kind.FUTURE})
    limits = "200 streams/conn (budget), 10 msgs/s in, 24 h per connection, ping every 3 min"
    caveats = (
        "streams are routed: aggTrade on /market, bookTicker on /public (one connection each); "
        "trades are aggregated per price and taker side (trade_id = aggregate id)"
    )
    options: ClassVar[dict[str, tuple[str, ...]]] = {}  # trades are always aggTrade
    agg_prefix = ""  # only aggTrade is subscribed here: the aggregate id is the trade id
    id_prefixes = ("",)

    def venue_symbol(self, symbol: Symbol) -> str:
        root = f"{symbol.base}{symbol.quote}"
        if symbol.kind is Kind.FUTURE:
            return f"{root}_{symbol.expiry}"
        return root

    def canonical(self, venue_symbol: str, ctx: FrameContext) -> str:
        known = ctx.symbols.get(venue_symbol)
        if known is not None:
            return known
        root, sep, expiry = venue_symbol.partition("_")
        try:
            base, quote = split_concatenated(root)
        except ValueError:
            return venue_symbol  # validation reports it as not subscribed
        if not sep:
            return f"{base}-{quote}-PERP"
        if len(expiry) == 6 and expiry.isdigit():
            return f"{base}-{quote}-{expiry}"
        return venue_symbol

    def plan(
        self,
        *,
        channels: Sequence[Channel],
        symbols: Sequence[Symbol],
        url: str | None,
        options: dict[str, str],
    ) -> list[ConnectionPlan]:
        base = self.base_url(url)
        by_name = {str(s): s for s in symbols}  # deduplicated, in the given order
        plans = []
        for channel in (Channel.TRADES, Channel.QUOTES):
            if channel not in channels:
                continue
            route, suffix = ROUTES[channel]
            for n, group in enumerate(chunks(list(by_name), STREAMS_PER_CONNECTION)):
                streams = [f"{self.venue_symbol(by_name[s]).lower()}@{suffix}" for s in group]
                messages = tuple(
                    msgspec.json.encode(
                        {"method": "SUBSCRIBE", "params": params, "id": i + 1}
                    ).decode()
                    for i, params in enumerate(chunks(streams, PARAMS_PER_SUBSCRIBE))
                )
                plans.append(
                    ConnectionPlan(
                        url=f"{base}{route}/stream",
                        subscribe=messages,
                        symbols=tuple(group),
                        channels=(channel,),
                        context="",
                        subscribe_interval_s=SUBSCRIBE_INTERVAL_S,
                        # The server pings every 3 min and waits 10 min for the pong; we also
                        # ping every 30 s so a dead TCP path shows up as a missing pong. No
                        # application heartbeat (silence_s=None): the silence threshold is
                        # derived from the feed's own rate (producer.liveness), since a quiet
                        # contract may have no trade for minutes.
                        keepalive=Keepalive(protocol_ping_s=30.0, silence_s=None),
                        max_lifetime_s=LIFETIME_S,
                        name=f"{self.exchange}{route}/{n}",
                    )
                )
        return plans

    def _time_ns(self, value: int, ctx: FrameContext) -> int:
        # USD-M times are always ms ("T": Trade time); no timeUnit switch is documented here.
        return ms_to_ns(value)


VENUE = BinanceFutures()
