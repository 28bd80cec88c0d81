"""The peer scenario: tickvault side by side with cryptofeed 2.4.1, fed the same frames by the same
server and timed the same way.

Per run, one collector: its tables are emptied, the project's simulator (``bench.peer_sim``:
Binance dialect, one symbol, ``aggTrade`` events) starts on 127.0.0.1 and holds its trades; the
collector starts and subscribes (cryptofeed: ``/stream?streams=btcusdt@aggTrade``; tickvault:
consumer, then producer with feed option ``trades = "aggTrade"``, SUBSCRIBE on ``/stream``);
after a settle second its CPU is sampled and the simulator sends N trades, paced or at once,
until all N are in PostgreSQL. Then, from the rows themselves:

- CPU: on-CPU time of the collector's process trees between go and done (``bench.peer_cpu``):
  cryptofeed's one process; tickvault's producer, consumer and its Redis server. PostgreSQL's
  (all its processes, both share it) is reported apart. CPU per row = CPU s / rows.
- latency per row: PostgreSQL's commit time of the row's transaction
  (``pg_xact_commit_timestamp(xmin)``, ``track_commit_timestamp = on``) minus the trade's time in
  the frame (``T`` = ``E``, whole ms, so +0..1 ms of rounding on both), p50 and p99, after a
  warm-up second on paced runs (cryptofeed opens its database connection at its first row).
- rows/s: distinct trades / (the last one's commit - the first trade's time).
- missing, duplicate and wrong rows (price, amount, side, symbol, against the simulator's
  deterministic trades).

Runs alternate (cryptofeed, tickvault, tickvault, cryptofeed, ...); figures are medians.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import redis

from common.servers import free_port

from . import peer_report, peer_venv
from .peer_cpu import CpuMeter, peak_rss_mb
from .peer_report import CRYPTOFEED, TICKVAULT
from .procs import ROOT, Proc, spawn
from .scenarios import KEY, Env

SYMBOL = "BTC-USDT"
CF_TABLE = "cryptofeed_trades"
# cryptofeed's examples/postgres_tables.sql (trades): TradePostgres inserts positional VALUES
# (DEFAULT, timestamp, receipt_timestamp, exchange, symbol, side, amount, price, trade_id, type).
CF_DDL = (
    f"CREATE TABLE {CF_TABLE} (id serial PRIMARY KEY, timestamp TIMESTAMP, "
    "receipt_timestamp TIMESTAMP, exchange VARCHAR(32), symbol VARCHAR(32), side VARCHAR(8), "
    "amount NUMERIC(64, 32), price NUMERIC(64, 32), trade_id VARCHAR(64), "
    "order_type VARCHAR(32))"
)
SETTLE_S = 1.0  # after both ends are ready, before go (as cfbench)
WARMUP_S = 1.0  # paced runs: latency from the trades after the first second
POLL_S = 0.1
DUP_SETTLE_S = 0.5  # after the last row, before the stop: room for a late duplicate
READY_TIMEOUT_S = 60.0
GRACE_S = 60.0  # a run gives up this long after its last trade was due

# One row shape for both tables: (trade id, transaction, commit time, trade time, receive time,
# values). cryptofeed stores str(a), the trade time and its receipt time (time.time() when it
# read the frame) as UTC TIMESTAMPs; tickvault "agg-<a>", ts and recv_ts (the producer's).
ROWS = {
    CRYPTOFEED: (
        "SELECT CASE WHEN trade_id ~ '^[0-9]+$' THEN trade_id::bigint END AS tid, "
        "xmin::text AS txid, "
        "extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 AS committed, "
        "extract(epoch FROM timestamp)::float8 AS event_ts, "
        "extract(epoch FROM receipt_timestamp)::float8 AS receipt_ts, price, amount, side, "
        f"(exchange = 'BINANCE' AND symbol = '{SYMBOL}') AS named FROM {CF_TABLE}"
    ),
    TICKVAULT: (
        "SELECT CASE WHEN trade_id ~ '^agg-[0-9]+$' THEN substr(trade_id, 5)::bigint END AS tid, "
        "xmin::text AS txid, "
        "extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 AS committed, "
        "extract(epoch FROM ts)::float8 AS event_ts, "
        "extract(epoch FROM recv_ts)::float8 AS receipt_ts, price, amount, side, "
        f"(exchange = 'binance' AND symbol = '{SYMBOL}') AS named FROM trades"
    ),
}
# common.simulator.engine's trade n: price 100.00..125.00 and back by a cent, amount
# 0.00001..0.00997, taker side sell for n % 3 == 0.
# (%% is the modulo operator in a query with parameters)
EXPECTED = (
    "named AND price = (10000 + CASE WHEN tid %% 5000 < 2500 THEN tid %% 5000 "
    "ELSE 5000 - tid %% 5000 END) / 100.0 AND amount = (tid %% 997 + 1) / 100000.0 "
    "AND side = CASE WHEN tid %% 3 = 0 THEN 'sell' ELSE 'buy' END"
)
FIRST = (
    "WITH r AS ({rows}), f AS (SELECT DISTINCT ON (tid) tid, committed, event_ts, receipt_ts "
    "FROM r "
    "WHERE tid BETWEEN 1 AND %(n)s ORDER BY tid, committed) "
)
STATS = FIRST + (
    "SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM f), "
    "(SELECT count(*) FROM r WHERE tid IS NULL OR tid NOT BETWEEN 1 AND %(n)s), "
    "(SELECT count(*) FROM r WHERE tid BETWEEN 1 AND %(n)s AND NOT coalesce({ok}, false)), "
    "(SELECT count(DISTINCT txid) FROM r), (SELECT min(event_ts) FROM f), "
    "(SELECT max(committed) FROM f)"
)
LATENCIES = FIRST + (
    "SELECT (committed - event_ts) * 1000, (receipt_ts - event_ts) * 1000 FROM f "
    "WHERE event_ts >= (SELECT min(event_ts) FROM f) + %(warmup)s"
)
# The longest time between two of the collector's commits (of the rows LATENCIES measures):
# a commit that waits (here, mostly a WAL fsync of this VM's disk taking 50-800 ms now and then)
# shows as a gap, and every row that arrived meanwhile waits as long: one such gap in a 10 s
# run at 1,000/s is its p99.
COMMIT_GAP = FIRST + (
    "SELECT max(c - p) * 1000 FROM (SELECT c, lag(c) OVER (ORDER BY c) AS p FROM "
    "(SELECT DISTINCT committed AS c FROM f "
    "WHERE event_ts >= (SELECT min(event_ts) FROM f) + %(warmup)s) d) g"
)
# Cheap progress, then the exact count once it says done.
PROGRESS = {
    CRYPTOFEED: f"SELECT coalesce(max(id), 0) FROM {CF_TABLE}",
    # the highest id among the trades of the latest stored time: two index probes
    TICKVAULT: (
        "SELECT coalesce(max(substr(trade_id, 5)::bigint), 0) FROM trades "
        f"WHERE exchange = 'binance' AND symbol = '{SYMBOL}' AND trade_id LIKE 'agg-%' "
        "AND ts = (SELECT max(ts) FROM trades "
        f"WHERE exchange = 'binance' AND symbol = '{SYMBOL}')"
    ),
}
COUNT = {
    CRYPTOFEED: f"SELECT count(DISTINCT trade_id) FROM {CF_TABLE}",
    TICKVAULT: f"SELECT count(*) FROM trades WHERE exchange = 'binance' AND symbol = '{SYMBOL}'",
}


@dataclass(frozen=True)
class Scenario:
    name: str
    slug: str
    rate: float  # trades/s; 0: a burst, as fast as the simulator sends
    trades: int

    @property
    def warmup_s(self) -> float:
        return WARMUP_S if self.rate else 0.0

    @property
    def due_s(self) -> float:
        return self.trades / self.rate if self.rate else 0.0


def plan(rates: list[float], seconds: float, burst: int) -> list[Scenario]:
    out = [
        Scenario(f"{r:,.0f}/s paced", f"paced{r:.0f}", r, max(1, int(r * seconds))) for r in rates
    ]
    if burst > 0:
        out.append(Scenario(f"burst of {burst:,}", f"burst{burst}", 0.0, burst))
    return out


@dataclass
class Context:
    env: Env
    python: Path  # the peer venv's
    redis_pid: int | None  # tickvault's Redis when the bench started it (its CPU is tickvault's)
    postgres_pid: int | None


# -- processes ---------------------------------------------------------------------------------
def _popen(name: str, argv: list[str], run_dir: Path, env: Mapping[str, str] | None = None) -> Proc:
    log = run_dir / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            argv, cwd=ROOT, env=dict(env or os.environ), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    return Proc(name, popen, log)


def _log_lines(proc: Proc) -> list[str]:
    try:
        return proc.log.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _wait(check: Callable[[], bool], procs: list[Proc], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for p in procs:
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited ({p.popen.returncode}) before {what}; {p.log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.02)


def _simulator(scenario: Scenario, port: int, run_dir: Path) -> Proc:
    rate = scenario.rate or 10_000_000.0  # the burst: everything due at the first ticks
    argv = [sys.executable, "-m", "bench.peer_sim", f"--port={port}", f"--rate={rate}",
            f"--trades={scenario.trades}"]  # fmt: skip
    sim = _popen("simulator", argv, run_dir)
    _wait(lambda: any(line.startswith("ready") for line in _log_lines(sim)), [sim], 20, "ready")
    return sim


def subscribed(lines: list[str]) -> list[tuple[str, str]]:
    """(symbol, stream) of the ``subscribed`` lines ``bench.peer_sim`` printed."""
    return [
        (parts[1], parts[2])
        for parts in (line.split() for line in lines)
        if len(parts) == 3 and parts[0] == "subscribed"
    ]


def _cryptofeed(ctx: Context, port: int, run_dir: Path) -> list[Proc]:
    url = urlsplit(ctx.env.database_url)
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = unquote(url.password)
    argv = [
        str(ctx.python), str(ROOT / "bench" / "peer_collector.py"), f"--ws=ws://127.0.0.1:{port}",
        f"--host={url.hostname or '127.0.0.1'}", f"--port={url.port or 5432}",
        f"--user={unquote(url.username or 'postgres')}",
        f"--dbname={url.path.lstrip('/') or 'postgres'}", f"--table={CF_TABLE}",
        f"--symbol={SYMBOL}", f"--log={run_dir / 'feedhandler.log'}",
    ]  # fmt: skip
    return [_popen("cryptofeed", argv, run_dir, env)]


def tickvault_config(redis_url: str, database_url: str, port: int, spill: Path) -> str:
    """tickvault.toml for one run: one feed, Binance BTC-USDT trades read from ``aggTrade``."""
    q = json.dumps  # a TOML basic string
    return "\n".join(
        [
            f"[redis]\nurl = {q(redis_url)}\nmaxlen = 20000000\n",
            f"[database]\nurl = {q(database_url)}\n",
            f"[producer]\nspill_dir = {q(str(spill))}\n",
            '[[feeds]]\nexchange = "binance"',
            f"symbols = [{q(SYMBOL)}]",
            f"url = {q(f'ws://127.0.0.1:{port}')}",
            'options = { trades = "aggTrade" }\n',
        ]
    )


def _consumer_reads(ctx: Context) -> bool:
    r = ctx.env.redis()
    try:
        consumers: list[dict[str, Any]] = r.xinfo_consumers(KEY, "tickvault")
        return any(c["name"] in (b"peer", "peer") for c in consumers)
    except redis.ResponseError:  # no stream or group yet
        return False
    finally:
        r.close()


def _tickvault(ctx: Context, port: int, run_dir: Path) -> list[Proc]:
    config = run_dir / "tickvault.toml"
    config.write_text(
        tickvault_config(ctx.env.redis_url, ctx.env.database_url, port, run_dir / "spill")
    )
    consumer = spawn("consumer", ["consumer", "--name=peer"], run_dir, config)
    try:
        _wait(lambda: _consumer_reads(ctx), [consumer], READY_TIMEOUT_S, "consumer reading")
    except Exception:
        consumer.stop()
        raise
    return [consumer, spawn("producer", ["producer"], run_dir, config)]


# -- one run -----------------------------------------------------------------------------------
def _reset(ctx: Context) -> None:
    ctx.env.reset()  # flushes tickvault's Redis, truncates its tables
    with psycopg.connect(ctx.env.database_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {CF_TABLE}")
        conn.execute(CF_DDL)
        with contextlib.suppress(psycopg.Error):  # needs superuser or pg_checkpoint
            conn.execute("CHECKPOINT")


def _done(conn: psycopg.Connection[Any], collector: str, n: int) -> bool:
    row = conn.execute(PROGRESS[collector]).fetchone()
    if not row or int(row[0] or 0) < n:
        return False
    row = conn.execute(COUNT[collector]).fetchone()
    return row is not None and int(row[0]) >= n


def one_run(ctx: Context, collector: str, scenario: Scenario, run_dir: Path) -> dict[str, Any]:
    """Run ``collector`` through ``scenario`` once: its figures, status and details."""
    run_dir.mkdir(parents=True, exist_ok=True)
    _reset(ctx)
    port = free_port()
    sim = _simulator(scenario, port, run_dir)
    procs: list[Proc] = []
    try:
        procs = (_cryptofeed if collector == CRYPTOFEED else _tickvault)(ctx, port, run_dir)
        _wait(lambda: bool(subscribed(_log_lines(sim))), [sim, *procs], READY_TIMEOUT_S,
              "subscription")  # fmt: skip
        streams = subscribed(_log_lines(sim))
        if streams != [(SYMBOL, "aggTrade")]:
            raise RuntimeError(f"{collector} subscribed {streams}, not one {SYMBOL} aggTrade")
        time.sleep(SETTLE_S)
        mine = {p.name: [p.popen.pid] for p in procs}
        if collector == TICKVAULT and ctx.redis_pid:
            mine["redis"] = [ctx.redis_pid]  # tickvault's own server: part of its cost
        apart = {"simulator": [sim.popen.pid]}
        if ctx.postgres_pid:
            apart["postgres"] = [ctx.postgres_pid]
        meter = CpuMeter({**mine, **apart})
        meter.begin()
        go = time.time()
        sim.popen.send_signal(signal.SIGUSR2)
        status = _until_done(ctx, collector, scenario, procs)
        cpu = meter.end()
        rss = {p.name: round(peak_rss_mb(p.popen.pid), 1) for p in procs}
        time.sleep(DUP_SETTLE_S)
    finally:
        for p in reversed(procs):  # tickvault: the producer stops before the consumer
            p.stop()
        sim.stop()
    sent = [line.split() for line in _log_lines(sim) if line.startswith("sent ")]
    figures = _figures(ctx, collector, scenario, cpu, list(mine))
    if sent:  # (on a burst, about the floor of a collector's p99: peer_report.FIGURES)
        figures["send_ms"] = (int(sent[0][2]) / 1e9 - go) * 1000
    return {
        "scenario": scenario.name,
        "collector": collector,
        "status": status,
        "figures": figures,
        "cpu_s": {k: round(v, 4) for k, v in cpu.items()},
        "peak_rss_mb": rss,
        "send_s": round(int(sent[0][2]) / 1e9 - go, 3) if sent else None,
        "run_dir": str(run_dir),
    }


def _until_done(ctx: Context, collector: str, scenario: Scenario, procs: list[Proc]) -> str:
    deadline = time.monotonic() + scenario.due_s + GRACE_S
    with psycopg.connect(ctx.env.database_url, autocommit=True) as conn:
        while not _done(conn, collector, scenario.trades):
            gone = [p.name for p in procs if p.popen.poll() is not None]
            if gone:
                return "exited: " + ", ".join(gone)
            if time.monotonic() > deadline:
                return "timeout"
            time.sleep(POLL_S)
    return "complete"


def _figures(
    ctx: Context, collector: str, scenario: Scenario, cpu: Mapping[str, float], mine: list[str]
) -> dict[str, float]:
    params = {"n": scenario.trades, "warmup": scenario.warmup_s}
    rows_sql = ROWS[collector]
    with psycopg.connect(ctx.env.database_url) as conn:
        stats = conn.execute(STATS.format(rows=rows_sql, ok=EXPECTED), params).fetchone()
        pairs = conn.execute(LATENCIES.format(rows=rows_sql), params).fetchall()
        gap = longest_commit_gap_ms(conn, collector, params)
    lat = [float(total) for total, _ in pairs]
    received = [float(part) for _, part in pairs if part is not None]
    stored = [float(total - part) for total, part in pairs if part is not None]
    assert stats is not None
    rows, distinct, out_of_range, bad, txns = (int(v or 0) for v in stats[:5])
    first_event, last_commit = stats[5], stats[6]
    per_row = (lambda s: 1e6 * s / distinct) if distinct else (lambda s: math.nan)
    out = {
        "rows": float(rows),
        "missing": float(scenario.trades - distinct),
        "duplicates": float(rows - distinct - out_of_range),
        "bad": float(bad + out_of_range),
        "transactions": float(txns),
        "rows_per_s": (
            distinct / (last_commit - first_event)
            if distinct and last_commit is not None and last_commit > first_event
            else math.nan
        ),
        "p50_ms": peer_report.percentile(lat, 0.5),
        "p99_ms": peer_report.percentile(lat, 0.99),
        "max_ms": max(lat) if lat else math.nan,
        # the split at the collector's receive time: trade -> receive, receive -> commit
        "receive_p50_ms": peer_report.percentile(received, 0.5),
        "receive_p99_ms": peer_report.percentile(received, 0.99),
        "receive_to_commit_p50_ms": peer_report.percentile(stored, 0.5),
        "receive_to_commit_p99_ms": peer_report.percentile(stored, 0.99),
        "cpu_us_per_row": per_row(sum(cpu.get(name, 0.0) for name in mine)),
        "commit_gap_ms": gap,
    }
    for name, seconds in cpu.items():
        out[f"{name}_us_per_row"] = per_row(seconds)
    out["cpu_per_simulator"] = peer_report.cpu_per_simulator(out)
    return out


def longest_commit_gap_ms(
    conn: psycopg.Connection[Any], collector: str, params: Mapping[str, Any]
) -> float:
    """COMMIT_GAP of ``collector``'s rows (``params``: ``n`` trades, ``warmup`` seconds); NaN
    for fewer than two commits."""
    row = conn.execute(COMMIT_GAP.format(rows=ROWS[collector]), params).fetchone()
    return float(row[0]) if row is not None and row[0] is not None else math.nan


def _line(run: Mapping[str, Any]) -> str:
    f = run["figures"]
    return (
        f"peer {run['scenario']}, {run['collector']}: {run['status']}, "
        f"{f['rows_per_s']:,.0f} rows/s, p50 {f['p50_ms']:.1f} / p99 {f['p99_ms']:.1f} ms, "
        f"{f['cpu_us_per_row']:.1f} us CPU/row, missing {f['missing']:.0f}, "
        f"dup {f['duplicates']:.0f}, bad {f['bad']:.0f}"
    )


def run_all(ctx: Context, scenarios: list[Scenario], runs: int) -> dict[str, Any]:
    """Every scenario ``runs`` times per collector, alternating; the runs and their medians."""
    done: list[dict[str, Any]] = []
    for scenario in scenarios:
        for k, collector in enumerate(peer_report.run_order(runs)):
            run_dir = ctx.env.work / "peer" / f"{scenario.slug}-{k // 2 + 1}-{collector}"
            try:
                run = one_run(ctx, collector, scenario, run_dir)
            except Exception as exc:  # one failed run is reported, not the end of the bench
                status = f"failed: {exc}"
                run = {"scenario": scenario.name, "collector": collector, "status": status,
                       "figures": {}, "run_dir": str(run_dir)}  # fmt: skip
                print(f"peer {scenario.name}, {collector}: failed: {exc}", flush=True)
            else:
                print(_line(run), flush=True)
            done.append(run)
    summary = peer_report.summarise(
        [(r["scenario"], r["collector"], r["figures"]) for r in done if r["figures"]]
    )
    return {"runs": done, "summary": summary}


def _commit_timestamps(database_url: str) -> bool:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SHOW track_commit_timestamp").fetchone()
    return row is not None and row[0] == "on"


def measure(
    env: Env,
    *,
    runs: int,
    scenarios: list[Scenario],
    redis_pid: int | None,
    postgres_pid: int | None,
    calibrate: Callable[[Path], dict[str, float]],
) -> dict[str, Any]:
    """The peer part of ``make bench``: make the venv, run, print the table; the JSON part."""
    log = env.work / "peer-venv.log"
    try:
        python, versions = peer_venv.ensure(log)
        if not _commit_timestamps(env.database_url):
            raise peer_venv.PeerUnavailable("PostgreSQL runs without track_commit_timestamp")
    except peer_venv.PeerUnavailable as exc:
        print(f"peer scenario skipped: {exc}", flush=True)
        return {"skipped": str(exc)}
    print(f"peer: cryptofeed {versions} in {python.parent.parent}", flush=True)
    if redis_pid is None:
        print("peer: tickvault's Redis is not ours: its CPU is not in tickvault's", flush=True)
    ctx = Context(env, python, redis_pid, postgres_pid)
    start = calibrate(env.work)
    result = run_all(ctx, scenarios, runs)
    end = calibrate(env.work)
    result.update(
        versions=versions,
        runs_per_figure=runs,
        scenarios=[vars(s) for s in scenarios],
        calibration={"start": start, "end": end},
    )
    lines = peer_report.format_table(
        result["summary"],
        runs=runs,
        cryptofeed_version=str(versions.get("cryptofeed")),
        machine=peer_report.machine_lines(start, end),
    )
    print("\n".join(lines), flush=True)
    safe: dict[str, Any] = json_safe(result)
    return safe


def json_safe(value: Any) -> Any:
    """``value`` with NaN (a figure that could not be had) as None: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
