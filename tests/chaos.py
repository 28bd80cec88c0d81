"""``make chaos``: the whole pipeline under random failures, then an exact count.

The simulator streams consecutive trade ids at a fixed rate on several venues while this script
SIGKILLs the producer and the consumers at random moments (restarting them), restarts Redis and
PostgreSQL, and cuts the feeds' connections. Once the simulator has emitted its last trade and the
pipeline has settled, it checks that every id the simulator produced is in PostgreSQL exactly once
(backfill fetched what the producer missed while it was down) and that the gap ledger settled
every gap it opened as ``filled``; it prints emitted, stored, duplicates, missing, gaps opened
and filled, and the failures survived. Exit status 0 only when all of that holds.

    python -m tests.chaos [--duration 120] [--rate 50] [--seed N] [--exchanges binance,coinbase]

A short run is part of ``make test`` (``tests/e2e/test_chaos.py``).
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from common.servers import PostgresServer, RedisServer
from tests.e2e.harness import Feed, Pipeline

logger = logging.getLogger("chaos")

# exchange -> (feed options, symbols): venues whose REST can backfill what was missed
VENUES: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "binance": ({}, ("BTC-USDT", "ETH-USDT")),
    "coinbase": ({}, ("BTC-USD",)),
    "okx": ({"trades": "trades-all"}, ("BTC-USDT",)),
}
EVENTS = ("kill-producer", "kill-consumer", "restart-redis", "restart-postgres", "cut-feeds")


@dataclass
class Figures:
    emitted: int = 0
    stored: int = 0
    duplicates: int = 0
    missing: int = 0
    gaps_opened: int = 0
    gaps_filled: int = 0
    gaps_unsettled: list[str] = field(default_factory=list)
    survived: Counter[str] = field(default_factory=Counter)
    missing_ids: dict[str, list[int]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.stored == self.emitted
            and not self.duplicates
            and not self.missing
            and not self.gaps_unsettled
            and self.gaps_filled == self.gaps_opened
        )

    def table(self) -> str:
        kills = ", ".join(f"{k} {n}" for k, n in sorted(self.survived.items())) or "none"
        rows = [
            ("emitted", self.emitted),
            ("stored", self.stored),
            ("duplicates", self.duplicates),
            ("missing", self.missing),
            ("gaps opened", self.gaps_opened),
            ("gaps filled", self.gaps_filled),
            ("failures survived", kills),
            ("seconds", f"{self.seconds:.0f}"),
            ("verdict", "PASS" if self.ok else "FAIL"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        for where, ids in self.missing_ids.items():
            lines.append(f"missing {where}: {ids[:20]}{' ...' if len(ids) > 20 else ''}")
        lines += [f"unsettled gap: {g}" for g in self.gaps_unsettled]
        return "\n".join(lines)


@dataclass
class Chaos:
    pipeline: Pipeline
    redis: RedisServer
    postgres: PostgresServer | None  # None: a server given by URL (never restarted)
    rng: random.Random
    consumers: int = 2
    events: Sequence[str] = EVENTS
    figures: Figures = field(default_factory=Figures)

    def __post_init__(self) -> None:
        self.producer: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.simulator: subprocess.Popen[bytes] | None = None
        self.deck = list(self.events)  # every kind of failure once first, then at random
        self.rng.shuffle(self.deck)

    def start(self, *, rate: float, trades: int) -> None:
        self.simulator = self.pipeline.simulator(rate=rate, trades=trades)
        for i in range(self.consumers):
            self.workers[f"c{i + 1}"] = self.pipeline.start_consumer(f"c{i + 1}")
        self.producer = self.pipeline.start_producer()

    def strike(self) -> str:
        event = self.deck.pop() if self.deck else self.rng.choice(list(self.events))
        logger.info("chaos: %s", event)
        if event == "kill-producer":
            assert self.producer is not None
            self.producer.kill()
            self.producer.wait(10)
            time.sleep(self.rng.uniform(0.3, 3.0))
            self.producer = self.pipeline.start_producer()
        elif event == "kill-consumer":
            name = self.rng.choice(sorted(self.workers))
            self.workers[name].kill()
            self.workers[name].wait(10)
            time.sleep(self.rng.uniform(0.2, 2.0))
            self.workers[name] = self.pipeline.start_consumer(name)
        elif event == "restart-redis":
            self.redis.stop()
            time.sleep(self.rng.uniform(0.2, 2.0))
            self.redis.start()
        elif event == "restart-postgres":
            if self.postgres is None:  # a server given by URL is not ours to restart
                return "skipped restart-postgres"
            self.postgres.stop()
            time.sleep(self.rng.uniform(0.2, 2.0))
            self.postgres.start()
        elif event == "cut-feeds":
            assert self.simulator is not None
            self.simulator.send_signal(signal.SIGUSR1)
        self.figures.survived[event] += 1
        return event

    def alive(self) -> None:
        """Fail at once if a process died by itself (not by our kill)."""
        self.pipeline.check_alive()

    def stop(self) -> dict[str, int]:
        codes = {}
        for name, proc in [("producer", self.producer), *self.workers.items()]:
            if proc is not None:
                codes[name] = self.pipeline.stop(proc, timeout=60)
        if self.simulator is not None:
            self.pipeline.stop(self.simulator)
        return codes


def count(database_url: str, feeds: Sequence[Feed], trades: int, figures: Figures) -> None:
    """Fill ``figures`` from the database: ids 1..``trades`` per symbol, exactly once."""
    figures.emitted = trades * sum(len(f.symbols) for f in feeds)
    figures.stored = figures.duplicates = figures.missing = 0
    figures.missing_ids = {}
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        for feed in feeds:
            for symbol in feed.symbols:
                rows = conn.execute(
                    "SELECT trade_id, count(*) FROM trades WHERE exchange = %s AND symbol = %s"
                    " GROUP BY trade_id",
                    (feed.exchange, symbol),
                ).fetchall()
                seen = {str(r[0]): int(r[1]) for r in rows}
                figures.stored += sum(1 for i in range(1, trades + 1) if str(i) in seen)
                figures.duplicates += sum(n - 1 for n in seen.values() if n > 1)
                figures.duplicates += sum(
                    1 for k in seen if not k.isdigit() or not 1 <= int(k) <= trades
                )  # rows that are not the simulator's trades
                gone = [i for i in range(1, trades + 1) if str(i) not in seen]
                if gone:
                    figures.missing_ids[f"{feed.exchange} {symbol}"] = gone
                figures.missing += len(gone)
        gaps = conn.execute(
            "SELECT id, exchange, symbol, first_missing, last_missing, status, note FROM gaps"
            " ORDER BY id"
        ).fetchall()
    figures.gaps_opened = len(gaps)
    figures.gaps_filled = sum(1 for g in gaps if g[5] == "filled")
    figures.gaps_unsettled = [
        f"{g[0]} {g[1]} {g[2]} {g[3]}..{g[4]} {g[5]}: {g[6]}" for g in gaps if g[5] != "filled"
    ]


def run(
    work: Path,
    *,
    redis: RedisServer,
    postgres: PostgresServer | None,
    database_url: str,
    duration_s: float,
    rate: float,
    seed: int,
    exchanges: Sequence[str] = ("binance", "coinbase"),
    pause_s: tuple[float, float] = (2.0, 5.0),
    settle_timeout_s: float = 180.0,
    events: Sequence[str] = EVENTS,
    progress: Callable[[str], None] = print,
) -> Figures:
    """One chaos run: failures during the first ~70 % of ``duration_s`` of emission, then the
    rest of the trades stream in undisturbed (a gap needs a later trade to be seen), then wait
    until every id is stored and every gap settled (or ``settle_timeout_s``)."""
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    feeds = [Feed(ex, VENUES[ex][1], options=VENUES[ex][0]) for ex in exchanges]
    trades = int(rate * duration_s)
    pipeline = Pipeline(
        work=work, redis_url=redis.url, database_url=database_url, feeds=feeds,
        backfill={"every_s": 1.0, "settle_s": 2.0},
    )  # fmt: skip
    chaos = Chaos(pipeline, redis, postgres, rng, events=events)
    started = time.monotonic()
    try:
        chaos.start(rate=rate, trades=trades)
        calm_at = started + duration_s * 0.7
        while time.monotonic() < calm_at:
            time.sleep(rng.uniform(*pause_s))
            if time.monotonic() >= calm_at:
                break
            progress(f"  t+{time.monotonic() - started:5.1f} s  {chaos.strike()}")
            chaos.alive()
        deadline = started + duration_s + settle_timeout_s
        while True:
            chaos.alive()
            try:
                count(database_url, feeds, trades, chaos.figures)
            except psycopg.OperationalError:
                pass
            else:
                f = chaos.figures
                if f.stored == f.emitted and not f.gaps_unsettled:
                    break
            if time.monotonic() > deadline:
                break
            time.sleep(1.0)
        codes = chaos.stop()
        bad = {k: v for k, v in codes.items() if v != 0}
        if bad:
            chaos.figures.gaps_unsettled.append(f"processes exited with {bad}")
        count(database_url, feeds, trades, chaos.figures)
    finally:
        pipeline.close()
    chaos.figures.seconds = time.monotonic() - started
    return chaos.figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of emission")
    parser.add_argument("--rate", type=float, default=50.0, help="trades/s per symbol")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--exchanges", default="binance,coinbase,okx")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    work = Path(tempfile.mkdtemp(prefix="tickvault-chaos-"))
    print(f"chaos: seed {seed}, {args.duration:.0f} s at {args.rate:g} trades/s per symbol, "
          f"work {work}")  # fmt: skip
    redis = RedisServer(work / "redis").start()
    postgres = PostgresServer(work / "postgres", durable=False).start()
    try:
        figures = run(
            work, redis=redis, postgres=postgres, database_url=postgres.url,
            duration_s=args.duration, rate=args.rate, seed=seed,
            exchanges=args.exchanges.split(","),
        )  # fmt: skip
    finally:
        redis.kill()
        postgres.stop()
    print(figures.table())
    if not args.keep and figures.ok:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
