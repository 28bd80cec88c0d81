"""A short ``make chaos`` run: random kills and restarts, then every trade stored exactly once
and every gap filled (``tests/chaos.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.servers import PostgresServer, RedisServer
from tests.chaos import run

pytestmark = [pytest.mark.e2e, pytest.mark.own_servers]


@pytest.mark.timeout(420)
def test_a_short_chaos_run_ends_with_every_trade_once(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    postgres = PostgresServer(tmp_path / "pg", durable=False).start()  # restarted by the run
    seed = int(os.environ.get("TICKVAULT_CHAOS_SEED", "7"))
    try:
        figures = run(
            tmp_path / "work", redis=own_redis, postgres=postgres, database_url=postgres.url,
            duration_s=40, rate=40, seed=seed, pause_s=(2.0, 4.0), settle_timeout_s=150,
            exchanges=("binance", "coinbase"),
        )  # fmt: skip
    finally:
        postgres.stop()
    print(figures.table())
    assert figures.ok, figures.table()
    assert sum(figures.survived.values()) >= 5
