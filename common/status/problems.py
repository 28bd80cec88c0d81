"""What needs attention in a snapshot (pure): the problems ``tickvault status`` lists, and the
classes of dead letters' reasons."""

from __future__ import annotations

import re
from collections.abc import Mapping

from producer.heartbeat import FEEDS_PREFIX

from ..envelope import dead_key
from .snapshot import GroupInfo, Problem, Snapshot, Thresholds, fmt_age

GROWING_MIN_S = 5.0  # a lag growing between two --watch samples counts from this age on
GROWING_BY_S = 1.0  # ... and this much more than the previous sample's
STALE_BEATS = 3  # a heartbeat older than this many intervals: the producer is gone or stuck

_DIGITS = re.compile(r"\d+")
_POSTGRES = re.compile(r"postgres rejected \((\w+)\)")
_ROW = re.compile(r"(trade|quote) (?:id\b|\S+: (\w+))")


def reason_class(reason: str, exchange: str = "") -> str:
    """A dead letter's reason, without its particulars: what kind of failure it is."""
    text = reason.removeprefix(f"{exchange}: ") if exchange else reason
    if text.startswith("delivered ") and " times: " in text:
        return "delivered too often"
    if m := _POSTGRES.match(text):
        return f"postgres rejected ({m.group(1)})"
    if m := _ROW.match(text):
        return f"bad {m.group(1)} {m.group(2) or 'id'}"
    if text.startswith("processing failed: "):
        return "processing failed: " + text.split(": ", 2)[1][:40]
    head = text.split(":", 1)[0].strip()
    return _DIGITS.sub("N", head)[:40] or "(no reason)"


def find_problems(
    snap: Snapshot, previous: Snapshot | None = None, limits: Thresholds | None = None
) -> list[Problem]:
    """What needs attention in ``snap``; ``previous`` (an earlier sample) shows growing lags."""
    limits = limits or Thresholds()
    out = [
        Problem(kind="unreachable" if f.unreachable else "error", subject=f.source, text=f.text)
        for f in snap.failures
    ]
    if snap.redis_ok:
        out += _feed_problems(snap, limits)
        out += _stream_problems(snap, previous, limits)
        out += [
            Problem(
                kind="dead-letters",
                subject=d.exchange,
                text=f"{d.count} dead letters in {dead_key(d.exchange)}"
                + (f": {top_reasons(d.reasons)}" if d.reasons else ""),
            )
            for d in snap.dead_letters
            if d.count
        ]
    for g in snap.gaps or []:
        out.append(
            Problem(
                kind="gaps",
                subject=g.exchange,
                text=f"{g.open} open and {g.backfilling} backfilling gaps, the oldest found "
                f"{fmt_age(g.oldest_s)} ago (tickvault gaps)",
            )
        )
    return out


def top_reasons(reasons: Mapping[str, int], n: int = 2) -> str:
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{name} ({count})" for name, count in top)


def _feed_problems(snap: Snapshot, limits: Thresholds) -> list[Problem]:
    out = []
    if not snap.feeds:
        return [
            Problem(
                kind="no-heartbeat",
                subject="producer",
                text=f"no producer heartbeat ({FEEDS_PREFIX}*): no producer is running",
            )
        ]
    reported = {f.exchange for f in snap.feeds}
    for exchange in snap.configured:
        if exchange not in reported:
            out.append(
                Problem(
                    kind="no-heartbeat",
                    subject=exchange,
                    text=f"no producer heartbeat reports a feed of {exchange}",
                )
            )
    for f in snap.feeds:
        subject = f"{f.producer} {f.label}"
        if f.heartbeat_age_s > STALE_BEATS * f.every_s:
            text = f"heartbeat {fmt_age(f.heartbeat_age_s)} old: the producer died or is stuck"
            out.append(Problem(kind="stale", subject=subject, text=text))
        elif f.state == "stopped":
            text = "the producer stopped (its last heartbeat)"
            out.append(Problem(kind="stopped", subject=subject, text=text))
        elif f.state != "connected":
            text = f"{f.state}, {f.reconnects_1h} reconnects in the last hour"
            out.append(Problem(kind="down", subject=subject, text=text))
        else:
            silent = f.last_frame_age_s if f.last_frame_age_s is not None else f.connected_s
            if silent is not None and silent > limits.silent_s:
                what = "no frame" if f.last_frame_age_s is None else "last frame"
                text = f"connected, {what} for {fmt_age(silent)} (> {fmt_age(limits.silent_s)})"
                out.append(Problem(kind="silent", subject=subject, text=text))
    return out


def _stream_problems(
    snap: Snapshot, previous: Snapshot | None, limits: Thresholds
) -> list[Problem]:
    out = []
    before: dict[tuple[str, str], float] = {}
    if previous is not None:
        before = {(s.key, g.name): g.behind_s for s in previous.streams for g in s.groups}
    for s in snap.streams:
        if s.length and not s.groups:
            text = f"{s.length} entries and no consumer group: no consumer ever read {s.key}"
            out.append(Problem(kind="no-group", subject=s.exchange, text=text))
        for g in s.groups:
            subject = f"{s.exchange} {g.name}"
            behind = g.behind_s
            was = before.get((s.key, g.name))
            if behind > limits.lag_s:
                text = f"{fmt_age(behind)} behind (> {fmt_age(limits.lag_s)})" + _lag_detail(g)
                out.append(Problem(kind="lag", subject=subject, text=text))
            elif was is not None and behind >= GROWING_MIN_S and behind >= was + GROWING_BY_S:
                text = f"falling behind: {fmt_age(was)} -> {fmt_age(behind)}" + _lag_detail(g)
                out.append(Problem(kind="lag-growing", subject=subject, text=text))
            for c in g.consumers:
                if c.pending and c.idle_s > limits.idle_s:
                    text = (
                        f"consumer {c.name} idle {fmt_age(c.idle_s)} holding {c.pending} "
                        "pending entries (dead? the others claim them)"
                    )
                    out.append(Problem(kind="idle-consumer", subject=subject, text=text))
    return out


def _lag_detail(g: GroupInfo) -> str:
    lag = "?" if g.lag_entries is None else str(g.lag_entries)
    return f" ({lag} entries not delivered, {g.pending} pending)"
