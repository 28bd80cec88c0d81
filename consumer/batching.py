"""The batch being built (pure: time is passed in).

A batch is flushed when it holds ``max_entries`` frames (a stream entry holds one, or a run of
several), when its first entry is ``max_delay_s`` old, or, with ``flush_when_drained``, as soon
as a read finds the stream empty: small batches and low latency when the consumer keeps up, big
batches under backlog.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from common.envelope import frame_id, run_frame_fields
from common.markers import Marker
from common.records import Quote, Trade

from .process import Fields, Outcome, control_kind


def as_dict(fields: Fields | None) -> dict[bytes, bytes]:
    """A field map from a map or from XREADGROUP's flat [name, value, ...] list."""
    if not fields:
        return {}
    if isinstance(fields, dict):
        return dict(fields)
    flat = list(fields)
    return dict(zip(flat[::2], flat[1::2], strict=False))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: str
    entry_id: str
    fields: dict[bytes, bytes]
    reason: str


class Span(NamedTuple):
    """Where one frame's rows sit in the batch's flat lists (to find a row PostgreSQL rejects).
    Flat tuples: the bounds are read only when PostgreSQL refuses a batch.

    A run whose every frame gave one trade, and nothing else, is held as one span with ``run``
    set (its frame ``i`` is trade ``trades_from + i``); any other frame has a span of its own.
    :meth:`Batch.frame_spans` gives a span a frame, for isolation."""

    key: str
    entry_id: str  # the entry's id, or ``<entry id>/<index>`` for a frame of a run
    trades_from: int
    trades_to: int
    quotes_from: int
    quotes_to: int
    run: bool = False  # a whole run of one-trade frames (``entry_id`` is the entry's)

    @property
    def trades(self) -> tuple[int, int]:
        return self.trades_from, self.trades_to

    @property
    def quotes(self) -> tuple[int, int]:
        return self.quotes_from, self.quotes_to


@dataclass(slots=True)
class Batch:
    acks: dict[str, list[str]] = field(default_factory=dict)  # stream key -> entry ids
    trades: list[Trade] = field(default_factory=list)
    quotes: list[Quote] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    controls: dict[str, int] = field(default_factory=dict)  # (a Counter: 0.7 us more a batch)
    markers: list[Marker] = field(default_factory=list)  # stored before the entries are acked
    entries: int = 0  # stream entries (acks)
    frames: int = 0  # frames in them
    started: float | None = None  # monotonic time of the first entry
    oldest_recv_ns: int = 0
    commit_s: float = 0.0  # how long its commit took (metric commit_seconds)
    committed_ns: int = 0  # wall clock at its commit (metric latency: receive -> commit)
    # (stream key, entry id) -> times delivered, for entries delivered more than once
    deliveries: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, key: str, entry_id: str, fields: Fields | None, out: Outcome, now: float) -> None:
        if self.started is None:
            self.started = now
        self.entries += 1
        ids = self.acks.get(key)
        if ids is None:
            ids = self.acks[key] = []
        ids.append(entry_id)
        frames = out.frames
        if frames is None:
            self._add_frame(key, entry_id, fields, out)
            return
        if self._add_plain_run(key, entry_id, frames):
            return
        add = self._add_frame
        for i, frame_out in enumerate(frames):
            one = frame_id(entry_id, i)
            if frame_out.dead is not None:
                # the dead letter carries this frame alone, as a single-frame entry would
                try:
                    own = run_frame_fields(as_dict(fields), i)
                except Exception:  # a run that split once splits again; if not, keep it whole
                    own = as_dict(fields)
                add(key, one, own, frame_out)
            else:
                add(key, one, None, frame_out)

    def _add_plain_run(self, key: str, entry_id: str, frames: list[Outcome]) -> bool:
        """A run whose every frame gave one trade and nothing else (most runs), added whole
        with one span instead of one a frame; False (nothing added) for any other run."""
        all_trades = self.trades
        t0 = len(all_trades)
        add = all_trades.append
        oldest = self.oldest_recv_ns
        for o in frames:
            trades = o.trades
            if (
                len(trades) != 1 or o.quotes or o.dead is not None or o.control is not None
                or o.marker is not None or not o.recv_ns
            ):  # fmt: skip
                del all_trades[t0:]
                return False
            add(trades[0])
            if o.recv_ns < oldest or not oldest:
                oldest = o.recv_ns
        self.oldest_recv_ns = oldest
        self.frames += len(frames)
        q0 = len(self.quotes)
        self.spans.append(_new_span(Span, (key, entry_id, t0, len(all_trades), q0, q0, True)))
        return True

    def frame_spans(self) -> list[Span]:
        """One span a frame (a plain run's expanded): what isolation splits."""
        out: list[Span] = []
        for span in self.spans:
            if not span.run:
                out.append(span)
                continue
            key, entry_id, first, last, q0, _, _ = span
            out += [
                Span(key, frame_id(entry_id, i), first + i, first + i + 1, q0, q0)
                for i in range(last - first)
            ]
        return out

    def _add_frame(self, key: str, entry_id: str, fields: Fields | None, out: Outcome) -> None:
        self.frames += 1
        recv_ns = out.recv_ns
        if recv_ns and (not self.oldest_recv_ns or recv_ns < self.oldest_recv_ns):
            self.oldest_recv_ns = recv_ns
        trades, quotes = out.trades, out.quotes
        if trades or quotes:
            all_trades, all_quotes = self.trades, self.quotes
            t0, q0 = len(all_trades), len(all_quotes)
            all_trades += trades
            all_quotes += quotes
            # (tuple.__new__: a NamedTuple's own __new__ is a Python call, 0.27 us a frame)
            self.spans.append(
                _new_span(Span, (key, entry_id, t0, len(all_trades), q0, len(all_quotes), False))
            )
        if out.dead is not None:
            self.dead.append(DeadLetter(key, entry_id, as_dict(fields), out.dead))
        if out.control is not None:
            kind = control_kind(out.control)
            self.controls[kind] = self.controls.get(kind, 0) + 1
        if out.marker is not None:
            self.markers.append(out.marker)


_new_span = tuple.__new__


@dataclass(slots=True)
class Batcher:
    max_entries: int
    max_delay_s: float
    flush_when_drained: bool = True
    batch: Batch = field(default_factory=Batch)

    def add(self, key: str, entry_id: str, fields: Fields | None, out: Outcome, now: float) -> None:
        self.batch.add(key, entry_id, fields, out, now)

    @property
    def room(self) -> int:
        """Frames the batch can still take."""
        return max(0, self.max_entries - self.batch.frames)

    def due(self, now: float, *, drained: bool = False) -> bool:
        b = self.batch
        if b.entries == 0:
            return False
        if b.frames >= self.max_entries:
            return True
        if drained and self.flush_when_drained:
            return True
        return b.started is not None and now - b.started >= self.max_delay_s

    def wait_s(self, now: float) -> float:
        """How long a read may block before the batch is due by time."""
        if self.batch.started is None:
            return self.max_delay_s
        return max(0.0, self.batch.started + self.max_delay_s - now)

    def take(self) -> Batch:
        batch, self.batch = self.batch, Batch()
        return batch
