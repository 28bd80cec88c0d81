"""Metrics on prometheus-client: every family named by convention with HELP and TYPE, bounded
labels, every name the code counts has a family, health pages answer 200 or 503."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.metrics import COUNTERS, GAUGES, Metrics, Progress, reason_class, serve_metrics
from common.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
# names counted without a label that also have a labelled twin (the log summary's totals)
TOTALS_ONLY = {"published", "reconnects", "dead"}


def test_every_family_is_named_by_convention_with_help_and_type() -> None:
    m = Metrics("consumer")
    for name, family in COUNTERS.items():
        m.inc(name + "".join(":x" for _ in family.labels))
    for name, family in GAUGES.items():
        m.set(name + "".join(":x" for _ in family.labels), 1.0)
    m.batch_frames.observe(10)
    text = m.prometheus()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert len(families) == len(COUNTERS) + len(GAUGES) + 3
    for f in families.values():
        assert f.name.startswith("tickvault_") and f.documentation, f.name
        assert f.type in ("counter", "gauge", "histogram")
        for sample in f.samples:
            assert sample.labels["process"] == "consumer"
            if f.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
    assert "# HELP tickvault_receive_to_commit_seconds" in text
    assert "# TYPE tickvault_batch_frames histogram" in text


def test_every_name_the_code_counts_has_a_family() -> None:
    used: set[tuple[str, str]] = set()
    pattern = re.compile(r"""\.(inc|set)\(\s*f?["']([a-z_]+)""")
    for path in [*ROOT.glob("common/**/*.py"), *ROOT.glob("producer/*.py"),
                 *ROOT.glob("consumer/*.py")]:  # fmt: skip
        for kind, name in pattern.findall(path.read_text()):
            used.add((kind, name.rstrip("_")))
    assert used, "the pattern found nothing"
    for kind, name in sorted(used):
        if name.startswith("gaps") and kind == "inc":
            continue  # f"gaps_{status}": every status has a family (below)
        catalogue = COUNTERS if kind == "inc" else GAUGES
        assert name in catalogue or name in TOTALS_ONLY, f"{kind}({name!r}) has no family"
    for status in ("filled", "exchange_hole", "unfillable", "open", "opened"):
        assert f"gaps_{status}" in COUNTERS


def test_label_values_are_escaped_and_reasons_bounded() -> None:
    m = Metrics('con"sumer\n')
    m.inc('control:a"b\\c')
    text = m.prometheus()
    assert 'kind="a\\"b\\\\c"' in text and 'process="con\\"sumer\\n"' in text
    assert reason_class("invalid: price 'x' is not a decimal") == "invalid"
    assert reason_class("delivered 6 times: boom") == "over_budget"
    assert reason_class("anything a frame could say") == "other"


def test_health_pages_answer_200_or_503_with_each_check() -> None:
    m = Metrics("consumer")
    progress = Progress("last cycle", within_s=0.2)
    m.live["progress"] = progress
    m.ready["running"] = lambda: (True, "reading")
    port = free_port()
    server = serve_metrics(m, port, host="127.0.0.1")

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        assert get("/healthz")[0] == 200
        assert get("/readyz") == (200, "running: ok: reading\n")
        time.sleep(0.3)
        status, body = get("/healthz")
        assert status == 503 and body.startswith("progress: FAIL: last cycle")
        progress.beat()
        assert get("/healthz")[0] == 200
        m.ready["broken"] = lambda: 1 / 0  # type: ignore[assignment,return-value]
        status, body = get("/readyz")
        assert status == 503 and "check failed: ZeroDivisionError" in body
        assert get("/nope")[0] == 404
        assert get("/metrics")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("name", ["published", "reconnects", "dead"])
def test_totals_without_their_label_stay_in_the_summary_only(name: str) -> None:
    m = Metrics("p")
    m.inc(name, 3)
    assert f"{name}=3" in m.summary()
    assert "tickvault_" + COUNTERS[name].name not in m.prometheus()
