# mypy: allow-subclassing-any
"""cryptofeed's Binance feed (TRADES) writing with its ``TradePostgres`` backend: the peer that
``make bench`` measures tickvault against. Run by ``bench.peer`` with the peer venv's python
(``.venv-peer``, cryptofeed 2.4.1); it imports nothing of tickvault.

Everything is cryptofeed's public classes with their defaults (uvloop, the backend in-process,
``numeric_type=float``), adapted to run offline against the local simulator:

- symbols: ``Exchange.__init__`` reads ``/api/v3/exchangeInfo`` over REST unless the symbol
  table is already populated; we populate it with ``Symbols.set`` from a minimal exchangeInfo
  document (the fields ``Binance._parse_symbol_data`` reads), so no REST call is made;
- address: ``WSAsyncConn`` only accepts ``wss://`` in its constructor, so ``connect()`` moves
  each connection to the simulator after construction, keeping cryptofeed's own path and query
  (``/stream?streams=btcusdt@aggTrade``: a combined stream, no SUBSCRIBE message);
- ``retries=0, timeout=-1``: no reconnect (a second connection would be a second feed), and no
  restart while the simulator holds the trades back before the bench says go;
- cryptofeed 2.4.1's ``FeedHandler.run()`` calls ``asyncio.get_event_loop()``, which uvloop
  0.22+'s policy no longer answers without a loop set: we set one first.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptofeed import FeedHandler  # type: ignore[import-not-found, import-untyped, unused-ignore]
from cryptofeed.backends.postgres import TradePostgres  # type: ignore[import-not-found, import-untyped, unused-ignore]
from cryptofeed.connection import WSAsyncConn  # type: ignore[import-not-found, import-untyped, unused-ignore]
from cryptofeed.defines import TRADES  # type: ignore[import-not-found, import-untyped, unused-ignore]
from cryptofeed.exchanges import Binance  # type: ignore[import-not-found, import-untyped, unused-ignore]
from cryptofeed.symbols import Symbols  # type: ignore[import-not-found, import-untyped, unused-ignore]


def exchange_info(symbol: str, tick_size: str = "0.01") -> dict[str, Any]:
    """A Binance ``/api/v3/exchangeInfo`` answer listing one spot symbol (``BTC-USDT``)."""
    base, quote = symbol.split("-")
    price_filter = {"filterType": "PRICE_FILTER", "minPrice": tick_size,
                    "maxPrice": "1000000.00", "tickSize": tick_size}  # fmt: skip
    entry = {"symbol": base + quote, "status": "TRADING", "baseAsset": base,
             "quoteAsset": quote, "filters": [price_filter]}  # fmt: skip
    return {"timezone": "UTC", "serverTime": 0, "symbols": [entry]}


def rebase(address: str, base: str) -> str:
    """``address`` with the scheme and host of ``base``: ``wss://stream.binance.com:9443/stream?
    streams=x`` on ``ws://127.0.0.1:9001`` is ``ws://127.0.0.1:9001/stream?streams=x``."""
    old, new = urlsplit(address), urlsplit(base)
    return urlunsplit((new.scheme, new.netloc, old.path, old.query, old.fragment))


class LocalBinance(Binance):
    """cryptofeed's Binance feed, its connections pointed at ``local_base``."""

    local_base = ""

    def connect(self) -> list[Any]:
        conns: list[Any] = super().connect()
        for conn, *_ in conns:
            if isinstance(conn, WSAsyncConn):
                conn.address = rebase(conn.address, self.local_base)
        return conns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ws", required=True, help="the simulator, ws://127.0.0.1:PORT")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--dbname", default="postgres")  # the password, if any: PGPASSWORD
    parser.add_argument("--table", required=True)
    parser.add_argument("--symbol", default="BTC-USDT")
    parser.add_argument("--log", default="feedhandler.log")
    args = parser.parse_args()

    Symbols.set(Binance.id, *Binance._parse_symbol_data(exchange_info(args.symbol)))
    LocalBinance.local_base = args.ws
    # A dict replaces cryptofeed's whole default config (its missing keys read as empty, i.e.
    # false), so uvloop, on by default, is named.
    config = {"uvloop": True, "log": {"filename": args.log, "level": "WARNING"}}
    handler = FeedHandler(config=config)
    sink = TradePostgres(
        host=args.host, port=args.port, user=args.user, db=args.dbname, table=args.table
    )
    feed = LocalBinance(
        symbols=[args.symbol], channels=[TRADES], callbacks={TRADES: sink}, retries=0, timeout=-1
    )
    handler.add_feed(feed)
    asyncio.set_event_loop(asyncio.new_event_loop())  # a uvloop loop: the policy is set
    print("peer collector: running", flush=True)
    handler.run()


if __name__ == "__main__":
    main()
