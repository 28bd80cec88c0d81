"""How a snapshot and its problems are shown (pure): rich tables in 80 columns, or one JSON
document."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import msgspec
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .problems import top_reasons
from .snapshot import Problem, Snapshot, fmt_age, fmt_bytes


def to_document(snap: Snapshot, problems: Sequence[Problem]) -> dict[str, Any]:
    """The ``--json`` document: the snapshot, ``healthy`` and the problems."""
    doc: dict[str, Any] = {
        "healthy": not problems,
        "problems": msgspec.to_builtins(list(problems)),
        "taken_at": dt.datetime.fromtimestamp(snap.taken_ns / 1e9, dt.UTC).isoformat(),
    }
    doc.update(msgspec.to_builtins(snap))
    for stream, data in zip(snap.streams, doc["streams"], strict=True):
        for group, gdata in zip(stream.groups, data["groups"], strict=True):
            gdata["behind_s"] = group.behind_s
    return doc


def render(snap: Snapshot, problems: Sequence[Problem]) -> RenderableType:
    """The rich renderable: a headline, the problems, then one table per part (80 columns)."""
    taken = dt.datetime.fromtimestamp(snap.taken_ns / 1e9).strftime("%H:%M:%S")
    parts: list[RenderableType] = [
        Text.assemble(("tickvault status ", "bold"), taken),
        Text(f"redis {snap.redis}, postgresql {snap.database}", style="dim"),
    ]
    if problems:
        parts.append(Text(f"{len(problems)} problem(s) need attention:", style="bold red"))
        listed = Table.grid(padding=(0, 1))
        listed.add_column(style="bold red", no_wrap=True)
        listed.add_column(overflow="fold")
        for p in problems:
            listed.add_row(" !", Text.assemble((f"{p.subject}: ", "bold"), p.text))
        parts.append(listed)
    else:
        parts.append(Text("healthy: nothing needs attention", style="bold green"))

    def table(title: str, *columns: str) -> Table:
        """Columns named ``>name`` are numbers, right-justified."""
        t = Table(
            title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
            show_edge=False, pad_edge=False,
        )  # fmt: skip
        for name in columns:
            number = name.startswith(">")
            t.add_column(name.lstrip(">"), justify="right" if number else "left", overflow="fold")
        return t

    if snap.redis_ok:
        streams = table("streams", "exchange", ">entries", ">memory", ">oldest", ">newest")
        for s in snap.streams:
            length = str(s.length) if s.exists else "none"
            ages = fmt_age(s.oldest_age_s), fmt_age(s.newest_age_s)
            streams.add_row(s.exchange, length, fmt_bytes(s.memory_bytes), *ages)
        parts += [Text(), streams]
        groups = table("groups", "exchange", "group", ">lag", ">behind", ">pending", "idle")
        for s in snap.streams:
            for g in s.groups:
                lag = "?" if g.lag_entries is None else str(g.lag_entries)
                idle = ", ".join(f"{c.name} {fmt_age(c.idle_s)}" for c in g.consumers) or "none"
                groups.add_row(s.exchange, g.name, lag, fmt_age(g.behind_s), str(g.pending), idle)
        if groups.row_count:
            parts += [Text(), groups]
        feeds = table("feeds", "producer", "feed", "state", ">since", ">last frame", ">reconn/h")
        for f in snap.feeds:
            style = "green" if f.state == "connected" else "red"
            feeds.add_row(
                f.producer,
                f.label,
                Text(f.state, style=style),
                fmt_age(f.connected_s),
                fmt_age(f.last_frame_age_s),
                str(f.reconnects_1h),
            )
        if feeds.row_count:
            parts += [Text(), feeds]
        dead = [d for d in snap.dead_letters if d.count]
        if dead:
            letters = table("dead letters", "exchange", ">count", "reasons (of the newest)")
            for d in dead:
                letters.add_row(d.exchange, str(d.count), top_reasons(d.reasons, 3))
            parts += [Text(), letters]
    if snap.database_ok:
        symbols = table("trades", "exchange", "symbol", ">last 1 min", ">last 1 h", ">newest")
        for sym in snap.symbols:
            newest = fmt_age(sym.newest_age_s) if sym.newest_age_s is not None else "> 1h"
            symbols.add_row(sym.exchange, sym.symbol, str(sym.rows_1m), str(sym.rows_1h), newest)
        parts += [Text(), symbols]
        if snap.gaps:
            gaps = table("gaps", "exchange", ">open", ">backfilling", ">oldest")
            for gap in snap.gaps:
                counts = str(gap.open), str(gap.backfilling)
                gaps.add_row(gap.exchange, *counts, fmt_age(gap.oldest_s))
            parts += [Text(), gaps]
    return Group(*parts)
