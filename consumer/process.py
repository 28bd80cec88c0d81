"""One stream entry in, its outcome out (pure): rows to store, a control kind to count, or a
reason to dead-letter. Never raises on data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from common.envelope import decode_fields
from common.errors import PoisonFrame
from common.records import Quote, Trade
from common.venues import FrameContext, Venue, all_venues

from .validate import Validator


@dataclass(slots=True)
class Outcome:
    trades: list[Trade] = field(default_factory=list)
    quotes: list[Quote] = field(default_factory=list)
    control: str | None = None  # e.g. "ack", "heartbeat", "unknown:kline"
    dead: str | None = None  # reason, when the frame goes to the dead-letter stream
    recv_ns: int = 0


class Processor:
    """Decode, parse, validate. Invalid rows are dropped from the outcome and the frame is
    dead-lettered with the reasons, so nothing is lost and valid rows still land."""

    def __init__(
        self,
        *,
        subscribed: Mapping[str, frozenset[str]],
        symbol_maps: Mapping[tuple[str, str], Mapping[str, str]],
        max_future_skew_ns: int,
        venues: Mapping[str, Venue] | None = None,
    ) -> None:
        self.validator = Validator(subscribed, max_future_skew_ns)
        self.symbol_maps = symbol_maps
        self.venues = venues if venues is not None else all_venues()
        self._empty: Mapping[str, str] = {}

    def process(self, entry_id: str, fields: Mapping[bytes, bytes] | None) -> Outcome:
        if not fields:
            return Outcome(dead="entry has no fields")
        try:
            env = decode_fields(dict(fields))
            venue = self.venues.get(env.exchange)
            if venue is None:
                return Outcome(dead=f"unknown exchange {env.exchange!r}", recv_ns=env.recv_ns)
            ctx = FrameContext(
                env.exchange,
                env.context,
                env.recv_ns,
                entry_id,
                self.symbol_maps.get((env.exchange, env.context), self._empty),
            )
            parsed = venue.parse(env.frame, ctx)
        except PoisonFrame as exc:
            return Outcome(dead=exc.reason)
        except Exception as exc:  # a parser bug must not kill the worker: keep the frame
            return Outcome(dead=f"parser error {type(exc).__name__}: {exc}")
        if parsed.control is not None and not parsed.trades and not parsed.quotes:
            return Outcome(control=parsed.control, recv_ns=env.recv_ns)
        out = Outcome(recv_ns=env.recv_ns)
        reasons = []
        check_trade, check_quote = self.validator.trade, self.validator.quote
        for t in parsed.trades:
            problem = check_trade(t)
            if problem is None:
                out.trades.append(t)
            else:
                reasons.append(problem)
        for q in parsed.quotes:
            problem = check_quote(q)
            if problem is None:
                out.quotes.append(q)
            else:
                reasons.append(problem)
        if reasons:
            more = f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else ""
            out.dead = "invalid: " + "; ".join(reasons[:3]) + more
        if not out.trades and not out.quotes and out.dead is None:
            out.control = "empty"  # e.g. an empty snapshot
        return out
