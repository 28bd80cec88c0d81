"""One stream entry in, its outcome out (pure): rows to store, a control kind to count, or a
reason to dead-letter. Never raises on data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from common.envelope import decode_entry, frame_id, split_run
from common.errors import PoisonFrame
from common.records import Quote, Trade
from common.venues import FrameContext, Venue, all_venues

from .validate import Validator

_NONE: list[Any] = []  # shared empty list: outcomes never mutate theirs


class Outcome(msgspec.Struct, gc=False):
    trades: list[Trade] = msgspec.field(default_factory=list)
    quotes: list[Quote] = msgspec.field(default_factory=list)
    control: str | None = None  # e.g. "ack", "heartbeat", "unknown:kline"
    dead: str | None = None  # reason, when the frame goes to the dead-letter stream
    recv_ns: int = 0
    frames: list[Outcome] | None = None  # a run entry: one outcome per frame, in order


Fields = Mapping[bytes, bytes] | Sequence[bytes]  # a field map, or XREADGROUP's flat list


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
        # (exchange, context) as the bytes in the entry -> (exchange, context, venue, symbols)
        self._routes: dict[tuple[bytes, bytes], tuple[str, str, Venue | None, Mapping[str, str]]]
        self._routes = {}

    def _route(
        self, exchange: bytes, context: bytes
    ) -> tuple[str, str, Venue | None, Mapping[str, str]]:
        route = self._routes.get((exchange, context))
        if route is None:
            ex, cx = exchange.decode(), context.decode()
            route = (ex, cx, self.venues.get(ex), self.symbol_maps.get((ex, cx), self._empty))
            self._routes[(exchange, context)] = route
        return route

    def process(self, entry_id: str, fields: Fields | None) -> Outcome:
        """The outcome of a stream entry; for a run, ``frames`` holds each frame's."""
        if not fields:
            return Outcome(dead="entry has no fields")
        try:
            # Fast path: the producer's own field order f k e x c n t [l], as a flat list.
            if (
                isinstance(fields, list)
                and (len(fields) == 14 or (len(fields) == 16 and fields[14] == b"l"))
                and fields[0] == b"f" and fields[4] == b"e" and fields[6] == b"x"
                and fields[12] == b"t"
            ):  # fmt: skip
                route = self._route(fields[5], fields[7])
                if len(fields) == 14:
                    return self._frame(entry_id, fields[1], route, int(fields[13]))
                pairs = split_run(fields[1], fields[15], fields[13])
            else:
                mapping = (
                    dict(fields) if isinstance(fields, Mapping)
                    else dict(zip(fields[::2], fields[1::2], strict=False))
                )  # fmt: skip
                envs = decode_entry(mapping)
                route = self._route(envs[0].exchange.encode(), envs[0].context.encode())
                if b"l" not in mapping:
                    return self._frame(entry_id, envs[0].frame, route, envs[0].recv_ns)
                pairs = [(e.frame, e.recv_ns) for e in envs]
        except PoisonFrame as exc:
            return Outcome(dead=exc.reason)
        except (ValueError, UnicodeDecodeError) as exc:
            return Outcome(dead=f"bad envelope: {type(exc).__name__}: {exc}")
        one = self._frame
        outs = [one(frame_id(entry_id, i), f, route, ns) for i, (f, ns) in enumerate(pairs)]
        return Outcome(_NONE, _NONE, None, None, pairs[0][1], outs)

    def _frame(
        self,
        name: str,
        frame: bytes,
        route: tuple[str, str, Venue | None, Mapping[str, str]],
        recv_ns: int,
    ) -> Outcome:
        """One frame's outcome; ``name`` is its entry id, or ``<entry id>/<index>`` in a run."""
        exchange, context, venue, symbols = route
        if venue is None:
            return Outcome(dead=f"unknown exchange {exchange!r}", recv_ns=recv_ns)
        try:
            parsed = venue.parse(frame, FrameContext(exchange, context, recv_ns, name, symbols))
        except PoisonFrame as exc:
            return Outcome(dead=exc.reason, recv_ns=recv_ns)
        except Exception as exc:  # a parser bug must not kill the worker: keep the frame
            return Outcome(dead=f"parser error {type(exc).__name__}: {exc}", recv_ns=recv_ns)
        trades, quotes = parsed.trades, parsed.quotes
        if parsed.control is not None and not trades and not quotes:
            return Outcome(_NONE, _NONE, parsed.control, None, recv_ns)
        check_trade, check_quote = self.validator.trade, self.validator.quote
        reasons: list[str] = []
        for t in trades:
            problem = check_trade(t)
            if problem is not None:
                reasons.append(problem)
        for q in quotes:
            problem = check_quote(q)
            if problem is not None:
                reasons.append(problem)
        if not reasons:
            if not trades and not quotes:
                return Outcome(_NONE, _NONE, "empty", None, recv_ns)  # e.g. an empty snapshot
            return Outcome(trades, quotes, None, None, recv_ns)
        out = Outcome(
            [t for t in trades if check_trade(t) is None],
            [q for q in quotes if check_quote(q) is None],
            None,
            None,
            recv_ns,
        )
        if reasons:
            more = f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else ""
            out.dead = "invalid: " + "; ".join(reasons[:3]) + more
        return out
