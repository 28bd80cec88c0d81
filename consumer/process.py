"""One stream entry in, its outcome out (pure): rows to store, a control kind to count, or a
reason to dead-letter.

Never raises: everything that happens to one frame (decode, parse, validate, normalise) runs
under one guard, and any exception, a parser's bug included, becomes that frame's dead letter
with the exception's type and message (bounded). A bug costs one frame, never the worker."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import msgspec

from common.envelope import decode_entry, frame_id, split_run
from common.errors import PoisonFrame
from common.markers import Marker, decode_marker
from common.records import Quote, Trade
from common.venues import FrameContext, Venue, all_venues

from .validate import EARLIEST_NS, Validator, marker_problem

_NONE: list[Any] = []  # shared empty list: outcomes never mutate theirs

ROUTES_MAX = 1_024  # (exchange, context) pairs remembered
LATEST_NS = 4_102_444_800 * 1_000_000_000  # 2100-01-01: a receive time past this is corrupt
REASON_MAX = 500  # characters of a dead letter's reason

# Control kinds counted in metrics: a fixed set, so that no frame can name a series.
CONTROL_KINDS = frozenset(
    {
        "ack",
        "connected",
        "deleted",
        "empty",
        "error",
        "heartbeat",
        "marker",
        "one-sided",
        "pong",
        "status",
    }
)


def control_kind(kind: str) -> str:
    """``kind`` as a metrics label: its family (``empty:orderbook`` -> ``empty``) when known,
    else ``unknown`` (``unknown:<event type>`` carries frame content)."""
    family = kind.split(":", 1)[0]
    return family if family in CONTROL_KINDS else "unknown"


def bounded(text: str, limit: int = REASON_MAX) -> str:
    """``text`` on one line, control characters escaped, at most ``limit`` characters."""
    if text.isprintable() and len(text) <= limit:
        return text
    flat = repr(text[: limit * 2])[1:-1]  # escapes newlines, NUL, lone surrogates
    if len(flat) > limit or len(text) > limit * 2:
        return flat[: limit - 25] + f"... ({len(text)} characters)"
    return flat


def guard_reason(exc: BaseException) -> str:
    """The dead-letter reason for an exception raised while processing a frame."""
    return bounded(f"processing failed: {type(exc).__name__}: {exc}")


class Outcome(msgspec.Struct, gc=False):
    trades: list[Trade] = msgspec.field(default_factory=list)
    quotes: list[Quote] = msgspec.field(default_factory=list)
    control: str | None = None  # e.g. "ack", "heartbeat", "unknown:kline"
    dead: str | None = None  # reason, when the frame goes to the dead-letter stream
    recv_ns: int = 0
    frames: list[Outcome] | None = None  # a run entry: one outcome per frame, in order
    marker: Marker | None = None  # a producer's coverage marker (``common.markers``)


Fields = Mapping[bytes, bytes] | Sequence[bytes]  # a field map, or XREADGROUP's flat list
# where an entry's frames go: (exchange, context, its venue if known, venue symbol -> canonical)
Route = tuple[str, str, Venue | None, Mapping[str, str]]


R = TypeVar("R", Trade, Quote)


class RowFlagger(Protocol):
    """Marks abnormal rows (``consumer.flags.Flagger``): the bits of the checks each failed."""

    def trade(self, trade: Trade) -> int: ...
    def quote(self, quote: Quote) -> int: ...


class Processor:
    """Decode, parse, validate, flag. Invalid rows are dropped from the outcome and the frame
    is dead-lettered with the reasons, so nothing is lost and valid rows still land. Valid rows
    that look abnormal are kept, with their ``flags`` (``consumer.flags``)."""

    def __init__(
        self,
        *,
        subscribed: Mapping[str, frozenset[str]],
        symbol_maps: Mapping[tuple[str, str], Mapping[str, str]],
        max_future_skew_ns: int,
        venues: Mapping[str, Venue] | None = None,
        flagger: RowFlagger | None = None,
        on_flag: Callable[[int, str], None] | None = None,
    ) -> None:
        """``on_flag(bits, exchange)`` is called for each flagged row (metrics)."""
        self.validator = Validator(subscribed, max_future_skew_ns)
        self.flagger = flagger
        self.on_flag = on_flag
        self.symbol_maps = symbol_maps
        self.venues = venues if venues is not None else all_venues()
        self._empty: Mapping[str, str] = {}
        # (exchange, context) as the bytes in the entry -> (exchange, context, venue, symbols)
        self._routes: dict[tuple[bytes, bytes], Route]
        self._routes = {}

    def _route(self, exchange: bytes, context: bytes) -> Route:
        route = self._routes.get((exchange, context))
        if route is None:
            ex, cx = exchange.decode(), context.decode()
            route = (ex, cx, self.venues.get(ex), self.symbol_maps.get((ex, cx), self._empty))
            if len(self._routes) < ROUTES_MAX:  # entries name these: never an unbounded cache
                self._routes[(exchange, context)] = route
        return route

    def process(self, entry_id: str, fields: Fields | None) -> Outcome:
        """The outcome of a stream entry; for a run, ``frames`` holds each frame's."""
        try:
            return self._entry(entry_id, fields)
        except Exception as exc:  # the guard: whatever went wrong, the entry is dead-lettered
            return Outcome(dead=guard_reason(exc))

    def _entry(self, entry_id: str, fields: Fields | None) -> Outcome:
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
                    if fields[3] == b"m":
                        return self._marker(route, fields[9].decode(), fields[1], int(fields[13]))
                    return self._frame(entry_id, fields[1], route, int(fields[13]))
                pairs = split_run(fields[1], fields[15], fields[13])
            else:
                mapping = (
                    dict(fields) if isinstance(fields, Mapping)
                    else dict(zip(fields[::2], fields[1::2], strict=False))
                )  # fmt: skip
                envs = decode_entry(mapping)
                route = self._route(envs[0].exchange.encode(), envs[0].context.encode())
                if mapping.get(b"k") == b"m":
                    if b"l" in mapping:
                        return Outcome(dead="bad envelope: a marker cannot be a run")
                    return self._marker(route, envs[0].conn, envs[0].frame, envs[0].recv_ns)
                if b"l" not in mapping:
                    return self._frame(entry_id, envs[0].frame, route, envs[0].recv_ns)
                pairs = [(e.frame, e.recv_ns) for e in envs]
        except PoisonFrame as exc:
            return Outcome(dead=bounded(exc.reason))
        except (ValueError, UnicodeDecodeError) as exc:
            return Outcome(dead=bounded(f"bad envelope: {type(exc).__name__}: {exc}"))
        one = self._frame
        outs = [one(frame_id(entry_id, i), f, route, ns) for i, (f, ns) in enumerate(pairs)]
        return Outcome(_NONE, _NONE, None, None, pairs[0][1], outs)

    def _trades(self, trades: list[Trade]) -> list[Trade]:
        assert self.flagger is not None
        return self._flagged(trades, self.flagger.trade)

    def _quotes(self, quotes: list[Quote]) -> list[Quote]:
        assert self.flagger is not None
        return self._flagged(quotes, self.flagger.quote)

    def _flagged(self, rows: list[R], check: Callable[[R], int]) -> list[R]:
        """``rows`` with their flags (the list is copied only when one is flagged)."""
        out = rows
        for i, row in enumerate(rows):
            bits = check(row)
            if bits:
                if out is rows:
                    out = list(rows)
                out[i] = self._marked(row, bits)
        return out

    def _marked(self, row: R, bits: int) -> R:
        """``row`` with its flags, counted."""
        if self.on_flag is not None:
            self.on_flag(bits, row.exchange)
        return msgspec.structs.replace(row, flags=bits)

    def _marker(self, route: Route, conn: str, frame: bytes, at_ns: int) -> Outcome:
        exchange, context, venue, _ = route
        if not EARLIEST_NS <= at_ns < LATEST_NS:
            return Outcome(dead=f"marker time {bounded(str(at_ns), 40)} ns is out of range")
        if venue is None:
            return Outcome(dead=f"unknown exchange {bounded(exchange, 40)!r}", recv_ns=at_ns)
        marker = decode_marker(exchange, context, conn, at_ns, frame)  # PoisonFrame: dead letter
        # Its text goes to PostgreSQL with the batch's other markers in one transaction: what it
        # would refuse (a NUL in the context, say) is a dead letter here, never an error there.
        problem = marker_problem(marker)
        if problem is not None:
            return Outcome(dead=bounded(f"bad marker: {problem}"), recv_ns=at_ns)
        return Outcome(_NONE, _NONE, "marker", None, at_ns, None, marker)

    def _frame(self, name: str, frame: bytes, route: Route, recv_ns: int) -> Outcome:
        """One frame's outcome; ``name`` is its entry id, or ``<entry id>/<index>`` in a run."""
        try:
            return self._checked(name, frame, route, recv_ns)
        except PoisonFrame as exc:
            return Outcome(dead=bounded(exc.reason), recv_ns=recv_ns)
        except Exception as exc:  # a parser's or a check's bug costs this frame, nothing more
            return Outcome(dead=guard_reason(exc), recv_ns=recv_ns)

    def _checked(self, name: str, frame: bytes, route: Route, recv_ns: int) -> Outcome:
        exchange, context, venue, symbols = route
        if not EARLIEST_NS <= recv_ns < LATEST_NS:
            return Outcome(dead=f"receive time {bounded(str(recv_ns), 40)} ns is out of range")
        if venue is None:
            return Outcome(dead=f"unknown exchange {bounded(exchange, 40)!r}", recv_ns=recv_ns)
        parsed = venue.parse(frame, FrameContext(exchange, context, recv_ns, name, symbols))
        trades, quotes = parsed.trades, parsed.quotes
        if len(trades) == 1 and not quotes and self.validator.trade(trades[0]) is None:
            # most frames: one valid trade (the outcome the general path below gives it)
            if self.flagger is not None:
                bits = self.flagger.trade(trades[0])
                if bits:
                    trades = [self._marked(trades[0], bits)]
            return Outcome(trades, _NONE, None, None, recv_ns)
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
            if self.flagger is not None:
                return Outcome(self._trades(trades), self._quotes(quotes), None, None, recv_ns)
            return Outcome(trades, quotes, None, None, recv_ns)
        good_trades = [t for t in trades if check_trade(t) is None]
        good_quotes = [q for q in quotes if check_quote(q) is None]
        if self.flagger is not None:
            good_trades, good_quotes = self._trades(good_trades), self._quotes(good_quotes)
        out = Outcome(good_trades, good_quotes, None, None, recv_ns)
        if reasons:
            more = f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else ""
            out.dead = bounded("invalid: " + "; ".join(reasons[:3]) + more)
        return out
