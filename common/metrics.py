"""Counters and a latency histogram, logged periodically and served as Prometheus text.

Pure bookkeeping; ``serve_metrics`` (optional, ``--metrics-port``) is the only I/O here.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# receive -> commit latency buckets, seconds
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


def escape_label(value: str) -> str:
    """A label value in the exposition format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Histogram:
    def __init__(self, buckets: Iterable[float] = BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.n = 0
        self._lock = threading.Lock()

    def observe(self, value: float, count: int = 1) -> None:
        with self._lock:  # several writer threads observe
            self.counts[bisect.bisect_left(self.buckets, value)] += count
            self.total += value * count
            self.n += count

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile ``q`` (inf past the last bucket)."""
        if self.n == 0:
            return 0.0
        rank = q * self.n
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return self.buckets[i] if i < len(self.buckets) else float("inf")
        return float("inf")


class Metrics:
    """Named counters and gauges, plus one latency histogram. Counting takes a lock (several
    writer threads count); a scraper reads without one."""

    def __init__(self, process: str) -> None:
        self.process = process
        self.counters: Counter[str] = Counter()
        self.gauges: dict[str, float] = {}
        self.latency = Histogram()
        self._lock = threading.Lock()

    def inc(self, name: str, value: int = 1) -> None:
        with self._lock:  # several writer threads count the same names
            self.counters[name] += value

    def set(self, name: str, value: float) -> None:
        self.gauges[name] = value

    def summary(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.counters.items())]
        parts += [f"{k}={v:g}" for k, v in sorted(self.gauges.items())]
        if self.latency.n:
            parts.append(
                f"latency_p50<={self.latency.quantile(0.5) * 1e3:g}ms "
                f"p99<={self.latency.quantile(0.99) * 1e3:g}ms"
            )
        return " ".join(parts)

    def _series(self, name: str) -> tuple[str, str]:
        """``name`` (``metric`` or ``metric:kind``) as the metric and its label set."""
        metric, _, label = name.partition(":")
        process = escape_label(self.process)
        if label:
            return metric, f'{{process="{process}",kind="{escape_label(label)}"}}'
        return metric, f'{{process="{process}"}}'

    def prometheus(self) -> str:
        lines = []
        for name, value in sorted(self.counters.items()):
            metric, labels = self._series(name)
            lines.append(f"tickvault_{metric}_total{labels} {value}")
        for name, gauge in sorted(self.gauges.items()):
            metric, labels = self._series(name)
            lines.append(f"tickvault_{metric}{labels} {gauge:g}")
        h = self.latency
        cumulative = 0
        for bound, count in zip(h.buckets, h.counts, strict=False):
            cumulative += count
            lines.append(f'tickvault_commit_latency_seconds_bucket{{le="{bound:g}"}} {cumulative}')
        lines.append(f'tickvault_commit_latency_seconds_bucket{{le="+Inf"}} {h.n}')
        lines.append(f"tickvault_commit_latency_seconds_sum {h.total:g}")
        lines.append(f"tickvault_commit_latency_seconds_count {h.n}")
        return "\n".join(lines) + "\n"


def serve_metrics(metrics: Metrics, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve ``/metrics`` in a daemon thread; returns the server (call ``shutdown()``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = metrics.prometheus().encode()
            self.send_response(200 if self.path.startswith("/metrics") else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
