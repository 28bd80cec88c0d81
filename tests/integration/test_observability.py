"""deploy/prometheus and deploy/grafana against a real Prometheus (Debian's ``prometheus``
package: ``prometheus`` and ``promtool`` on PATH; skipped without it).

- ``promtool`` accepts the scrape config and the alert rules, and the rules' unit tests
  (``deploy/prometheus/alerts_test.yml``: every alert fires on synthetic series, and does not on
  healthy ones) pass; a rule made wrong makes them fail.
- Every metric the dashboard and the rules name is one the processes export (their catalogue
  in ``common.metrics``), with the labels they aggregate by.
- Live: simulator -> producer -> Redis -> consumer -> PostgreSQL, scraped every second by
  Prometheus with the deploy config's jobs and rules; a dead letter, a cut feed (a reconnect, a
  gap, its backfill) and a Redis outage (the spill, the consumer's retries) happen; then every
  PromQL query of every dashboard panel returns series through the HTTP API, the rules load
  and evaluate without error, and ConsumerDown is pending for a consumer target that does not
  answer (not for the one that does).

The producer's per-feed families (``tickvault_feed_connected``,
``tickvault_feed_last_frame_age_seconds``, ``tickvault_frames_received_total``) are tolerated
when the producer does not export them (yet): their panels are then not queried. No other
absence is.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from common.envelope import raw_key
from common.metrics import COUNTERS, GAUGES, Metrics
from common.servers import RedisServer, free_port
from tests.conftest import SLOW
from tests.e2e.harness import Feed, Pipeline, pipeline
from tests.waiting import redis_answers, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.own_servers]

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tickvault.json"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None, reason="install Debian's prometheus package"
)

ALERTS = {
    "ProducerDown", "ConsumerDown", "FeedSilent", "GroupLagGrowing", "DeadLettersRising",
    "GapsOpen", "FramesLost", "RedisAway", "FeedsBlocked", "RedisMayEvict", "RedisMemoryHigh",
}  # fmt: skip
JOBS = {"tickvault-producer", "tickvault-consumer"}
# Added to the producer by the feed sessions; tolerated when absent (see the module docstring).
FEED_FAMILIES = {
    "tickvault_feed_connected": {"exchange", "feed"},
    "tickvault_feed_last_frame_age_seconds": {"exchange", "feed"},
    "tickvault_frames_received_total": {"exchange", "feed"},
}
RATE_INTERVAL = "30s"  # Grafana's $__rate_interval, for 1 s scrapes: two samples and more
METRIC = re.compile(r"\b(tickvault_\w+|up)\b")
BY = re.compile(r"\bby\s*\(([^)]*)\)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=30 * SLOW, cwd=ROOT
    )


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, also those inside (collapsed) rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panels(panel) if "panels" in panel else ()


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard target, Grafana's interval filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (p["title"], t["expr"].replace("$__rate_interval", RATE_INTERVAL))
        for p in panels(dashboard)
        for t in p.get("targets", ())
    ]


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [r for g in rules["groups"] for r in g["rules"]]


def exported_families() -> dict[str, set[str]]:
    """Every sample name a process can export (from its catalogue, each name counted once
    with its labels) -> its label names."""
    m = Metrics("consumer")
    for key, family in COUNTERS.items():
        m.inc(":".join([key, *["x"] * len(family.labels)]))
    for key, family in GAUGES.items():
        m.set(":".join([key, *["x"] * len(family.labels)]), 1.0)
    m.latency.observe(0.1)
    m.batch_frames.observe(10)
    m.commit_seconds.observe(0.01)
    out: dict[str, set[str]] = {"up": {"job", "instance"}}
    for family in text_string_to_metric_families(m.prometheus()):
        for sample in family.samples:
            out[sample.name] = set(sample.labels) | {"job", "instance"}
    for name, labels in FEED_FAMILIES.items():
        out.setdefault(name, labels | {"process", "job", "instance"})
    return out


# -- promtool ----------------------------------------------------------------------------------
@needs_prometheus
def test_promtool_accepts_the_scrape_config_and_the_rules() -> None:
    config = promtool("check", "config", "deploy/prometheus/prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout
    rules = promtool("check", "rules", "deploy/prometheus/alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"{len(ALERTS)} rules found" in rules.stdout
    scrape = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert {job["job_name"] for job in scrape["scrape_configs"]} == JOBS  # the rules' job names


def test_every_alert_says_what_happened_and_what_to_do() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


@needs_prometheus
def test_each_alert_fires_on_synthetic_series_and_not_on_healthy_ones() -> None:
    done = promtool("test", "rules", "deploy/prometheus/alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    checks = [c for t in tests for c in t.get("alert_rule_test", ())]
    fires = {c["alertname"] for c in checks if c["exp_alerts"]}
    quiet = {c["alertname"] for c in checks if not c["exp_alerts"]}
    assert fires == ALERTS and quiet == ALERTS  # each alert tested both ways


@needs_prometheus
def test_a_wrong_rule_fails_its_unit_tests(tmp_path: Path) -> None:
    """The unit tests have teeth: a FeedSilent that waits ten times longer, or a
    DeadLettersRising that misses a counter appearing at 1, is caught."""
    for old, new, alert in [
        ("last_frame_age_seconds > 120", "last_frame_age_seconds > 1200", "FeedSilent"),
        ("unless tickvault_dead_letters_total offset 10m", "unless tickvault_dead_letters_total",
         "DeadLettersRising"),
    ]:  # fmt: skip
        work = tmp_path / alert
        shutil.copytree(PROMETHEUS_DIR, work)
        text = (work / "alerts.yml").read_text()
        assert old in text
        (work / "alerts.yml").write_text(text.replace(old, new))
        done = promtool("test", "rules", str(work / "alerts_test.yml"))
        assert done.returncode != 0
        assert f"alertname: {alert}" in done.stdout + done.stderr


# -- names ---------------------------------------------------------------------------------------
def test_dashboard_and_rules_name_only_exported_metrics_and_labels() -> None:
    families = exported_families()
    exprs = queries() + [(r["alert"], r["expr"]) for r in alert_rules()]
    regex_names = re.compile(r'__name__=~"([^"]+)"')
    for where, expr in exprs:
        names = set(METRIC.findall(expr))
        for pattern in regex_names.findall(expr):  # {__name__=~"tickvault_(a|b)_total"}
            matched = {n for n in families if re.fullmatch(pattern, n)}
            assert len(matched) >= 2, (where, pattern)
            names |= matched
        unknown = names - set(families)
        assert not unknown, f"{where}: {unknown} not exported"
        labels = set().union(*(families[n] for n in names)) | {"le"}
        for group in BY.findall(expr):
            by = {label.strip() for label in group.split(",") if label.strip()}
            assert by <= labels, f"{where}: by {by - labels}: not a label of {names}"
    titles = [title for title, _ in queries()]
    assert len(titles) >= 20
    for wanted in ("tickvault_frames_written_total", "tickvault_rows_inserted_total",
                   "tickvault_rows_duplicate_total", "tickvault_receive_to_commit_seconds_bucket",
                   "tickvault_group_lag", "tickvault_group_lag_seconds",
                   "tickvault_dead_letters_total", "tickvault_reconnects_total",
                   "tickvault_feed_connected", "tickvault_spill_bytes", "tickvault_gaps_open",
                   "tickvault_backfill_rows_total"):  # fmt: skip
        assert any(wanted in METRIC.findall(expr) for _, expr in queries()), wanted


# -- live --------------------------------------------------------------------------------------
class Prom:
    """A Prometheus process on 127.0.0.1 and its HTTP API."""

    def __init__(self, work: Path, config: dict[str, Any]) -> None:
        assert PROMETHEUS is not None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        path = work / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.log_path = work / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={path}", f"--storage.tsdb.path={work / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.http = httpx.Client(base_url=self.url, timeout=5)
        wait_for(self.ready, timeout=20, what="prometheus ready")

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()
        try:
            return self.http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def get(self, path: str, **params: str) -> Any:
        answer = self.http.get(path, params=params)
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", (promql, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def scrape_config(targets: dict[str, list[str]]) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with 1 s scrapes and evaluations, its own rule file,
    and fixed targets for each job in place of the containers' DNS names."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s"}
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    return config


def exposition(port: int) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.TransportError:
        return ""


@needs_prometheus
@pytest.mark.e2e
def test_every_dashboard_query_answers_from_a_live_pipeline(
    own_redis: RedisServer, database_url: str, work_dir: Path
) -> None:
    producer_port, consumer_port, nobody_port = free_port(), free_port(), free_port()
    with pipeline(
        work=work_dir, redis_url=own_redis.url, database_url=database_url,
        feeds=[Feed("binance", ["BTC-USDT"])],
        # a cut feed stays away 1 s: ~50 trades the venue sent meanwhile make a gap to backfill
        producer={"backoff_initial_s": 1.0, "backoff_max_s": 1.0},
        backfill={"every_s": 0.5, "settle_s": 1.0},
    ) as p:  # fmt: skip
        sim = p.simulator(rate=50, trades=100_000)
        p.start_consumer(args=[f"--metrics-port={consumer_port}"])
        p._spawn("producer", "producer", f"--metrics-port={producer_port}")
        for port in (producer_port, consumer_port):
            wait_for(lambda port=port: exposition(port), what=f"/metrics on {port}")
        prom = Prom(
            work_dir,
            scrape_config({
                "tickvault-producer": [f"127.0.0.1:{producer_port}"],
                # a second consumer target that nothing answers: ConsumerDown's bad case
                "tickvault-consumer": [f"127.0.0.1:{consumer_port}", f"127.0.0.1:{nobody_port}"],
            }),
        )  # fmt: skip
        try:
            _exercise(p, prom, sim, own_redis, producer_port)
            _check_queries(p, prom, producer_port)
            _check_rules(prom, consumer_port, nobody_port)
        finally:
            prom.close()


def _dead_letter(client: redis.Redis) -> None:
    client.xadd(raw_key("binance"), {b"f": b"not an envelope"})  # dead-lettered: bad_envelope


def _exercise(
    p: Pipeline, prom: Prom, sim: subprocess.Popen[bytes], own_redis: RedisServer, port: int
) -> None:
    """A dead letter, a cut feed, a Redis outage and a second dead letter, each seen by
    Prometheus before the next (so that a counter is seen rising, not only appearing)."""
    client = redis.Redis.from_url(own_redis.url)
    try:
        client.config_set("maxmemory", 1 << 30)  # a limit: tickvault_redis_memory_used_ratio
        p.wait_rows(50, timeout=30)
        _dead_letter(client)
        wait_for(lambda: prom.query("tickvault_dead_letters_total"), what="a dead letter scraped")
        sim.send_signal(signal.SIGUSR1)  # the venue drops its connections: a reconnect, a gap
        own_redis.stop()  # the producer spills; the consumer retries
        wait_for(lambda: "tickvault_spill_bytes{" in exposition(port), what="the spill")
        wait_for(lambda: prom.query("tickvault_spill_bytes > 0"), what="the spill scraped")
        own_redis.start()
        wait_for(lambda: redis_answers(client), what="redis back")
        client.config_set("maxmemory", 1 << 30)  # (a restart forgets it): the memory panel
        _dead_letter(client)
        wait_for(
            lambda: prom.query("sum(increase(tickvault_dead_letters_total[1m])) > 0"),
            what="the dead letters counter rising",
        )
        wait_for(lambda: p.query("SELECT count(*) FROM gaps WHERE status = 'filled'")[0][0] > 0,
                 timeout=30, what="the cut's gap backfilled")  # fmt: skip
        p.check_alive()
    finally:
        client.close()


def _check_queries(p: Pipeline, prom: Prom, producer_port: int) -> None:
    exported = {f.name for f in text_string_to_metric_families(exposition(producer_port))}
    missing_feed = {
        n for n in FEED_FAMILIES if n.removesuffix("_total") not in exported and n not in exported
    }
    todo = [(title, q) for title, q in queries() if not missing_feed & set(METRIC.findall(q))]
    assert len(todo) >= len(queries()) - 3

    def empty() -> list[tuple[str, str]]:
        p.check_alive()
        return [(title, q) for title, q in todo if not prom.query(q)]

    unanswered: list[tuple[str, str]] = []

    def all_answer() -> bool:
        unanswered[:] = empty()
        return not unanswered

    try:
        wait_for(all_answer, timeout=40, interval=0.5, what="every dashboard query to answer")
    except AssertionError:
        raise AssertionError(f"dashboard queries with no series: {unanswered}") from None
    written = prom.query(f"sum(rate(tickvault_frames_written_total[{RATE_INTERVAL}]))")
    assert float(written[0]["value"][1]) > 0
    inserted = prom.query(f"sum(rate(tickvault_rows_inserted_total[{RATE_INTERVAL}]))")
    assert float(inserted[0]["value"][1]) > 0
    assert prom.query("sum(tickvault_backfill_rows_total) > 0")  # the cut's gap, from REST
    assert prom.query('sum(tickvault_dead_letters_total{reason="bad_envelope"}) == 2')


def _check_rules(prom: Prom, consumer_port: int, nobody_port: int) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = prom.get("/api/v1/rules", type="alert")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    rules = wait_for(evaluated, what="the alert rules evaluated")
    assert {r["name"] for r in rules} == ALERTS
    assert all(r["health"] == "ok" and not r.get("lastError") for r in rules), rules

    def alerts() -> dict[tuple[str, str], str]:
        got = prom.get("/api/v1/alerts")["alerts"]
        return {(a["labels"]["alertname"], a["labels"].get("instance", "")): a["state"]
                for a in got}  # fmt: skip

    nobody = f"127.0.0.1:{nobody_port}"
    seen = wait_for(lambda: alerts().get(("ConsumerDown", nobody)), what="ConsumerDown pending")
    assert seen == "pending"  # `for: 1m`: the target that answers nothing is on its way
    now = alerts()
    assert ("ConsumerDown", f"127.0.0.1:{consumer_port}") not in now, now
    assert not any(name == "ProducerDown" for name, _ in now), now
    assert now.get(("DeadLettersRising", "")) == "firing", now  # two, seen rising
