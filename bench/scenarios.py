"""The measured scenarios. Each returns plain numbers; ``__main__`` takes medians and prints."""

from __future__ import annotations

import contextlib
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis

from common.envelope import RUN_MAX, Envelope, encode_entry, frames_in_entry, raw_key
from common.servers import free_port

from .procs import Proc, spawn

KEY = raw_key("binance")
# A server the bench starts is fresh: it has one WAL segment, and makes (writes 16 MB of zeros,
# then fsyncs) a new one each time the last fills, which stalls every commit meanwhile: about
# 100 ms every 1.4 s at 40,000 trades/s here. A server that has run a while recycles its old
# segments instead (at each checkpoint, up to ``min_wal_size``): the steady state users run in.
WAL_SEGMENTS = 24  # made once, before the first run: room for the largest run's WAL
WAL_SETTINGS = {"min_wal_size": f"{WAL_SEGMENTS * 16}MB", "max_wal_size": "1GB"}
SYMBOLS = ["BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT"]


def warm_wal(database_url: str, segments: int = WAL_SEGMENTS) -> float:
    """Make ``segments`` WAL segments on a fresh server, then checkpoint, which keeps them as
    recycled segments (its ``min_wal_size`` must hold them: WAL_SETTINGS). Seconds taken."""
    start = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        fill_wal_segments(conn, segments)
        conn.execute("CHECKPOINT")
    return time.monotonic() - start


def fill_wal_segments(conn: psycopg.Connection[Any], segments: int) -> None:
    """Write into ``segments`` WAL segments, one after the other (needs superuser)."""
    conn.execute("CREATE TABLE bench_wal_fill (n int)")
    for i in range(segments):
        conn.execute("INSERT INTO bench_wal_fill VALUES (%s)", (i,))  # (a switch needs WAL)
        conn.execute("SELECT pg_switch_wal()")
    conn.execute("DROP TABLE bench_wal_fill")


@dataclass
class Env:
    work: Path
    redis_url: str
    database_url: str
    commit_timestamps: bool  # track_commit_timestamp is on: exact receive -> commit latency

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def reset(self) -> None:
        r = self.redis()
        r.flushdb()
        r.close()
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            exists = conn.execute("SELECT to_regclass('trades')").fetchone()
            if exists and exists[0] is not None:
                # (and the gap ledger: each run's ids start again at 1)
                conn.execute("TRUNCATE trades, quotes, gaps, gap_cursors")
            with contextlib.suppress(psycopg.Error):  # needs superuser or pg_checkpoint
                conn.execute("CHECKPOINT")  # (so WAL segments are recycled: warm_wal)

    def config(self, *ports: int, **consumer: Any) -> Path:
        """Feeds for SYMBOLS, split evenly over one simulator per port."""
        lines = [
            f'[redis]\nurl = "{self.redis_url}"\nmaxlen = 20000000\n',
            f'[database]\nurl = "{self.database_url}"\n',
            f'[producer]\nspill_dir = "{self.work / "spill"}"\n',
            "[consumer]",
            *(f"{k} = {v}" for k, v in consumer.items()),
        ]
        per = len(SYMBOLS) // len(ports)
        for i, port in enumerate(ports):
            symbols = SYMBOLS[i * per : (i + 1) * per]
            lines += [
                "\n[[feeds]]",
                'exchange = "binance"',
                "symbols = [" + ", ".join(f'"{s}"' for s in symbols) + "]",
                f'url = "ws://127.0.0.1:{port}"',
            ]
        path = self.work / f"bench-{ports[0]}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def rows(self) -> int:
        with psycopg.connect(self.database_url) as conn:
            try:
                row = conn.execute("SELECT count(*) FROM trades").fetchone()
            except psycopg.errors.UndefinedTable:
                return 0
        return int(row[0]) if row else 0

    def lag_s(self) -> float:
        """How far behind the group is, in seconds: the age of the oldest entry not yet
        delivered to it (0 when it has read everything). Entries hold one frame or a run, so
        a count of entries would not say how far behind it is; their age does."""
        r = self.redis()
        try:
            groups = r.xinfo_groups(KEY)
            if not groups or not int(groups[0].get("lag") or 0):
                return 0.0
            last = groups[0]["last-delivered-id"].decode()
            nxt = r.xrange(KEY, min=f"({last}", count=1)
            if not nxt:
                return 0.0
            return max(0.0, time.time() - int(nxt[0][0].split(b"-")[0]) / 1000)
        except redis.ResponseError:
            return 0.0
        finally:
            r.close()


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _wait(check: Any, timeout: float, procs: list[Proc], interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            p.mark()
        if check():
            return True
        time.sleep(interval)
    return False


def _simulator(env: Env, port: int, rate_per_symbol: float, trades: int) -> Proc:
    sim = spawn(
        "simulator",
        ["simulate", f"--serve=binance={port}", f"--rate={rate_per_symbol}",
         f"--trades={trades}", "--quote-rate=0"],
        env.work,
    )  # fmt: skip
    _wait_port(port)
    return sim


def stream_frames(r: redis.Redis, key: str = KEY) -> int:
    """Frames in the stream: an entry holds one, or a run (``l`` lists their lengths)."""
    total, start = 0, "-"
    while True:
        entries = r.xrange(key, min=start, count=10_000)
        total += sum(frames_in_entry(fields) for _, fields in entries)
        if len(entries) < 10_000:
            return total
        start = "(" + entries[-1][0].decode()


def _stream_rate(r: redis.Redis, key: str = KEY) -> tuple[int, float]:
    """(frames, frames/s between the first and last entry's id time)."""
    if not r.exists(key):
        return 0, 0.0
    n = stream_frames(r, key)
    if n < 2:
        return n, 0.0
    first = r.xrange(key, count=1)[0][0]
    last = r.xrevrange(key, count=1)[0][0]
    ms0 = int(first.split(b"-")[0])
    ms1 = int(last.split(b"-")[0])
    return n, n / max(0.001, (ms1 - ms0) / 1000)


# -- 1. producer alone -------------------------------------------------------------------------
def producer_alone(env: Env, total: int) -> dict[str, float]:
    """Two simulator processes (one Python process alone cannot saturate the producer) send
    as fast as they can; frames/s is measured on the stream's own entry ids."""
    env.reset()
    ports = (free_port(), free_port())
    per_symbol = total // len(SYMBOLS)
    sims = [_simulator(env, port, rate_per_symbol=10_000_000, trades=per_symbol) for port in ports]
    producer = spawn("producer", ["producer"], env.work, env.config(*ports))
    r = env.redis()
    try:
        ok = _wait(lambda: r.exists(KEY) and r.xlen(KEY) >= 1, 30, [producer])
        producer.cpu_marks.clear()
        ok = ok and _wait(
            lambda: stream_frames(r) >= per_symbol * len(SYMBOLS), 120, [producer], interval=0.5
        )
        n, rate = _stream_rate(r)
        return {
            "frames": n,
            "frames_per_s": rate,
            "cpu_percent": producer.cpu_percent(),
            "peak_rss_mb": producer.peak_rss_mb(),
            "complete": float(ok),
        }
    finally:
        producer.stop()
        for sim in sims:
            sim.stop()
        r.close()


# -- 2. consumer alone -------------------------------------------------------------------------
def trade_frame(symbol: str, i: int, ts_ms: int) -> bytes:
    price = f"{100 + i % 5000 / 100:.2f}"
    return (
        f'{{"stream":"{symbol.lower()}@trade","data":{{"e":"trade","E":{ts_ms},"s":"{symbol}",'
        f'"t":{i},"p":"{price}","q":"0.{i % 997 + 1:05d}","T":{ts_ms},'
        f'"m":{"true" if i % 3 else "false"},"M":true}}}}'
    ).encode()


PREFILL_PER_MS = 20  # trades per millisecond per symbol in the prefilled stream (80,000/s)


def prefill(env: Env, n: int, run: int = RUN_MAX) -> float:
    """XADD ``n`` Binance trade frames (4 symbols) with pipelines, ``run`` frames an entry (the
    producer's shape under load; 1: a slow feed's); returns Redis bytes per frame.

    Trade times rise with trade ids, as a venue's do (``PREFILL_PER_MS`` a millisecond), so
    PostgreSQL's key index sees the mostly ascending keys it sees in production."""
    env.reset()
    r = env.redis()
    now_ns = time.time_ns()
    start_ms = now_ns // 1_000_000 - n // 4 // PREFILL_PER_MS
    pipe = r.pipeline(transaction=False)
    venue_symbols = [s.replace("-", "") for s in SYMBOLS]
    for first in range(0, n, run):
        envs = []
        for i in range(first, min(n, first + run)):
            sym = venue_symbols[i % 4]
            frame = trade_frame(sym, i // 4 + 1, start_ms + i // 4 // PREFILL_PER_MS)
            envs.append(Envelope(frame, False, "binance", "", "bench#1", i + 1, now_ns + i))
        pipe.xadd(KEY, encode_entry(envs))  # type: ignore[arg-type]
        if len(pipe) >= max(1, 2000 // run):
            pipe.execute()
    pipe.execute()
    used = int(r.memory_usage(KEY, samples=0) or 0)
    r.close()
    return used / n


def consumer_alone(env: Env, n: int, consumers: int) -> dict[str, float]:
    """Drain the prefilled stream with a fresh group; rows/s between the first and last commit."""
    r = env.redis()
    with contextlib.suppress(redis.ResponseError):
        r.xgroup_destroy(KEY, "tickvault")
    r.close()
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('trades')").fetchone() != (None,):
            conn.execute("TRUNCATE trades, quotes")
    port = free_port()
    config = env.config(port)
    procs = [spawn(f"consumer{i}", ["consumer", f"--name=bench{i}"], env.work, config)
             for i in range(consumers)]  # fmt: skip
    started = time.monotonic()
    try:
        ok = _wait(lambda: env.rows() >= n, 600, procs, interval=0.2)
        wall = time.monotonic() - started
        rss = max(p.peak_rss_mb() for p in procs)
        span = _commit_span(env) if env.commit_timestamps else 0.0
        rate = n / span if span > 0 else n / wall
        return {"rows_per_s": rate, "peak_rss_mb": rss, "complete": float(ok)}
    finally:
        for p in procs:
            p.stop()


def _commit_span(env: Env) -> float:
    with psycopg.connect(env.database_url) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(c) - min(c)) FROM "
            "(SELECT pg_xact_commit_timestamp(xmin) AS c FROM trades) t"
        ).fetchone()
    # + one batch: the first commit's rows were already done when min(c) was stamped
    return float(row[0]) if row and row[0] is not None else 0.0


# -- 3 and 4. end to end -----------------------------------------------------------------------
def end_to_end(env: Env, rate: float, seconds: float) -> dict[str, float]:
    """Drive the simulator at ``rate`` trades/s for ``seconds``; lag samples tell if we kept up."""
    env.reset()
    port = free_port()
    total = int(rate * seconds)
    per_symbol = total // len(SYMBOLS)
    sim = _simulator(env, port, rate_per_symbol=rate / len(SYMBOLS), trades=per_symbol)
    config = env.config(port)
    consumer = spawn("consumer", ["consumer", "--name=e2e"], env.work, config)
    producer = spawn("producer", ["producer"], env.work, config)
    procs = [producer, consumer]
    r = env.redis()
    lags: list[float] = []
    try:
        _wait(lambda: r.exists(KEY), 30, procs)
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            time.sleep(1.0)
            for p in procs:
                p.mark()
            lags.append(env.lag_s())
        done = _wait(lambda: env.rows() >= per_symbol * len(SYMBOLS), 60, procs, interval=0.2)
        frames, achieved = _stream_rate(r)
        entries = int(r.xlen(KEY)) or 1
        third = max(1, len(lags) // 3)
        # bounded: the lag in the last third of the run is not above the first third's by more
        # than half a second (lag swings with batch sizes and Redis' AOF rewrites; a consumer
        # that falls behind grows it by seconds)
        bounded = max(lags[-third:]) <= max(lags[:third]) + 0.5
        result = {
            "target_per_s": rate,
            "achieved_per_s": achieved,
            "max_lag_s": float(max(lags) if lags else 0),
            "frames_per_entry": frames / entries,
            "bounded": float(bounded and done),
            "producer_rss_mb": producer.peak_rss_mb(),
            "consumer_rss_mb": consumer.peak_rss_mb(),
            "producer_cpu": producer.cpu_percent(),
            "consumer_cpu": consumer.cpu_percent(),
        }
        if env.commit_timestamps:
            result.update(latency(env))
        return result
    finally:
        producer.stop()
        consumer.stop()
        sim.stop()
        r.close()


WARMUP = "1 second"


def latency(env: Env) -> dict[str, float]:
    """Receive -> commit, per row, from PostgreSQL's commit timestamps (ms), after a warm-up
    second (the first batches of a fresh consumer load catalogs and plans)."""
    with psycopg.connect(env.database_url) as conn:
        row = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), "
            "percentile_cont(0.99) WITHIN GROUP (ORDER BY d), max(d) FROM "
            "(SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - recv_ts) * 1000 AS d "
            f"FROM trades WHERE recv_ts > (SELECT min(recv_ts) FROM trades) + interval '{WARMUP}'"
            ") t"
        ).fetchone()
    assert row is not None
    return {"p50_ms": float(row[0]), "p99_ms": float(row[1]), "max_ms": float(row[2])}


def burst(env: Env, n: int) -> dict[str, float]:
    """``n`` trades as fast as the simulator can send them: stored within how long of the last
    frame's arrival?"""
    env.reset()
    port = free_port()
    per_symbol = n // len(SYMBOLS)
    config = env.config(port)
    consumer = spawn("consumer", ["consumer", "--name=burst"], env.work, config)
    sim = _simulator(env, port, rate_per_symbol=10_000_000, trades=per_symbol)
    producer = spawn("producer", ["producer"], env.work, config)
    procs = [producer, consumer]
    try:
        ok = _wait(lambda: env.rows() >= per_symbol * len(SYMBOLS), 120, procs, interval=0.01)
        done_wall = time.time()
        with psycopg.connect(env.database_url) as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM max(recv_ts)), extract(epoch FROM min(recv_ts)) "
                "FROM trades"
            ).fetchone()
        assert row is not None
        last_recv, first_recv = float(row[0]), float(row[1])
        result = {
            "stored_after_last_s": done_wall - last_recv,
            "arrival_span_s": last_recv - first_recv,
            "producer_rss_mb": producer.peak_rss_mb(),
            "consumer_rss_mb": consumer.peak_rss_mb(),
            "complete": float(ok),
        }
        if env.commit_timestamps:
            with psycopg.connect(env.database_url) as conn:
                row = conn.execute(
                    "SELECT extract(epoch FROM max(pg_xact_commit_timestamp(xmin)) - max(recv_ts))"
                    " FROM trades"
                ).fetchone()
            assert row is not None
            result["stored_after_last_s"] = float(row[0])
        return result
    finally:
        producer.stop()
        consumer.stop()
        sim.stop()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


# -- 6. idle ----------------------------------------------------------------------------------
def idle(env: Env, seconds: float) -> dict[str, float]:
    """Producer and consumer connected to a feed that sends nothing (a quiet market, a night):
    their CPU, % of one core, over ``seconds`` after a settle of 5 s (schedstat: exact)."""
    from .peer_cpu import CpuMeter

    env.reset()
    port = free_port()
    sim = spawn(
        "simulator",
        ["simulate", f"--serve=binance={port}", "--rate=0.00001", "--quote-rate=0"],
        env.work,
    )  # fmt: skip
    _wait_port(port)
    config = env.config(port)
    consumer = spawn("consumer", ["consumer", "--name=idle"], env.work, config)
    producer = spawn("producer", ["producer"], env.work, config)
    try:
        time.sleep(5.0)
        meter = CpuMeter({"producer": [producer.popen.pid], "consumer": [consumer.popen.pid]})
        meter.begin()
        time.sleep(seconds)
        cpu = meter.end()
        return {
            "seconds": seconds,
            "producer_pct": 100 * cpu.get("producer", 0.0) / seconds,
            "consumer_pct": 100 * cpu.get("consumer", 0.0) / seconds,
            "total_pct": 100 * (cpu.get("producer", 0.0) + cpu.get("consumer", 0.0)) / seconds,
        }
    finally:
        producer.stop()
        consumer.stop()
        sim.stop()
