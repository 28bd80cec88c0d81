"""``make bench``: measure tickvault on this machine and print one table (JSON in bench/results/).

Servers: an embedded Redis-protocol server (AOF everysec, as in production) and an embedded
PostgreSQL (durable, ``track_commit_timestamp = on`` so receive -> commit latency is exact per
row), or ``TICKVAULT_BENCH_REDIS_URL`` / ``TICKVAULT_BENCH_DATABASE_URL``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.servers import PostgresServer, RedisServer

from . import baselines, peer, scenarios
from .scenarios import Env, median

RESULTS = Path(__file__).parent / "results"
SYNC_PROBES = 500  # ~2.5 s: enough for a p99, and to catch a stall of the disk
SYNC_SPACING_S = 0.004


def calibrate(work: Path) -> dict[str, float]:
    """Figures to compare machines by: a fixed pure-Python loop (ms) and the fdatasync of an
    8 KiB append on the disk the servers use, 4 ms apart as a WAL at a few hundred commits a
    second does it (median, p99 and the longest, ms). Same code, other box: scale the rates by
    the first; latency tails follow the second (Redis' AOF and PostgreSQL's WAL share that disk
    here): no commit is durable sooner than its fdatasync, so a p99 frame -> commit under the
    disk's own p99 cannot be had with ``synchronous_commit`` on."""
    loops = []
    for _ in range(5):
        t0 = time.perf_counter()
        sum(range(10_000_000))
        loops.append((time.perf_counter() - t0) * 1000)
    syncs = []
    path = work / "fsync-probe"
    sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for _ in range(SYNC_PROBES):
            os.write(fd, b"x" * 8192)
            t0 = time.perf_counter()
            sync(fd)
            syncs.append((time.perf_counter() - t0) * 1000)
            time.sleep(SYNC_SPACING_S)
    finally:
        os.close(fd)
        path.unlink()
    return {"python_loop_ms": median(loops), **sync_figures(syncs)}


def sync_figures(syncs_ms: list[float]) -> dict[str, float]:
    """The median, p99 (nearest rank) and longest of fdatasync times (ms)."""
    ranked = sorted(syncs_ms)
    p99 = ranked[max(0, math.ceil(0.99 * len(ranked)) - 1)]
    return {"fdatasync_ms": median(ranked), "fdatasync_p99_ms": p99, "fdatasync_max_ms": ranked[-1]}


def _median_of(runs: int, fn: Callable[[], dict[str, float]]) -> dict[str, float]:
    results = [fn() for _ in range(runs)]
    return {k: median([r[k] for r in results]) for k in results[0]}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, shorter runs")
    parser.add_argument(
        "--rates", default="40000,60000,80000,100000,120000", help="end-to-end rates to try"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="sustained run length")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--peer-only", action="store_true", help="only the side by side with cryptofeed 2.4.1"
    )
    which.add_argument("--no-peer", action="store_true", help="skip the side by side")
    parser.add_argument("--peer-rates", default="1000,10000,40000", help="peer: paced rates")
    parser.add_argument(
        "--peer-seconds", type=float, help="peer: paced run length (10 s; 4 s with --quick)"
    )
    parser.add_argument("--peer-burst", type=int, default=100_000, help="peer: burst (0: none)")
    args = parser.parse_args()
    quick = args.quick
    n_consumer = 200_000 if quick else 1_000_000
    n_producer = 200_000 if quick else 400_000
    seconds = 10.0 if quick else args.seconds

    work = Path(tempfile.mkdtemp(prefix="tickvault-bench-"))
    redis_server = pg_server = None
    try:
        redis_url = os.environ.get("TICKVAULT_BENCH_REDIS_URL")
        database_url = os.environ.get("TICKVAULT_BENCH_DATABASE_URL")
        if not redis_url:
            redis_server = RedisServer(work / "redis").start()
            redis_url = redis_server.url
        if not database_url:
            pg_server = PostgresServer(
                work / "postgres",
                settings={"track_commit_timestamp": "on", **scenarios.WAL_SETTINGS},
            ).start()
            database_url = pg_server.url
            print(f"WAL segments made in {scenarios.warm_wal(database_url):.1f} s", flush=True)
        env = Env(work, redis_url, database_url, commit_timestamps=pg_server is not None)
        out: dict[str, Any] = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": (
                f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
            ),
            "runs": args.runs,
        }
        out["calibration"] = calibrate(work)
        print(f"bench in {work} ({out['machine']}); {args.runs} runs per figure", flush=True)
        print("this machine:", out["calibration"], flush=True)

        if not args.peer_only:
            out["producer"] = _median_of(
                args.runs, lambda: scenarios.producer_alone(env, n_producer)
            )
            print("producer alone:", out["producer"], flush=True)

            out["redis_bytes_per_frame"] = scenarios.prefill(env, n_consumer)
            out["consumer_1"] = _median_of(
                args.runs, lambda: scenarios.consumer_alone(env, n_consumer, 1)
            )
            print("consumer alone:", out["consumer_1"], flush=True)
            out["consumer_2"] = _median_of(
                args.runs, lambda: scenarios.consumer_alone(env, n_consumer, 2)
            )
            print("two consumers:", out["consumer_2"], flush=True)
            # the same frames one per entry, as a slow feed (or a producer before runs) writes them
            out["redis_bytes_per_frame_single"] = scenarios.prefill(env, n_consumer, run=1)
            out["consumer_1_single"] = _median_of(
                args.runs, lambda: scenarios.consumer_alone(env, n_consumer, 1)
            )
            print("consumer alone, one frame per entry:", out["consumer_1_single"], flush=True)

            sustained = []
            for rate in [float(r) for r in args.rates.split(",")]:
                result = scenarios.end_to_end(env, rate, seconds)
                sustained.append(result)
                print("end to end:", result, flush=True)
            out["end_to_end"] = sustained
            kept_up = [
                r["achieved_per_s"]
                for r in sustained
                if r["bounded"] and r["achieved_per_s"] >= 0.95 * r["target_per_s"]
            ]
            out["sustained_max_per_s"] = max(kept_up) if kept_up else 0.0

            out["burst"] = _median_of(args.runs, lambda: scenarios.burst(env, 100_000))
            print("burst:", out["burst"], flush=True)
            for rate in (1_000.0, 10_000.0, 40_000.0):
                out[f"latency_{int(rate)}"] = _median_of(
                    args.runs, lambda rate=rate: scenarios.end_to_end(env, rate, 10.0)
                )
                print(f"latency at {rate:.0f}/s:", out[f"latency_{int(rate)}"], flush=True)

            out["idle"] = scenarios.idle(env, 20.0 if quick else 60.0)
            print("idle:", out["idle"], flush=True)

            out["calibration_end"] = calibrate(work)  # the box may change speed during the run
            out["naive_consumer_per_s"] = baselines.naive_consumer(env, 5_000 if quick else 20_000)
            unbatched, batched = baselines.producer_paths(env, 20_000 if quick else 100_000)
            out["unbatched_xadd_per_s"] = unbatched
            out["publisher_xadd_per_s"] = batched
            print_table(out)
        if not args.no_peer:
            peer_seconds = args.peer_seconds or (4.0 if quick else 10.0)
            out["peer"] = peer.measure(
                env,
                runs=args.runs,
                scenarios=peer.plan(
                    [float(r) for r in args.peer_rates.split(",") if r],
                    peer_seconds,
                    args.peer_burst,
                ),
                redis_pid=redis_server.proc.pid if redis_server and redis_server.proc else None,
                postgres_pid=pg_server.proc.pid if pg_server and pg_server.proc else None,
                calibrate=calibrate,
            )
        RESULTS.mkdir(exist_ok=True)
        kind = "peer" if args.peer_only else "bench"
        path = RESULTS / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(out, indent=2))
        print(f"\nwritten {path}")
        return 1 if args.peer_only and "skipped" in out["peer"] else 0
    finally:
        if redis_server:
            redis_server.stop()
        if pg_server:
            pg_server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _lat(d: dict[str, float]) -> str:
    return f"{d.get('p50_ms', 0):.1f} / {d.get('p99_ms', 0):.1f} / {d.get('max_ms', 0):.1f} ms"


def print_table(out: dict[str, Any]) -> None:
    p, c1, c2, b = out["producer"], out["consumer_1"], out["consumer_2"], out["burst"]
    l1, l10, l40 = out["latency_1000"], out["latency_10000"], out["latency_40000"]
    e2e_max = out["sustained_max_per_s"]
    naive = out["naive_consumer_per_s"]
    idle = out["idle"]
    peak_p = max([p["peak_rss_mb"], b["producer_rss_mb"]]
                 + [r["producer_rss_mb"] for r in out["end_to_end"]])  # fmt: skip
    peak_c = max([c1["peak_rss_mb"], b["consumer_rss_mb"]]
                 + [r["consumer_rss_mb"] for r in out["end_to_end"]])  # fmt: skip
    rows = [
        ("producer alone", f"{p['frames_per_s']:,.0f} frames/s at {p['cpu_percent']:.0f}% CPU",
         ">= 150,000 frames/s"),
        ("consumer alone, 1 process", f"{c1['rows_per_s']:,.0f} rows/s", ">= 120,000 rows/s"),
        ("consumer alone, 2 in one group", f"{c2['rows_per_s']:,.0f} rows/s", ""),
        ("consumer alone, 1 frame per entry",
         f"{out['consumer_1_single']['rows_per_s']:,.0f} rows/s", "(runs of 32 above)"),
        ("end to end, sustained (lag bounded)", f"{e2e_max:,.0f} trades/s", ">= 80,000 trades/s"),
        ("burst of 100,000: stored after last frame",
         f"{b['stored_after_last_s']:.2f} s (arrived over {b['arrival_span_s']:.2f} s)",
         "<= 1.0 s"),
        ("latency at 1,000/s p50 / p99 / max",
         _lat(l1), ""),
        ("latency at 10,000/s p50 / p99 / max",
         _lat(l10),
         "p99 <= 10 ms"),
        ("latency at 40,000/s p50 / p99 / max",
         _lat(l40),
         "p99 <= 50 ms"),
        ("idle (connected, no trades): producer + consumer",
         f"{idle['total_pct']:.2f} % of a core ({idle['producer_pct']:.2f} + "
         f"{idle['consumer_pct']:.2f})", "< 1 %"),
        ("peak RSS producer / consumer", f"{peak_p:.0f} / {peak_c:.0f} MB", "<= 60 / 120 MB"),
        ("Redis bytes per stored frame, runs / single",
         f"{out['redis_bytes_per_frame']:.0f} / {out['redis_bytes_per_frame_single']:.0f} B", ""),
        ("naive path (INSERT+COMMIT per message)", f"{naive:,.0f} rows/s",
         f"x{e2e_max / naive:.1f} end to end (>= x10)" if naive else ""),
        ("unbatched XADD vs Publisher",
         f"{out['unbatched_xadd_per_s']:,.0f} vs {out['publisher_xadd_per_s']:,.0f} frames/s",
         f"x{out['publisher_xadd_per_s'] / out['unbatched_xadd_per_s']:.1f}"),
    ]  # fmt: skip
    cal, end = out.get("calibration"), out.get("calibration_end")
    if cal and end:
        rows.append(("machine at start / end: sum(range(10**7))",
                     f"{cal['python_loop_ms']:.0f} / {end['python_loop_ms']:.0f} ms",
                     "compare boxes and runs by it"))  # fmt: skip
        rows.append(("machine at start / end: fdatasync 8 KiB",
                     f"{cal['fdatasync_ms']:.2f} / {end['fdatasync_ms']:.2f} ms", ""))  # fmt: skip
        if "fdatasync_p99_ms" in cal and "fdatasync_p99_ms" in end:
            rows.append(("machine at start / end: fdatasync p99 / longest",
                         f"{cal['fdatasync_p99_ms']:.1f} / {cal['fdatasync_max_ms']:.0f}; "
                         f"{end['fdatasync_p99_ms']:.1f} / {end['fdatasync_max_ms']:.0f} ms",
                         "no p99 frame -> commit below it"))  # fmt: skip
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"\n{'figure':<{width}}  {'median':<{vwidth}}  target / ratio")
    print(f"{'-' * width}  {'-' * vwidth}  {'-' * 24}")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:<{vwidth}}  {target}")


if __name__ == "__main__":
    raise SystemExit(main())
