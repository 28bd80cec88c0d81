"""When a connection has gone silent: a pure rule over frame arrival times (no clock, no I/O).

The session samples its connection's frame count every :attr:`LivenessRule.tick_s` and passes it
here with the time (``time.monotonic()``); the rule answers how long the connection may stay
silent and whether it has. What one feed has shown is kept across its connections (a
:class:`Liveness` per feed session); a :class:`Watch` is one connection's view of it.

The threshold, in seconds:

- configured (``producer.silence_s`` > 0): that value, on every venue;
- else derived from the feed itself::

      base    = ceiling_s                                 while fewer than min_gaps gaps are known
              = clamp(factor x q90(last window gaps), floor_s, ceiling_s)          otherwise
      quiet   = quiet_margin x the second longest gap past ceiling_s of the last quiet_memory_s
      backoff = base x 2^strikes        (strikes: +1 for each connection replaced for silence,
                                         -1 for each sample that saw data)
      threshold = min(max(base, quiet, backoff), quiet_max_s)

- and where the venue sends heartbeats (``Keepalive.silence_s``: Coinbase ``heartbeats``, Kraken
  ``heartbeat``, Bybit/OKX/Upbit answers to our application pings), never more than that: a frame
  is due that often whatever the market does.

So a connection of a feed that has been delivering is replaced after at most
``max(floor_s, factor x q90 gap)``, never more than ``ceiling_s`` (120 s), of silence (plus one
tick of sampling). Past the ceiling only on the feed's own evidence: it has twice within
``quiet_memory_s`` been silent for longer than the ceiling and then delivered again (``quiet``:
one such silence is no pattern, it may have been a venue outage), or the connections before this
one were replaced for silence and brought no data either (``backoff``: an illiquid pair
reconnects 120, 240, 480 ... s into its first quiet hour, not every 120 s; reconnecting is cheap
and the gap is recorded either way).

A gap is the time between two data frames of the feed, across its connections: a silence that
ended only on a new connection is still the feed's (one is no pattern, hence the second longest).
The first ``setup_frames`` frames of a connection that arrive within ``settle_s`` of its opening
are the venue's answers to connecting and subscribing (Binance's ``{"result":null}``, Bithumb's
"Connected Successfully"): they prove the connection, not the feed, so they are no data frame:
they neither end a gap nor lower the strikes (they do keep the connection alive). Arrival times
are the sampling times: a gap shorter than a tick counts as one tick, below any floor.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class LivenessRule:
    """The parameters of the rule (module docstring); the defaults are production values."""

    fixed_s: float | None = None  # configured threshold: replaces the derived one
    heartbeat_s: float | None = None  # the venue's heartbeat bound (Keepalive.silence_s)
    floor_s: float = 5.0
    ceiling_s: float = 120.0
    factor: float = 4.0
    quantile: float = 0.9
    window: int = 128  # recent gaps the quantile is taken over
    min_gaps: int = 8  # fewer known: the ceiling
    quiet_margin: float = 1.5
    quiet_memory_s: float = 6 * 3600.0
    quiet_max_s: float = 3600.0

    @property
    def tick_s(self) -> float:
        """How often to sample: a quarter of the smallest threshold the rule can give, <= 1 s."""
        smallest = self.fixed_s if self.fixed_s else self.floor_s
        if self.heartbeat_s is not None and not self.fixed_s:
            smallest = min(smallest, self.heartbeat_s)
        return min(1.0, smallest / 4)


class Liveness:
    """What one feed has shown, across its connections."""

    def __init__(self, rule: LivenessRule) -> None:
        self.rule = rule
        self._gaps: deque[float] = deque(maxlen=rule.window)
        self._long: deque[tuple[float, float]] = deque(maxlen=256)  # (at, gap) past the ceiling
        self._base: float | None = None  # cached; None: recompute
        self.last_data: float | None = None  # when the feed's last data frame was seen
        self.strikes = 0

    def watch(
        self, now: float, *, setup_frames: int = 0, settle_s: float = 5.0, subscribing_s: float = 0
    ) -> Watch:
        """A new connection opened at ``now``, whose subscription takes ``subscribing_s``."""
        return Watch(
            self, now, setup_frames=setup_frames, settle_s=settle_s, subscribing_s=subscribing_s
        )

    # -- learning ---------------------------------------------------------------------------
    def data(self, now: float, opened: float) -> None:
        """A data frame seen at ``now`` on a connection opened at ``opened``."""
        last = self.last_data
        gap = now - (opened if last is None else last)
        self._gaps.append(gap)
        self._base = None
        if gap > self.rule.ceiling_s:
            self._long.append((now, gap))
        self.last_data = now
        if self.strikes:
            self.strikes -= 1

    def silenced(self) -> None:
        """A connection was replaced for silence: the next one is given longer (``backoff``)."""
        if self.strikes < 32:
            self.strikes += 1

    # -- the threshold ----------------------------------------------------------------------
    def base(self) -> float:
        rule = self.rule
        if self._base is None:
            gaps = self._gaps
            if len(gaps) < rule.min_gaps:
                self._base = rule.ceiling_s
            else:
                ordered = sorted(gaps)
                q = ordered[min(len(ordered) - 1, math.ceil(rule.quantile * len(ordered)) - 1)]
                self._base = min(max(rule.factor * q, rule.floor_s), rule.ceiling_s)
        return self._base

    def quiet(self, now: float) -> float:
        """``quiet_margin`` x the second longest gap past the ceiling of the last
        ``quiet_memory_s`` (0: fewer than two)."""
        long, horizon = self._long, now - self.rule.quiet_memory_s
        while long and long[0][0] < horizon:
            long.popleft()
        if len(long) < 2:
            return 0.0
        return self.rule.quiet_margin * sorted(g for _, g in long)[-2]

    def threshold(self, now: float) -> float:
        rule = self.rule
        if rule.fixed_s:
            return rule.fixed_s
        base = self.base()
        quiet = self.quiet(now)
        backoff = base * 2.0**self.strikes
        derived = min(max(base, quiet, backoff), rule.quiet_max_s)
        if rule.heartbeat_s is not None:
            return min(derived, rule.heartbeat_s)
        return derived

    def explain(self, now: float) -> str:
        """Where the current threshold comes from, for the log."""
        rule = self.rule
        if rule.fixed_s:
            return "configured"
        parts = [f"base {self.base():.3g} s from {len(self._gaps)} gaps"]
        quiet = self.quiet(now)
        if quiet > self.base():
            parts.append(f"quiet feed {quiet:.3g} s")
        if self.strikes:
            parts.append(f"{self.strikes} strikes (connections replaced for silence)")
        if rule.heartbeat_s is not None:
            parts.append(f"heartbeat bound {rule.heartbeat_s:.3g} s")
        return ", ".join(parts)


class Watch:
    """One connection: fed its frame count and the time, says whether it is dead."""

    def __init__(
        self,
        feed: Liveness,
        opened: float,
        *,
        setup_frames: int,
        settle_s: float,
        subscribing_s: float = 0.0,
    ) -> None:
        self.feed = feed
        self.opened = opened
        self.setup_frames = setup_frames
        self.settle_s = settle_s
        self.frames = 0
        # Connecting counts as a sign of life, and so does subscribing, which may take a while
        # by the venue's rate (Coinbase: 0.4 s between messages): silence counts from its end.
        self.last_frame = opened + subscribing_s

    def observe(self, now: float, frames: int) -> None:
        """The connection's frame count (ever growing) as seen at ``now``."""
        if frames == self.frames:
            return
        self.frames = frames
        self.last_frame = now
        if frames > self.setup_frames or now - self.opened > self.settle_s:
            self.feed.data(now, self.opened)

    def subscribed(self, now: float) -> None:
        """The subscription is sent: silence counts from ``now`` at the earliest."""
        self.last_frame = max(self.last_frame, now)

    def silence(self, now: float) -> float:
        return now - self.last_frame

    def threshold(self, now: float) -> float:
        return self.feed.threshold(now)

    def remaining(self, now: float) -> float:
        """Seconds of silence left before the connection counts as dead (<= 0: it is)."""
        return self.feed.threshold(now) - (now - self.last_frame)

    def give_up(self) -> None:
        """The connection is replaced for silence."""
        self.feed.silenced()
