"""The peer table's "longest gap between commits" (``bench.peer.COMMIT_GAP``), on a real
PostgreSQL with commit timestamps: a commit that waited shows, and rows before the warm-up or
outside the run's ids do not count."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import psycopg
import pytest

from bench import peer
from bench.peer_report import CRYPTOFEED
from common.servers import PostgresServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pg = PostgresServer(
        tmp_path_factory.mktemp("pg"), settings={"track_commit_timestamp": "on"}
    ).start()
    try:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(peer.CF_DDL)
        yield pg.url
    finally:
        pg.stop()


def _commit(url: str, ids: range, ts: str = "now()") -> None:
    """One transaction of cryptofeed rows ``ids`` (trade time ``ts``: SQL)."""
    with psycopg.connect(url) as conn:
        for i in ids:
            conn.execute(
                f"INSERT INTO {peer.CF_TABLE} (timestamp, receipt_timestamp, exchange, symbol, "
                f"side, amount, price, trade_id) VALUES ({ts}, now(), 'BINANCE', %s, 'buy', 1, 1, "
                "%s)",
                (peer.SYMBOL, str(i)),
            )


def _gap(url: str, n: int, warmup: float) -> float:
    with psycopg.connect(url) as conn:
        return peer.longest_commit_gap_ms(conn, CRYPTOFEED, {"n": n, "warmup": warmup})


@pytest.mark.timeout(60)
def test_a_commit_that_waited_is_the_longest_gap(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {peer.CF_TABLE}")
    _commit(url, range(1, 2))
    assert math.isnan(_gap(url, 100, 0.0))  # one commit: no gap
    _commit(url, range(2, 4))
    quick = _gap(url, 100, 0.0)
    time.sleep(0.4)
    _commit(url, range(4, 6))
    _commit(url, range(6, 8))
    waited = _gap(url, 100, 0.0)
    assert quick < 300
    assert 400 <= waited < 5_000
    # ids past the run's count are not its rows: the waited commit (ids 4, 5) is left out
    assert _gap(url, 3, 0.0) == pytest.approx(quick)


@pytest.mark.timeout(60)
def test_commits_of_the_warm_up_do_not_count(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {peer.CF_TABLE}")
    _commit(url, range(1, 2), ts="now() - interval '10 s'")  # the run's first trade, 10 s back
    time.sleep(0.4)
    _commit(url, range(2, 3))
    _commit(url, range(3, 4))
    assert _gap(url, 10, 0.0) >= 400
    assert _gap(url, 10, 5.0) < 400  # after a 5 s warm-up: only the last two commits
