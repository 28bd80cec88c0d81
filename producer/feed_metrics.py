"""The producer's per-feed metrics and its health checks, read from the feed sessions when
scraped: nothing is added to the receive path.

- ``tickvault_feed_connected{exchange,feed}``: 1 while a connection is open;
- ``tickvault_frames_received_total{exchange,feed}``: frames received (every connection), and
  ``tickvault_received_bytes_total{exchange,feed}`` their bytes;
- ``tickvault_feed_last_frame_age_seconds{exchange,feed}``: since the frame count last moved,
  as seen by the scrapes (so at the scrape interval's resolution);
- ``/healthz``: every feed connected, or without a connection for less than
  ``2 * backoff_max_s + 30`` s (a backoff below its cap, and the connect timeout);
- ``/readyz``: the publisher has not met a fatal refusal.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from common.metrics import Metrics

from .publisher import Publisher
from .session import FeedSession

CONNECT_SLACK_S = 30.0  # connect timeout (15 s) and a subscription, with room


class FeedMetrics:
    def __init__(self, sessions: Sequence[FeedSession], metrics: Metrics) -> None:
        self.sessions = sessions
        self.process = metrics.process
        self._counts: dict[str, int] = {}
        self._moved: dict[str, float] = {}

    def collect(self) -> Iterator[Metric]:
        labels = ["process", "exchange", "feed"]
        connected = GaugeMetricFamily(
            "tickvault_feed_connected", "1 while the feed has a connection open", labels=labels
        )
        received = CounterMetricFamily(
            "tickvault_frames_received", "Frames received from the venue", labels=labels
        )
        received_bytes = CounterMetricFamily(
            "tickvault_received_bytes", "Bytes of the frames received", labels=labels
        )
        age = GaugeMetricFamily(
            "tickvault_feed_last_frame_age_seconds",
            "Seconds since the feed's frame count last moved (sampled by the scrapes)",
            labels=labels,
        )
        now = time.monotonic()
        for s in self.sessions:
            values = [self.process, s.venue.exchange, s.label]
            frames = s.frames_closed + sum(g.frames for g in s.open)
            if frames != self._counts.get(s.label):
                self._counts[s.label] = frames
                self._moved[s.label] = now
            connected.add_metric(values, 1.0 if s.open else 0.0)
            received.add_metric(values, frames)
            received_bytes.add_metric(values, s.bytes_closed + sum(g.received for g in s.open))
            age.add_metric(values, now - self._moved.get(s.label, now))
        yield connected
        yield received
        yield received_bytes
        yield age

    def feeds_healthy(self) -> tuple[bool, str]:
        now = time.monotonic()
        down = []
        for s in self.sessions:
            limit = 2 * s.backoff_max_s + CONNECT_SLACK_S
            if not s.open and now - s.down_since > limit:
                down.append(f"{s.label} {s.state} for {now - s.down_since:.0f} s (> {limit:g})")
        if down:
            return False, "; ".join(down)
        return True, f"{len(self.sessions)} feed(s) connected or reconnecting"


def watch(sessions: Sequence[FeedSession], publisher: Publisher, metrics: Metrics) -> FeedMetrics:
    """Register the feeds' families and the producer's health checks on ``metrics``."""
    feeds = FeedMetrics(sessions, metrics)
    metrics.collectors.append(feeds.collect)
    metrics.live["feeds"] = feeds.feeds_healthy
    metrics.ready["publisher"] = lambda: (
        (True, "spilling: redis away") if publisher.spill is not None and publisher.spilled
        else (True, "writing")
    )  # fmt: skip
    return feeds
