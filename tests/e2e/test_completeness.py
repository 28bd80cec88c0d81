"""Completeness end to end: a producer killed and restarted, a feed cut by the venue, and a
consumer killed, all while the venue goes on trading; the gaps are found from the stored ids,
backfilled from the venue's REST (the simulator's, from the trades it streamed) and marked
``filled``; the coverage ledger shows each blind interval with its reason."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import SLOW
from tests.e2e.harness import Feed, pipeline, settle
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


def cli(config: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.cli", *args, f"--config={config}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("exchange", ["binance", "binance-aggTrade", "coinbase"])
def test_a_killed_producer_leaves_a_gap_that_backfill_fills(
    exchange: str, redis_url: str, database_url: str, work_dir
) -> None:
    exchange, _, stream = exchange.partition("-")  # binance-aggTrade: the @aggTrade stream
    symbol = {"binance": "BTC-USDT", "coinbase": "BTC-USD"}[exchange]
    prefix = "agg-" if stream else ""  # its trade_ids: agg-<aggregate id>, gaps in that space
    options = {"trades": stream} if stream else {}
    rate, total = 100, 1_500
    with pipeline(
        work=work_dir, redis_url=redis_url, database_url=database_url,
        feeds=[Feed(exchange, [symbol], options=options)],
        backfill={"every_s": 0.5, "settle_s": 1.0},
    ) as p:  # fmt: skip
        p.simulator(rate=rate, trades=total)
        consumer = p.start_consumer()
        producer = p.start_producer()
        p.wait_rows(200, timeout=30 * SLOW)
        producer.kill()  # mid-stream: no stop marker, nothing sent for a while
        producer.wait(10)
        time.sleep(2.0)
        producer = p.start_producer()

        def complete() -> bool:
            p.check_alive()
            rows = p.query(
                "SELECT count(DISTINCT trade_id), count(*) FROM trades WHERE symbol = %s",
                (symbol,),
            )
            gaps = p.query("SELECT count(*) FROM gaps WHERE status <> 'filled'")
            return rows[0] == (total, total) and gaps[0][0] == 0

        wait_for(complete, timeout=60 * SLOW, what="every trade stored once, gaps filled")
        gaps = p.query(
            "SELECT first_missing, last_missing, status, rows_recovered, note, id_prefix FROM gaps"
        )
        assert len(gaps) >= 1, "the kill opened no gap"
        missed = sum(g[1] - g[0] + 1 for g in gaps)
        assert missed >= rate, gaps  # ~2 s of trades were never received
        assert all(g[2] == "filled" for g in gaps)
        assert all(g[5] == prefix for g in gaps)
        assert sum(g[3] for g in gaps) >= rate  # most came from REST
        stored = [str(r[0]) for r in p.query("SELECT trade_id FROM trades")]
        assert sorted(stored) == sorted(f"{prefix}{i}" for i in range(1, total + 1))

        coverage = cli(str(p.config), "coverage", "--since=1h")
        assert coverage.returncode == 1, coverage.stderr  # a blind interval: exit 1
        assert "blind" in coverage.stdout and "producer was restarted" in coverage.stdout
        ledger = cli(str(p.config), "gaps")
        assert ledger.returncode == 0, ledger.stdout  # every gap settled
        assert "filled" in ledger.stdout
        assert p.stop(producer) == 0 and p.stop(consumer) == 0
        sessions = p.query("SELECT reason FROM feed_sessions ORDER BY connected_at")
        assert [r[0] for r in sessions][-1] == "producer stopped"


def test_a_cut_feed_and_a_killed_consumer_lose_nothing(
    redis_url: str, database_url: str, work_dir
) -> None:
    total = 2_000
    with pipeline(
        work=work_dir, redis_url=redis_url, database_url=database_url,
        feeds=[Feed("binance", ["BTC-USDT", "ETH-USDT"])],
        backfill={"every_s": 0.5, "settle_s": 1.0},
    ) as p:  # fmt: skip
        sim = p.simulator(rate=150, trades=total)
        c1, c2 = p.start_consumer("c1"), p.start_consumer("c2")
        producer = p.start_producer()
        p.wait_rows(300, timeout=30 * SLOW)
        sim.send_signal(signal.SIGUSR1)  # the venue drops every connection
        settle(0.5)
        c1.kill()  # with whatever it held pending: c2 claims it
        settle(1.0)
        sim.send_signal(signal.SIGUSR1)

        def complete() -> bool:
            p.check_alive()
            rows = p.query("SELECT count(DISTINCT (symbol, trade_id)), count(*) FROM trades")
            unsettled = p.query("SELECT count(*) FROM gaps WHERE status <> 'filled'")
            return rows[0] == (2 * total, 2 * total) and unsettled[0][0] == 0

        wait_for(complete, timeout=60 * SLOW, what="every trade of both symbols stored once")
        lost = p.query("SELECT count(*) FROM feed_sessions WHERE reason LIKE 'lost:%%'")
        assert lost[0][0] >= 2  # both cuts are in the coverage ledger with their reason
        alive = p.query("SELECT count(*) FROM producer_runs WHERE alive_at > started_at")
        assert alive[0][0] >= 1  # the running producer says so every ALIVE_S
        assert p.stop(producer) == 0 and p.stop(c2) == 0


def test_backfill_on_demand_and_rollovers_leave_no_blind_interval(
    redis_url: str, database_url: str, work_dir
) -> None:
    """``backfill.auto = false``: the consumers only record; ``tickvault backfill`` finds the
    gap and fills it. Connections rolled over make-before-break leave nothing blind."""
    total = 1_200
    with pipeline(
        work=work_dir, redis_url=redis_url, database_url=database_url,
        feeds=[Feed("coinbase", ["BTC-USD"])],
        backfill={"auto": False, "settle_s": 1.0},
        producer={"rollover_after_s": 4.0, "rollover_overlap_s": 1.0},
    ) as p:  # fmt: skip
        p.simulator(rate=100, trades=total)
        consumer = p.start_consumer()
        producer = p.start_producer()
        p.wait_rows(500, timeout=30 * SLOW)
        producer.kill()
        producer.wait(10)
        time.sleep(1.5)
        producer = p.start_producer()
        p.wait_rows(total - 200, timeout=30 * SLOW)
        settle(2.0)
        assert p.query("SELECT count(*) FROM gaps") == [(0,)]  # nobody backfills by itself
        done = cli(str(p.config), "backfill", "--since=1h")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "filled" in done.stdout, done.stdout
        wait_for(lambda: p.count() == total, timeout=30 * SLOW, what="every trade")
        assert cli(str(p.config), "gaps", "--since=1h").returncode == 0
        rolled = p.query("SELECT count(*) FROM feed_sessions WHERE reason = 'rolled over'")
        assert rolled[0][0] >= 1
        coverage = cli(str(p.config), "coverage", "--since=1h")
        blinds = [line for line in coverage.stdout.splitlines() if "    blind " in line]
        assert len(blinds) == 1 and "producer was restarted" in blinds[0], coverage.stdout
        assert p.stop(producer) == 0 and p.stop(consumer) == 0
