"""OKX v5 as the simulator speaks it: ``/ws/v5/public`` and ``/ws/v5/business``, subscribe acks
per argument, text ``ping`` -> ``pong``, one ``trades`` message per trade (count 1).

REST: ``GET /api/v5/market/history-trades`` from the trade book, as documented at
https://www.okx.com/docs-v5/en/#order-book-trading-market-data-get-trades-history: ``type`` 1
(``after``/``before`` are trade ids) or 2 (``after`` is a time in ms; "Do not support timestamp
for pagination" for ``before``, which is then ignored), records strictly "earlier than" ``after``,
newest first, ``limit`` at most 100 (larger values are served as 100), times in ms. The reach is
"the last 3 months": here 90 days before the symbol's newest trade (the dialect has no clock).
A missing ``instId`` or a malformed number is OKX's ``{"code": "51000", "msg": "Parameter {param0}
error"}`` with HTTP 400 (https://www.okx.com/docs-v5/en/#error-code-rest-api-trade).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from ...venues.base import Channel
from ..dialect import Dialect, Frame, RestReply, SimSession
from ..engine import SimQuote, SimTrade, TradeBook
from ..rest_params import is_uint, param

HISTORY_TRADES = "/api/v5/market/history-trades"
REST_PAGE_MAX = 100  # "The maximum and default both are 100"
REST_REACH_NS = 90 * 86_400 * 1_000_000_000  # "from the last 3 months"

_CHANNELS = {"trades": Channel.TRADES, "trades-all": Channel.TRADES, "bbo-tbt": Channel.QUOTES}


def _canonical(inst: str) -> str:
    return inst[: -len("SWAP")] + "PERP" if inst.endswith("-SWAP") else inst


def _inst(symbol: str) -> str:
    return symbol[: -len("PERP")] + "SWAP" if symbol.endswith("-PERP") else symbol


class OkxDialect(Dialect):
    exchange = "okx"
    server_ping_s = None  # OKX relies on the client's text pings

    def accepts(self, path: str) -> bool:
        return path.split("?", 1)[0] in ("/ws/v5/public", "/ws/v5/business")

    def on_message(self, session: SimSession, message: Frame) -> list[Frame]:
        if message in ("ping", b"ping"):
            return ["pong"]
        try:
            request = json.loads(message)
            op, args = request["op"], request["args"]
        except (ValueError, KeyError, TypeError):
            return [
                json.dumps(
                    {
                        "event": "error",
                        "code": "60012",
                        "msg": f"Invalid request: {message!r}",
                        "connId": "sim",
                    }
                )
            ]
        if op != "subscribe":
            return [json.dumps({"event": "error", "code": "60012", "msg": f"bad op {op}"})]
        business = session.path.startswith("/ws/v5/business")
        replies: list[Frame] = []
        for arg in args:
            name = arg.get("channel")
            channel = _CHANNELS.get(name)
            if channel is None or (name == "trades-all") != business:
                replies.append(
                    json.dumps(
                        {
                            "event": "error",
                            "code": "60018",
                            "msg": f"Wrong URL or channel:{name}",
                            "connId": "sim",
                        }
                    )
                )
                continue
            session.subscriptions[(channel, _canonical(arg["instId"]))] = name
            replies.append(
                json.dumps(
                    {"id": request.get("id", ""), "event": "subscribe", "arg": arg, "connId": "sim"}
                )
            )
        return replies

    def trade_frames(self, session: SimSession, trades: Sequence[SimTrade]) -> list[Frame]:
        frames: list[Frame] = []
        for t in trades:
            channel = session.subscriptions.get((Channel.TRADES, t.symbol), "trades")
            inst = _inst(t.symbol)
            row = {
                "instId": inst,
                "tradeId": str(t.trade_id),
                "px": t.price,
                "sz": t.amount,
                "side": t.side,
                "ts": str(t.ts_ns // 1_000_000),
            }
            if channel == "trades":
                row["count"] = "1"
            row["source"] = "0"
            frames.append(
                json.dumps(
                    {"arg": {"channel": channel, "instId": inst}, "data": [row]},
                    separators=(",", ":"),
                )
            )
        return frames

    def quote_frames(self, session: SimSession, quote: SimQuote) -> list[Frame]:
        inst = _inst(quote.symbol)
        data = {
            "asks": [[quote.ask_price, quote.ask_amount, "0", "1"]],
            "bids": [[quote.bid_price, quote.bid_amount, "0", "1"]],
            "ts": str(quote.ts_ns // 1_000_000),
            "seqId": quote.update_id,
        }
        return [
            json.dumps(
                {"arg": {"channel": "bbo-tbt", "instId": inst}, "data": [data]},
                separators=(",", ":"),
            )
        ]

    def rest(
        self,
        path: str,
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
        book: TradeBook,
    ) -> RestReply | None:
        if path != HISTORY_TRADES:
            return None
        inst = param(query, "instId")
        if not inst:
            return _param_error("instId")
        kind = param(query, "type") or "1"
        if kind not in ("1", "2"):
            return _param_error("type")
        numbers: dict[str, int] = {}
        for name in ("after", "before", "limit"):
            text = param(query, name)
            if text is None:
                continue
            if not is_uint(text):
                return _param_error(name)
            numbers[name] = int(text)
        limit = min(numbers.get("limit", REST_PAGE_MAX), REST_PAGE_MAX)
        if limit < 1:
            return _param_error("limit")
        symbol = _canonical(inst)
        last = book.last_id(symbol)
        rows: list[dict[str, str]] = []
        if last:
            oldest = book.first_id_at(symbol, book.trade(symbol, last).ts_ns - REST_REACH_NS)
            hi, lo = last, oldest
            if "after" in numbers:
                if kind == "1":
                    hi = min(hi, numbers["after"] - 1)
                else:  # trades whose ms is before ``after``
                    hi = min(hi, book.first_id_at(symbol, numbers["after"] * 1_000_000) - 1)
            if kind == "1" and "before" in numbers:
                lo = max(lo, numbers["before"] + 1)
            for trade in reversed(book.trades(symbol, max(lo, hi - limit + 1), hi)):
                rows.append(
                    {
                        "instId": inst,
                        "side": trade.side,
                        "sz": trade.amount,
                        "source": "0",
                        "px": trade.price,
                        "tradeId": str(trade.trade_id),
                        "ts": str(trade.ts_ns // 1_000_000),
                    }
                )
        return RestReply(200, json.dumps({"code": "0", "msg": "", "data": rows}))


def _param_error(name: str) -> RestReply:
    return RestReply(
        400, json.dumps({"code": "51000", "msg": f"Parameter {name} error", "data": []})
    )


DIALECT = OkxDialect()
