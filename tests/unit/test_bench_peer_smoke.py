"""One short run of each collector through the peer scenario (``bench.peer``): real servers, the
simulator, cryptofeed in its own venv, tickvault's producer and consumer. About 15 s.

Opt-in, so ``make test`` never runs it: it may need pip (the peer venv) and it measures CPU on a
shared box. Run it with ``TICKVAULT_PEER_SMOKE=1 .venv/bin/python -m pytest
tests/unit/test_bench_peer_smoke.py``; it skips when the peer venv cannot be made (no package
registry). Marked ``integration`` too, for ``-m "not integration"``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import peer, peer_venv
from bench.peer_report import CRYPTOFEED, TICKVAULT
from bench.scenarios import Env
from common.servers import PostgresServer, RedisServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("TICKVAULT_PEER_SMOKE") != "1",
        reason="opt-in (TICKVAULT_PEER_SMOKE=1): may pip-install cryptofeed, starts collectors",
    ),
]


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[peer.Context]:
    try:
        python, _ = peer_venv.ensure(tmp_path / "peer-venv.log")
    except peer_venv.PeerUnavailable as exc:
        pytest.skip(f"no peer venv: {exc}")
    redis_server = RedisServer(tmp_path / "redis").start()
    pg = PostgresServer(tmp_path / "pg", settings={"track_commit_timestamp": "on"})
    try:
        pg.start()
        env = Env(tmp_path, redis_server.url, pg.url, commit_timestamps=True)
        assert redis_server.proc is not None and pg.proc is not None
        yield peer.Context(env, python, redis_server.proc.pid, pg.proc.pid)
    finally:
        redis_server.stop()
        pg.stop()


@pytest.mark.timeout(90)
def test_both_collectors_store_every_trade_once_and_are_measured(ctx: peer.Context) -> None:
    [scenario] = peer.plan([2000.0], 1.5, 0)
    for collector, processes in (
        (CRYPTOFEED, {"cryptofeed"}),
        (TICKVAULT, {"producer", "consumer", "redis"}),
    ):
        run = peer.one_run(ctx, collector, scenario, ctx.env.work / collector)
        f = run["figures"]
        assert run["status"] == "complete", run
        assert (f["missing"], f["duplicates"], f["bad"]) == (0.0, 0.0, 0.0), run
        assert f["rows"] == scenario.trades
        assert 1000 < f["rows_per_s"] <= 2100  # paced at 2,000/s
        assert 0 < f["p50_ms"] <= f["p99_ms"] < 1000
        assert processes <= set(run["cpu_s"]) and all(run["cpu_s"][p] > 0 for p in processes)
        assert f["cpu_us_per_row"] == pytest.approx(
            1e6 * sum(run["cpu_s"][p] for p in processes) / scenario.trades, rel=0.01
        )
        assert not math.isnan(f["postgres_us_per_row"])
