"""The bench's PostgreSQL is warmed (``bench.scenarios.warm_wal``): WAL segments made once, then
recycled, as on a server that has run a while. A fresh server makes (zero-fills and fsyncs) a
segment each time one fills, which stalls every commit meanwhile (~100 ms every 1.4 s at 40,000
trades/s on the box the bench was tuned on): a stall of the bench's setup, not of a collector.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from bench.scenarios import WAL_SEGMENTS, WAL_SETTINGS, fill_wal_segments, warm_wal
from common.servers import PostgresServer

pytestmark = pytest.mark.integration


def _wal_files(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_ls_waldir()").fetchone()
    assert row is not None
    return int(row[0])


def _server(tmp_path: Path) -> PostgresServer:
    return PostgresServer(tmp_path / "pg", settings={"min_wal_size": "128MB"}).start()


def _fill(url: str, segments: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        fill_wal_segments(conn, segments)


@pytest.mark.timeout(60)
def test_warmed_segments_are_reused_not_made(tmp_path: Path) -> None:
    pg = _server(tmp_path)
    try:
        warm_wal(pg.url, 8)
        before = _wal_files(pg.url)
        assert before >= 8
        _fill(pg.url, 6)  # as a run writing six segments' worth
        assert _wal_files(pg.url) == before
    finally:
        pg.stop()


@pytest.mark.timeout(60)
def test_a_fresh_server_makes_a_segment_for_each(tmp_path: Path) -> None:
    pg = _server(tmp_path)  # what the bench ran on before: the test above can fail
    try:
        before = _wal_files(pg.url)
        _fill(pg.url, 6)
        assert _wal_files(pg.url) >= before + 5
    finally:
        pg.stop()


def test_the_bench_keeps_what_it_makes() -> None:
    kept_mb = int(WAL_SETTINGS["min_wal_size"].removesuffix("MB"))
    assert kept_mb >= 16 * WAL_SEGMENTS  # every segment warm_wal makes is kept
