"""What ``run`` shows: ``tickvault status``'s snapshot and the children, as a live table or one
line every few seconds."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..config import Settings
from .children import Child

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ..redis_url import RedisClient
    from ..status.snapshot import Problem, Snapshot

logger = logging.getLogger("tickvault.run")


class Watcher:
    """What ``tickvault status`` shows (``common.status``: streams, groups, feeds, trades per
    symbol, dead letters, gaps, problems), gathered for the view, and the group's backlog for
    the stop. Never raises for a server that is away: status records it as a problem."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.previous: Snapshot | None = None  # the last one: status reports growing lags
        self._client: RedisClient | None = None

    def connect(self) -> RedisClient:
        from ..redis_url import stream_client

        if self._client is None:
            url = self.settings.redis.url
            self._client = stream_client(url, socket_timeout=5, socket_connect_timeout=3)
        return self._client

    def sample(self) -> tuple[Snapshot, list[Problem]]:
        """(status snapshot, its problems)."""
        from ..status.gather import gather
        from ..status.problems import find_problems

        snap = gather(self.settings, self.connect)
        problems = find_problems(snap, self.previous)
        self.previous = snap
        return snap, problems

    def drained(self) -> bool | None:
        """Whether the group has been delivered every entry of every stream (its last
        delivered id is the stream's last id) and has acked them all; None: Redis did not
        answer."""
        from ..envelope import raw_key
        from ..status.gather import REDIS_FAILURES

        def text(value: Any) -> str:
            return value.decode() if isinstance(value, bytes) else str(value)

        try:
            client = self.connect()
            for exchange in self.settings.exchanges:
                key = raw_key(exchange)
                if not client.exists(key):
                    continue
                last: Any = client.xinfo_stream(key)["last-generated-id"]
                groups: Any = client.xinfo_groups(key)
                mine = [g for g in groups if text(g["name"]) == self.settings.consumer.group]
                if not mine or int(mine[0]["pending"]):
                    return False
                if text(mine[0]["last-delivered-id"]) != text(last):
                    return False
        except REDIS_FAILURES as exc:
            logger.warning("cannot read the group's backlog: %s", exc)
            return None
        return True

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None


def _children_text(children: Sequence[Child], now: float) -> str:
    return ", ".join(
        f"{c.name} {c.state(now)} ({c.restarts} restart{'' if c.restarts == 1 else 's'})"
        for c in children
    )


def status_line(
    snap: Snapshot, problems: Sequence[Problem], children: Sequence[Child], group: str, now: float,
    uptime_s: float,
) -> str:  # fmt: skip
    """One line for ``--no-table``: trades in the last minute over the configured symbols, the
    newest one's age, the group's backlog, the children, the problems ``tickvault status``
    finds."""
    from ..status.snapshot import fmt_age

    trades = sum(s.rows_1m for s in snap.symbols)
    ages = [s.newest_age_s for s in snap.symbols if s.newest_age_s is not None]
    groups = [g for st in snap.streams for g in st.groups if g.name == group]
    lags = [g.lag_entries for g in groups]
    lag = "?" if None in lags else str(sum(x or 0 for x in lags))
    behind = fmt_age(max((g.behind_s for g in groups), default=0.0))
    pending = sum(g.pending for g in groups)
    newest = f"newest {fmt_age(min(ages))} old" if ages else "none in the last hour"
    line = (
        f"run {fmt_age(uptime_s)}: {trades} trades in the last minute ({newest}), lag {lag} "
        f"entries ({behind} behind), {pending} pending; {_children_text(children, now)}"
    )
    if problems:
        line += f"; {len(problems)} problem(s): " + "; ".join(
            f"{p.subject}: {p.text}" for p in problems
        )
    return line


def status_view(
    snap: Snapshot, problems: Sequence[Problem], children: Sequence[Child], now: float
) -> RenderableType:
    """The live view: ``tickvault status``'s, then the children."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from ..status.view import render

    procs = Table(title="processes", title_justify="left", title_style="bold", box=None)
    procs.add_column("process")
    procs.add_column("state")
    procs.add_column("restarts", justify="right")
    for c in children:
        procs.add_row(c.name, Text(c.state(now), style="" if c.proc else "red"), str(c.restarts))
    hint = "Ctrl-C stops cleanly: the producer, the consumer once drained, then the servers"
    return Group(render(snap, problems), Text(), procs, Text(hint, style="dim"))
