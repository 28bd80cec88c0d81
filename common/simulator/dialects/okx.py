"""OKX v5 as the simulator speaks it: ``/ws/v5/public`` and ``/ws/v5/business``, subscribe acks
per argument, text ``ping`` -> ``pong``, one ``trades`` message per trade (count 1)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ...venues.base import Channel
from ..dialect import Dialect, Frame, SimSession
from ..engine import SimQuote, SimTrade

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


DIALECT = OkxDialect()
