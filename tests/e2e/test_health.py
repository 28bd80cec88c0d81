"""/metrics, /healthz and /readyz of a live producer and consumer, and the producer's feed
health check when a feed stays down."""

from __future__ import annotations

import time
import types
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.metrics import Metrics
from common.servers import free_port
from producer.feed_metrics import FeedMetrics
from tests.conftest import SLOW
from tests.e2e.harness import Feed, pipeline
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name + str(sorted(s.labels.items()))] = s.value
    return out


def test_a_live_pipeline_is_healthy_ready_and_counts_per_feed(
    redis_url: str, database_url: str, work_dir
) -> None:
    pport, cport = free_port(), free_port()
    with pipeline(
        work=work_dir, redis_url=redis_url, database_url=database_url,
        feeds=[Feed("binance", ["BTC-USDT"])],
    ) as p:  # fmt: skip
        p.simulator(rate=100, trades=0)
        p.start_consumer(args=[f"--metrics-port={cport}"])
        p._spawn("producer", "producer", f"--metrics-port={pport}")
        p.wait_rows(100, timeout=30 * SLOW)
        wait_for(lambda: get(pport, "/healthz")[0] == 200, timeout=10, what="producer /healthz")
        assert get(pport, "/readyz")[0] == 200
        wait_for(lambda: get(cport, "/healthz")[0] == 200, timeout=10, what="consumer /healthz")
        assert get(cport, "/readyz") == (200, "running: ok: reading\n")
        produced = get(pport, "/metrics")[1]
        assert "# HELP tickvault_frames_received_total" in produced
        got = {k: v for k, v in samples(produced).items() if "'binance'" in k}
        feed = [k for k in got if k.startswith("tickvault_feed_connected[")]
        assert len(feed) == 1 and got[feed[0]] == 1.0, got
        received = feed[0].replace("tickvault_feed_connected", "tickvault_frames_received_total")
        assert got[received] > 0
        size = feed[0].replace("tickvault_feed_connected", "tickvault_received_bytes_total")
        assert got[size] >= got[received]  # at least a byte a frame
        assert "tickvault_redis_written_bytes_total" in produced
        consumed = get(cport, "/metrics")[1]
        assert "# TYPE tickvault_receive_to_commit_seconds histogram" in consumed
        assert "tickvault_rows_inserted_total" in consumed
        assert "tickvault_batch_frames_bucket" in consumed


def test_a_feed_down_past_its_backoff_cap_is_unhealthy() -> None:
    now = time.monotonic()
    session = types.SimpleNamespace(
        label="okx/0", open=[], state="backoff", backoff_max_s=30.0, down_since=now - 200,
        frames_closed=5, venue=types.SimpleNamespace(exchange="okx"),
    )  # fmt: skip
    feeds = FeedMetrics([session], Metrics("producer"))  # type: ignore[list-item]
    ok, why = feeds.feeds_healthy()
    assert not ok and why.startswith("okx/0 backoff for 200 s")
    session.down_since = now - 10
    assert feeds.feeds_healthy()[0]
