"""Metrics: counted cheaply on the hot path, exposed in the Prometheus format by
``prometheus-client``, with ``/healthz`` and ``/readyz`` beside ``/metrics``.

Callers count by short names (``metrics.inc("published:binance", n)``: the part after ``:`` is
the label value, a tuple of values for several labels); :data:`COUNTERS` and :data:`GAUGES` give
each name its Prometheus family (conventional names: ``_total``, ``_seconds``, ``_bytes``), its
HELP text and its label names. Counting is a dict increment under a lock (writer threads count
too); the registry's collector turns the dicts into families only when scraped. Label values come
from fixed sets or configured names (exchanges, symbols, feeds, reason classes), never from frame
content.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .errors import ConfigError

# receive -> commit latency buckets, seconds
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0)


@dataclass(frozen=True, slots=True)
class Family:
    name: str  # without the tickvault_ prefix (and, for counters, without _total)
    help: str
    labels: tuple[str, ...] = ()


_EX = ("exchange",)

COUNTERS: dict[str, Family] = {
    # producer
    "published": Family("frames_written", "Frames written to the Redis stream", _EX),
    "bytes_written": Family(
        "redis_written_bytes", "Bytes of XADD commands written to Redis (frames and envelope)"
    ),
    "entries": Family("entries", "Stream entries written (producer) or read (consumer)"),
    "round_trips": Family("redis_round_trips", "Pipelined XADD round trips"),
    "redis_errors": Family("redis_errors", "Redis refusals and connection failures"),
    "dropped": Family("frames_dropped", "Frames lost: the memory buffer was full"),
    "spilled": Family("frames_spilled", "Frames written to the disk spill"),
    "spill_drained": Family("frames_unspilled", "Frames sent from the spill to Redis"),
    "spill_dropped": Family("spill_dropped_frames", "Frames the full spill dropped"),
    "spill_write_errors": Family(
        "spill_write_errors", "Times the disk began refusing spill writes (ENOSPC, EIO ...)"
    ),
    "unsent_at_stop": Family("frames_unsent_at_stop", "Frames lost at a stop"),
    "reconnects": Family("reconnects", "Connections lost and replaced", ("exchange", "reason")),
    "rollovers": Family("rollovers", "Connections rolled over make-before-break"),
    "connections": Family("connections", "Connections opened to the venues"),
    "silence_timeouts": Family("silence_timeouts", "Connections replaced for silence"),
    "oversized_frames": Family("oversized_frames", "Connections ended by an oversized frame"),
    "truncated_frames": Family("truncated_frames", "Connections that ended inside a frame"),
    "trims": Family("stream_trims", "XTRIM calls of the stream retention"),
    "retention_dropped": Family(
        "retention_partitions_dropped", "Daily partitions dropped by the PostgreSQL retention"
    ),
    "retention_skipped": Family(
        "retention_skipped", "Retention steps skipped: a lock not granted in time"
    ),
    # consumer
    "trades": Family("trade_rows_committed", "Trade rows in committed batches"),
    "quotes": Family("quote_rows_committed", "Quote rows in committed batches"),
    "rows_new": Family("rows_inserted", "Rows inserted (new natural keys)"),
    "rows_duplicate": Family("rows_duplicate", "Rows skipped: their natural key was stored"),
    "dead": Family("dead_letters", "Frames dead-lettered", ("reason",)),
    "acked": Family("entries_acked", "Stream entries acknowledged after their commit"),
    "frames": Family("frames_committed", "Frames whose rows were committed"),
    "batches": Family("batches", "Batches committed"),
    "control": Family("control_frames", "Control frames acked and counted", ("kind",)),
    "isolations": Family("isolations", "Batches split to find rows PostgreSQL refused"),
    "retries": Family("retries", "Operations retried", ("kind",)),
    "left_pending": Family("entries_left_pending", "Entries left pending at a stop"),
    "deleted_pending": Family("entries_deleted_pending", "Pending entries trimmed away"),
    "over_budget": Family("entries_over_budget", "Entries delivered too often, dead-lettered"),
    "claimed": Family("entries_claimed", "Entries claimed from dead consumers"),
    "claimed_deleted": Family("claimed_deleted", "Claimed entries already trimmed away"),
    "gaps_opened": Family("gaps_opened", "Gaps found in the stored trades", _EX),
    "gaps_filled": Family("gaps_filled", "Gaps backfilled completely", _EX),
    "gaps_exchange_hole": Family("gaps_exchange_hole", "Gaps the venue has no trades for", _EX),
    "gaps_unfillable": Family("gaps_unfillable", "Gaps the venue cannot serve", _EX),
    "gaps_open": Family("gaps_retried", "Backfill tries that left a gap open", _EX),
    "backfill_rows": Family("backfill_rows", "Rows inserted by backfill", _EX),
    "flagged": Family(
        "rows_flagged", "Rows stored with an abnormal-row flag, per check", ("check", "exchange")
    ),
}

GAUGES: dict[str, Family] = {
    "buffered": Family("buffered_frames", "Frames in the producer's memory buffer"),
    "buffered_bytes": Family("buffered_bytes", "Bytes of the frames in the producer's memory"),
    "spilled": Family("spill_frames", "Frames waiting in the disk spill"),
    "spill_bytes": Family("spill_bytes", "Bytes of the disk spill"),
    "redis_away": Family("redis_away", "1 while the producer finds Redis away or refusing writes"),
    "spill_blocked": Family(
        "spill_blocked", "1 while the feeds do not read: the spill is full or cannot be written"
    ),
    "retention_held_back": Family(
        "retention_held_back_frames", "Frames kept past the retention: not acked by a group"
    ),
    "lag": Family("group_lag", "Entries not yet delivered to the group", _EX),
    "pending": Family("group_pending", "Entries delivered to the group, not acked", _EX),
    "lag_seconds": Family("group_lag_seconds", "Age of the group's oldest unprocessed entry", _EX),
    "gaps_open": Family("gaps_open", "Gaps open or being backfilled", _EX),
    "redis_memory_used": Family(
        "redis_memory_used_ratio", "used_memory / maxmemory of Redis (the fullest server)"
    ),
    "redis_may_evict": Family(
        "redis_may_evict", "1 while Redis' maxmemory-policy may evict the streams (allkeys-*)"
    ),
}


def reason_class(reason: str) -> str:
    """A dead letter's reason as a bounded label: its family, never its text."""
    for prefix, label in _REASONS:
        if reason.startswith(prefix):
            return label
    return "other"


_REASONS = (
    ("invalid", "invalid"),
    ("bad envelope", "bad_envelope"),
    ("bad marker", "bad_marker"),
    ("processing failed", "parser_error"),
    ("postgres rejected", "postgres_rejected"),
    ("delivered ", "over_budget"),
    ("unknown exchange", "unknown_exchange"),
    ("receive time", "bad_time"),
    ("marker time", "bad_time"),
    ("entry has no fields", "bad_envelope"),
)


class Histogram:
    """Bucket counts with a weighted ``observe`` (a batch of N frames observes N at once)."""

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

    def family(self, name: str, help: str, labels: dict[str, str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, help, labels=list(labels))
        cumulative, pairs = 0, []
        for bound, count in zip(self.buckets, self.counts, strict=False):
            cumulative += count
            pairs.append((f"{bound:g}", cumulative))
        pairs.append(("+Inf", self.n))
        family.add_metric(list(labels.values()), pairs, self.total)
        return family


Check = Callable[[], tuple[bool, str]]  # (ok, why) for /healthz or /readyz


class Metrics:
    """Named counters and gauges and three histograms for one process (``producer``,
    ``consumer``, ``backfill``, ...), exposed with the label ``process``."""

    def __init__(self, process: str) -> None:
        self.process = process
        self.counters: Counter[str] = Counter()
        self.gauges: dict[str, float] = {}
        self.latency = Histogram()  # receive -> commit, one observation per frame
        self.batch_frames = Histogram(BATCH_BUCKETS)
        self.commit_seconds = Histogram(COMMIT_BUCKETS)
        self.collectors: list[Callable[[], Iterable[Metric]]] = []  # more families at scrape
        self.live: dict[str, Check] = {}  # /healthz: the process makes progress
        self.ready: dict[str, Check] = {}  # /readyz: it can take work now
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def inc(self, name: str, value: int = 1) -> None:
        with self._lock:  # several writer threads count the same names
            self.counters[name] += value

    def inc_many(self, counts: Iterable[tuple[str, int]]) -> None:
        """Several counters under one lock (a batch's, at its ack)."""
        with self._lock:
            counters = self.counters
            for name, value in counts:
                counters[name] += value

    def set(self, name: str, value: float) -> None:
        self.gauges[name] = value

    def drop(self, prefix: str) -> None:
        """Forget the gauges named ``prefix`` or ``prefix:...`` (no longer this process's)."""
        for name in [n for n in self.gauges if n == prefix or n.startswith(prefix + ":")]:
            self.gauges.pop(name, None)

    def summary(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.counters.items())]
        parts += [f"{k}={v:g}" for k, v in sorted(self.gauges.items())]
        if self.latency.n:
            parts.append(
                f"latency_p50<={self.latency.quantile(0.5) * 1e3:g}ms "
                f"p99<={self.latency.quantile(0.99) * 1e3:g}ms"
            )
        return " ".join(parts)

    def prometheus(self) -> str:
        return generate_latest(self.registry).decode()

    def check(self, checks: dict[str, Check]) -> tuple[bool, str]:
        """All of ``checks`` (each one's reason on its own line)."""
        ok, lines = True, []
        for name, fn in checks.items():
            try:
                good, why = fn()
            except Exception as exc:  # a check that fails is a failed check, not a 500
                good, why = False, f"check failed: {exc!r}"
            ok = ok and good
            lines.append(f"{name}: {'ok' if good else 'FAIL'}{': ' + why if why else ''}")
        return ok, "\n".join(lines) + "\n"


class Progress:
    """A ``/healthz`` check: the loop marked progress within ``within_s`` (the way arq records
    its health from inside its loop). ``beat()`` is a time read and an assignment."""

    def __init__(self, what: str, within_s: float) -> None:
        self.what = what
        self.within_s = within_s
        self.at = time.monotonic()

    def beat(self) -> None:
        self.at = time.monotonic()

    def __call__(self) -> tuple[bool, str]:
        age = time.monotonic() - self.at
        return age <= self.within_s, f"{self.what} {age:.1f} s ago (at most {self.within_s:g} s)"


def _labels(family: Family, name: str) -> list[str] | None:
    """The label values in ``name`` (``metric:value`` or ``metric:a:b``) for ``family``."""
    _, _, rest = name.partition(":")
    values = rest.split(":", len(family.labels) - 1) if rest else []
    if len(values) != len(family.labels):
        return None
    return values


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        process = {"process": m.process}
        with m._lock:
            counters = dict(m.counters)
        yield from _families(counters, COUNTERS, CounterMetricFamily, process)
        yield from _families(dict(m.gauges), GAUGES, GaugeMetricFamily, process)
        yield m.latency.family(
            "tickvault_receive_to_commit_seconds",
            "Receive time to commit, per frame",
            process,
        )
        if m.batch_frames.n:
            yield m.batch_frames.family(
                "tickvault_batch_frames", "Frames per committed batch", process
            )
            yield m.commit_seconds.family(
                "tickvault_commit_seconds",
                "Write and dead-letter time per batch (acks travel with reads)",
                process,
            )
        for more in m.collectors:
            yield from more()


def _families(
    values: Mapping[str, float],
    catalogue: dict[str, Family],
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    process: dict[str, str],
) -> Iterator[Metric]:
    out: dict[str, Metric] = {}
    for name, value in sorted(values.items()):
        key = name.partition(":")[0]
        family = catalogue.get(key)
        if family is None:
            continue  # an unknown name is counted in the log summary only
        labels = _labels(family, name)
        if labels is None:
            continue
        metric = out.get(key)
        if metric is None:
            metric = out[key] = kind(
                f"tickvault_{family.name}", family.help, labels=["process", *family.labels]
            )
        metric.add_metric([process["process"], *labels], value)  # type: ignore[attr-defined]
    yield from out.values()


def serve_metrics(metrics: Metrics, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` in a daemon thread; returns the server
    (call ``shutdown()``). The health pages answer 200 or 503 with one line per check."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            status, ctype = 200, "text/plain; charset=utf-8"
            if path == "/metrics":
                body = metrics.prometheus().encode()
                ctype = "text/plain; version=0.0.4; charset=utf-8"
            elif path in ("/healthz", "/readyz"):
                ok, text = metrics.check(metrics.live if path == "/healthz" else metrics.ready)
                status, body = (200 if ok else 503), text.encode()
            else:
                status, body = 404, b"not found: /metrics /healthz /readyz\n"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:  # (not a server away: a wrong or taken port, a start to refuse)
        raise ConfigError(
            "--metrics-port",
            f"cannot serve the metrics on {host}:{port}: {exc.strerror or exc}",
            "choose a free port, or stop the process that holds it",
        ) from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
