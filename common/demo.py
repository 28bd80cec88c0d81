"""``make demo`` / ``tickvault demo``: the whole pipeline on this machine, watched live.

Starts (unless URLs are given by ``TICKVAULT_REDIS_URL`` / ``TICKVAULT_DATABASE_URL``) an embedded
Redis-protocol server and PostgreSQL under ``.tickvault/``, the simulator (Binance and OKX
protocols), one producer and one consumer as separate processes, prints frames in, rows written
and lag every second. Midway it kills the producer (SIGKILL) and starts it again two seconds
later, as a crash would: the venue went on trading meanwhile, so the consumer finds the gap in the
stored ids (or, on OKX, the coverage ledger's blind interval) and backfills it from the
simulator's REST API. At the end it stops them in order (producer, consumer once the lag is 0 and
the gaps are settled) and prints a summary: per-symbol counts, the gap ledger, the blind
intervals, and a sample of the stored trades.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import redis

from .envelope import frames_in_entry, raw_key
from .redis_url import redis_client
from .servers import PostgresServer, RedisServer, free_port

EXCHANGES = ("binance", "okx")

DEMO_CONFIG = """\
[redis]
url = "{redis}"

[database]
url = "{database}"

[consumer]
batch_ms = 20

[backfill]
every_s = 1.0
settle_s = 2.0

[[feeds]]
exchange = "binance"
channels = ["trades", "quotes"]
symbols = ["BTC-USDT", "ETH-USDT"]
url = "ws://127.0.0.1:{binance}"
rest_url = "http://127.0.0.1:{binance}"

[[feeds]]
exchange = "okx"
channels = ["trades", "quotes"]
symbols = ["BTC-USDT", "ETH-USDT-PERP"]
url = "ws://127.0.0.1:{okx}"
rest_url = "http://127.0.0.1:{okx}"
options = {{ trades = "trades-all" }}
"""


_ROW = "{:>6} {:>10} {:>9} {:>8} {:>6} {:>8}"
_SYM = "  {:<9} {:<15} {:>7} {:>9} {:>8} {:>8}"


class Stop:
    def __init__(self) -> None:
        self.requested = False

    def set(self, *_: Any) -> None:
        self.requested = True


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "common.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops them in order
        )


def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 20) -> int | None:
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


class _FrameCount:
    """Frames appended to the raw streams so far, counted incrementally (an entry holds one
    frame or a run of them)."""

    def __init__(self) -> None:
        self.after: dict[str, str] = {}
        self.total = 0

    def __call__(self, r: redis.Redis) -> int:
        for ex in EXCHANGES:
            key = raw_key(ex)
            while True:
                entries: list[tuple[bytes, dict[bytes, bytes]]] = r.xrange(  # type: ignore[assignment]
                    key, min=self.after.get(key, "-"), count=10_000
                )
                self.total += sum(frames_in_entry(fields) for _, fields in entries)
                if entries:
                    self.after[key] = "(" + entries[-1][0].decode()
                if len(entries) < 10_000:
                    break
        return self.total


def _counts(
    r: redis.Redis, db: psycopg.Connection[Any], seen: _FrameCount
) -> tuple[int, int, int, int]:
    frames = seen(r)
    lag = 0
    for ex in EXCHANGES:
        key = raw_key(ex)
        if r.exists(key):
            for group in r.xinfo_groups(key):
                if group["name"] in (b"tickvault", "tickvault"):
                    lag += int(group.get("lag") or 0) + int(group.get("pending") or 0)
    row = db.execute("SELECT (SELECT count(*) FROM trades), (SELECT count(*) FROM quotes)")
    trades, quotes = row.fetchone() or (0, 0)
    return frames, int(trades), int(quotes), lag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tickvault demo", description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="run length (default 20)")
    parser.add_argument("--forever", action="store_true", help="run until Ctrl-C")
    parser.add_argument("--rate", type=float, default=200.0, help="trades/s per symbol")
    parser.add_argument("--dir", default=".tickvault", help="state directory")
    parser.add_argument(
        "--kill-at", type=float, default=-1.0,
        help="kill the producer this many seconds in (default: 40 %% of --seconds; 0: never)",
    )  # fmt: skip
    parser.add_argument(
        "--keep", action="store_true", help="keep the embedded servers' data from the last run"
    )
    args = parser.parse_args(argv)
    state = Path(args.dir).resolve()
    if not args.keep:
        for sub in ("redis", "postgres"):
            shutil.rmtree(state / sub, ignore_errors=True)
    demo_started = time.time()
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stop = Stop()
    signal.signal(signal.SIGINT, stop.set)
    signal.signal(signal.SIGTERM, stop.set)

    redis_server = pg_server = None
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        redis_url = os.environ.get("TICKVAULT_REDIS_URL")
        if not redis_url:
            print("starting embedded Redis-protocol server ...", flush=True)
            redis_server = RedisServer(state / "redis").start()
            redis_url = redis_server.url
        database_url = os.environ.get("TICKVAULT_DATABASE_URL")
        if not database_url:
            print("starting embedded PostgreSQL ...", flush=True)
            pg_server = PostgresServer(state / "postgres").start()
            database_url = pg_server.url
        ports = {ex: free_port() for ex in EXCHANGES}
        config = state / "demo.toml"
        config.write_text(DEMO_CONFIG.format(redis=redis_url, database=database_url, **ports))
        env = dict(os.environ, TICKVAULT_CONFIG=str(config), PYTHONUNBUFFERED="1")
        env.pop("TICKVAULT_REDIS_URL", None)
        env.pop("TICKVAULT_DATABASE_URL", None)
        serve = [f"--serve={ex}={port}" for ex, port in ports.items()]
        procs["simulator"] = _spawn(
            ["simulate", *serve, f"--rate={args.rate}", "--quote-rate=5", "--abnormal"],
            logs / "simulator.log",
            env,
        )
        time.sleep(0.5)
        procs["consumer"] = _spawn(["consumer", "--name=demo-1"], logs / "consumer.log", env)
        procs["producer"] = _spawn(["producer"], logs / "producer.log", env)
        print(f"redis {redis_url}  postgres {database_url}")
        print(f"config {config}; process logs in {logs}")
        print("Ctrl-C stops cleanly." if args.forever else f"running {args.seconds:g} s ...")
        r = redis_client(redis_url)
        seen = _FrameCount()
        with _wait_db(database_url) as db:
            print(_ROW.format("time", "frames in", "trades", "quotes", "lag", "rows/s"))
            started = last_t = time.monotonic()
            last_rows = 0
            kill_at = started + (args.kill_at if args.kill_at >= 0 else args.seconds * 0.4)
            restart_at: float | None = None
            while not stop.requested and (
                args.forever or time.monotonic() - started < args.seconds
            ):
                time.sleep(1.0)
                if kill_at and time.monotonic() >= kill_at:
                    print("killing the producer (SIGKILL), as a crash would; the venue trades on")
                    killed = procs.pop("producer")
                    killed.kill()
                    killed.wait(10)
                    kill_at, restart_at = 0.0, time.monotonic() + 2.0
                if restart_at is not None and time.monotonic() >= restart_at:
                    print("starting the producer again: the gap is found and backfilled")
                    procs["producer"] = _spawn(["producer"], logs / "producer.log", env)
                    restart_at = None
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        print(f"{name} exited with {proc.returncode}; see {logs / name}.log")
                        stop.set()
                frames, trades, quotes, lag = _counts(r, db, seen)
                now = time.monotonic()
                rate = (trades + quotes - last_rows) / max(1e-9, now - last_t)
                last_rows, last_t = trades + quotes, now
                print(
                    _ROW.format(f"{now - started:.0f}", frames, trades, quotes, lag, f"{rate:.0f}"),
                    flush=True,
                )
            print("stopping the producer, letting the consumer drain ...", flush=True)
            _terminate(procs.pop("producer", None))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and _counts(r, db, seen)[3] > 0:
                time.sleep(0.2)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _unsettled(db):
                time.sleep(0.5)
            _terminate(procs.pop("consumer"))
            _terminate(procs.pop("simulator"))
            _summary(r, db, demo_started, seen)
        return 0
    finally:
        for proc in procs.values():
            _terminate(proc)
        if redis_server:
            redis_server.stop()
        if pg_server:
            pg_server.stop()


@contextlib.contextmanager
def _wait_db(url: str) -> Any:
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = psycopg.connect(url, autocommit=True)
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    # the consumer applies the schema at start; wait for it
    while True:
        if conn.execute("SELECT to_regclass('trades') IS NOT NULL").fetchone() == (True,):
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the consumer did not create the schema")
        time.sleep(0.2)
    try:
        yield conn
    finally:
        conn.close()


def _unsettled(db: psycopg.Connection[Any]) -> int:
    """Gaps not settled yet, and blind intervals that have no gap yet (the detector waits
    ``backfill.settle_s``)."""
    row = db.execute("SELECT count(*) FROM gaps WHERE status IN ('open', 'backfilling')")
    open_gaps = int((row.fetchone() or (0,))[0])
    if open_gaps:
        return open_gaps
    # a fresh kill's gap appears only once its trades settle: wait for one per symbol at least
    row = db.execute(
        "SELECT count(*) FROM (SELECT exchange, symbol FROM trades WHERE trade_id ~ '^[0-9]+$' "
        "GROUP BY 1, 2 HAVING max(trade_id::bigint) - min(trade_id::bigint) + 1 <> count(*)) t"
    )
    return int((row.fetchone() or (0,))[0])


def _flagged(db: psycopg.Connection[Any]) -> None:
    """The abnormal trades the simulator injected (fat fingers, flash crashes), flagged and kept."""
    from consumer.flags import flag_names

    rows = db.execute(
        "SELECT flags, count(*), min(exchange || ' ' || symbol || ' #' || trade_id || ' ' || "
        "price || ' x ' || amount) FROM trades WHERE flags <> 0 GROUP BY 1 ORDER BY 1"
    ).fetchall()
    print("\nflagged, not dropped (SELECT ... FROM trades WHERE flags <> 0):")
    for bits, n, example in rows:
        print(f"  {'+'.join(flag_names(int(bits))):<28} {n:>5} trades, e.g. {example}")
    if not rows:
        print("  none")


def _ledgers(db: psycopg.Connection[Any], since: float) -> None:
    import datetime as dt

    from consumer.gaps import read_gaps
    from consumer.ledger import blind_intervals, read_sessions

    start = dt.datetime.fromtimestamp(since, dt.UTC)
    gaps = read_gaps(db, since=start)
    print(f"\ngap ledger ({len(gaps)}): tickvault gaps --since 1h")
    for g in gaps:
        what = (
            f"ids {g.ids} ({g.missing})"
            if g.first_missing is not None
            else f"{g.after:%H:%M:%S.%f}"[:-3] + f"..{g.before:%H:%M:%S.%f}"[:-3]
        )
        print(f"  {g.exchange:<9} {g.symbol:<15} {what:<28} {g.status:<10} {g.note}")
    sessions = read_sessions(db, since=start)
    now = dt.datetime.now(dt.UTC)
    pairs = sorted({(s.exchange, sym) for s in sessions for sym in s.symbols})
    print("\nblind intervals (coverage ledger): tickvault coverage --since 1h")
    for exchange, symbol in pairs:
        for b in blind_intervals(sessions, exchange, symbol, since=start, now=now):
            end = f"{b.end:%H:%M:%S.%f}"[:-3] if b.end else "now"
            length = f"{b.seconds:.1f} s" if b.seconds is not None else "ongoing"
            print(f"  {exchange:<9} {symbol:<15} {b.start:%H:%M:%S.%f}"[:-3]
                  + f"..{end} ({length}): {b.reason}")  # fmt: skip


def _summary(r: redis.Redis, db: psycopg.Connection[Any], since: float, seen: _FrameCount) -> None:
    frames, trades, quotes, lag = _counts(r, db, seen)
    dead = sum(int(r.xlen(f"tickvault:dead:{{{ex}}}")) for ex in EXCHANGES)
    print(
        f"\nsummary: {frames} frames in the stream, {trades} trades and {quotes} quotes stored, "
        f"{dead} dead-lettered, lag {lag}"
    )
    print("\nper symbol (ids are consecutive in the simulator, so 'missing' shows any gap):")
    rows = db.execute(
        "SELECT exchange, symbol, count(*), min(trade_id::bigint), max(trade_id::bigint), "
        "min(ts), max(ts) FROM trades WHERE trade_id ~ '^[0-9]+$' AND recv_ts >= to_timestamp(%s) "
        "GROUP BY 1, 2 ORDER BY 1, 2",
        (since,),
    ).fetchall()
    print(_SYM.format("exchange", "symbol", "trades", "first id", "last id", "missing"))
    for ex, sym, n, lo, hi, _, _ in rows:
        print(_SYM.format(ex, sym, n, lo, hi, hi - lo + 1 - n))
    _ledgers(db, since)
    _flagged(db)
    print(
        "\nsample: SELECT exchange, symbol, trade_id, price, amount, side, ts FROM trades "
        "ORDER BY ts DESC, trade_id DESC LIMIT 5;"
    )
    sample = db.execute(
        "SELECT exchange, symbol, trade_id, price, amount, side, ts FROM trades "
        "ORDER BY ts DESC, trade_id DESC LIMIT 5"
    ).fetchall()
    for row in sample:
        print("  " + " | ".join(str(v) for v in row))
