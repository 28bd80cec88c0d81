"""simulator -> producer -> Redis -> consumer -> PostgreSQL, as real processes and servers."""

from __future__ import annotations

import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from common.envelope import dead_key, raw_key
from common.simulator.dialects import all_dialects, get_dialect
from common.simulator.engine import make_trade
from common.symbols import Kind
from common.venues import get_venue
from tests.conftest import Servers
from tests.e2e.harness import ROOT, Feed, Pipeline, pipeline, settle
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

Row = tuple[str, str, str, Decimal, Decimal, str | None]


def expected(exchange: str, symbols: list[str], n: int) -> set[Row]:
    dialect = get_dialect(exchange)
    rows = set()
    for symbol in symbols:
        for i in range(1, n + 1):
            t = make_trade(symbol, i, 0)
            trade_id = dialect.expected_trade_id(t)
            assert trade_id is not None
            side = t.side if dialect.reports_side else None
            rows.add((exchange, symbol, trade_id, Decimal(t.price), Decimal(t.amount), side))
    return rows


def stored(p: Pipeline) -> list[Row]:
    return [
        (r[0], r[1], r[2], r[3], r[4], r[5])
        for r in p.query("SELECT exchange, symbol, trade_id, price, amount, side FROM trades")
    ]


def assert_exact(p: Pipeline, want: set[Row]) -> None:
    rows = stored(p)
    assert len(rows) == len(set(rows)), "a row was stored twice"
    assert set(rows) == want


def venue_symbols(exchange: str) -> list[str]:
    if exchange in ("upbit", "bithumb"):
        return ["BTC-KRW", "ETH-KRW"]
    if exchange in ("coinbase", "kraken"):
        return ["BTC-USD", "ETH-USD"]
    kinds = get_venue(exchange).kinds
    if Kind.SPOT not in kinds:
        return ["BTC-USDT-PERP", "ETH-USDT-PERP"]
    return ["BTC-USDT"] + (["ETH-USDT-PERP"] if Kind.PERP in kinds else ["ETH-USDT"])


@pytest.mark.parametrize("exchange", sorted(all_dialects()))
def test_every_venue_end_to_end(
    exchange: str, redis_url: str, database_url: str, work_dir: Path
) -> None:
    n = 400
    symbols = venue_symbols(exchange)
    channels = ["trades", "quotes"]
    with pipeline(
        work=work_dir, redis_url=redis_url, database_url=database_url,
        feeds=[Feed(exchange, symbols, channels)],
    ) as p:  # fmt: skip
        p.simulator(rate=400, trades=n, quote_rate=20)
        consumer = p.start_consumer()
        producer = p.start_producer()
        p.wait_rows(n * len(symbols), timeout=60)
        wait_for(lambda: p.count("quotes") > 0, what="quotes")
        assert p.stop(producer) == 0
        assert p.stop(consumer) == 0, p.log("consumer-c1")
        assert_exact(p, expected(exchange, symbols, n))
        # times are the venue's trade times, at the venue's precision, in UTC
        unit_us = get_dialect(exchange).ts_unit_ns // 1000
        bad = p.query(
            "SELECT count(*) FROM trades WHERE (extract(epoch FROM ts) * 1e6)::bigint %% %s <> 0 "
            "OR ts > recv_ts + interval '5 seconds' OR ts < now() - interval '10 minutes'",
            (max(1, unit_us),),
        )
        assert bad == [(0,)]
        quotes = p.query(
            "SELECT count(*) FROM quotes WHERE bid_price >= ask_price OR bid_price <= 0"
        )
        assert quotes == [(0,)]


def test_compressed_frames_are_stored_decompressed(
    redis_url: str, database_url: str, work_dir: Path, redis_client: redis.Redis
) -> None:
    n = 300
    feeds = [Feed("binance", ["BTC-USDT"])]
    with pipeline(work=work_dir, redis_url=redis_url, database_url=database_url, feeds=feeds) as p:
        p.simulator(rate=300, trades=n, compress="")  # the venue sends permessage-deflate frames
        p.start_consumer()
        p.start_producer()
        p.wait_rows(n)
        assert_exact(p, expected("binance", ["BTC-USDT"], n))
        [(_, fields)] = redis_client.xrange(raw_key("binance"), count=1)
        assert fields[b"f"].startswith(b"{")  # the frame as the venue wrote it, inflated


def test_kill_consumer_mid_stream_then_restart(
    redis_url: str, database_url: str, work_dir: Path
) -> None:
    n = 2500
    feeds = [Feed("binance", ["BTC-USDT"]), Feed("okx", ["BTC-USDT"])]
    with pipeline(work=work_dir, redis_url=redis_url, database_url=database_url, feeds=feeds) as p:
        p.simulator(rate=500, trades=n)
        consumer = p.start_consumer()
        p.start_producer()
        p.wait_rows(600)
        consumer.kill()  # kill -9: no flush, no ack
        consumer.wait(10)
        settle(0.5)
        p.start_consumer()  # same name: re-reads its own pending entries first
        p.wait_rows(2 * n, timeout=60)
        settle(0.5)
        assert_exact(p, expected("binance", ["BTC-USDT"], n) | expected("okx", ["BTC-USDT"], n))


def test_two_consumers_share_and_claim_from_a_dead_one(
    redis_url: str, database_url: str, work_dir: Path, redis_client: redis.Redis
) -> None:
    n = 3000
    feeds = [Feed("binance", ["BTC-USDT", "ETH-USDT"])]
    with pipeline(work=work_dir, redis_url=redis_url, database_url=database_url, feeds=feeds) as p:
        p.simulator(rate=400, trades=n)
        # c1 holds what it reads for a minute before writing: killed, it leaves entries pending.
        c1 = p.start_consumer(
            "c1", batch_ms=60_000, batch_entries=100_000, flush_when_drained=False
        )
        p.start_producer()
        key = raw_key("binance")

        def pending_of_c1() -> int:
            try:
                consumers = redis_client.xinfo_consumers(key, "tickvault")
            except redis.ResponseError:  # no stream or group yet
                return 0
            for c in consumers:
                if c["name"] in (b"c1", "c1"):
                    return int(c["pending"])
            return 0

        wait_for(lambda: pending_of_c1() > 100, what="c1 holding entries")
        # c2 joins the group only now: while both read, a blocked reader takes new entries
        # first, so a c2 that commits quickly could leave c1 nothing to hold.
        p.start_consumer("c2", batch_entries=50)
        p.wait_rows(1)  # c2 is reading and writing
        c1.kill()
        c1.wait(10)
        assert pending_of_c1() > 100
        p.wait_rows(2 * n, timeout=90)
        wait_for(lambda: pending_of_c1() == 0, what="c1's entries claimed")
        assert "claimed" in p.log("consumer-c2")
        assert_exact(p, expected("binance", ["BTC-USDT", "ETH-USDT"], n))


def test_postgres_stopped_and_started_during_a_run(
    servers: Servers, redis_url: str, database_url: str, work_dir: Path
) -> None:
    if servers.postgres_server is None:
        pytest.skip("needs the embedded PostgreSQL (a server given by URL is not ours to stop)")
    n = 2000
    feeds = [Feed("binance", ["BTC-USDT"])]
    with pipeline(work=work_dir, redis_url=redis_url, database_url=database_url, feeds=feeds) as p:
        p.simulator(rate=400, trades=n)
        consumer = p.start_consumer()
        p.start_producer()
        p.wait_rows(300)
        servers.postgres_server.stop()
        settle(2.0)  # the stream keeps filling while the database is down
        servers.postgres_server.start()
        p.wait_rows(n, timeout=90)
        assert consumer.poll() is None, "the consumer must survive a database restart"
        assert "retrying" in p.log("consumer-c1")
        assert_exact(p, expected("binance", ["BTC-USDT"], n))


def test_redis_stopped_and_started_during_a_run(
    servers: Servers, redis_url: str, database_url: str, work_dir: Path
) -> None:
    if servers.redis_server is None:
        pytest.skip("needs the embedded Redis (a server given by URL is not ours to stop)")
    n = 2000
    feeds = [Feed("okx", ["BTC-USDT"])]
    with pipeline(work=work_dir, redis_url=redis_url, database_url=database_url, feeds=feeds) as p:
        p.simulator(rate=400, trades=n)
        consumer = p.start_consumer()
        producer = p.start_producer()
        p.wait_rows(300)
        servers.redis_server.stop()  # AOF: what was acknowledged survives
        settle(1.5)  # the producer buffers frames in memory meanwhile
        servers.redis_server.start()
        p.wait_rows(n, timeout=90)
        assert producer.poll() is None and consumer.poll() is None
        assert "buffering frames" in p.log("producer")
        assert_exact(p, expected("okx", ["BTC-USDT"], n))


def test_rollover_make_before_break_leaves_no_gap(
    redis_url: str, database_url: str, work_dir: Path
) -> None:
    n = 2000
    feeds = [Feed("binance", ["BTC-USDT"])]
    with pipeline(
        work=work_dir, redis_url=redis_url, database_url=database_url, feeds=feeds,
        producer={"rollover_after_s": 1.5, "rollover_overlap_s": 0.4},
    ) as p:  # fmt: skip
        p.simulator(rate=500, trades=n)
        p.start_consumer()
        p.start_producer()
        p.wait_rows(n, timeout=60)
        settle(0.3)
        assert p.log("producer").count("rolling over") >= 2
        assert_exact(p, expected("binance", ["BTC-USDT"], n))


def test_replay_of_the_whole_stream_adds_no_rows(
    redis_url: str, database_url: str, work_dir: Path, redis_client: redis.Redis
) -> None:
    n = 500
    feeds = [Feed("binance", ["BTC-USDT"], ["trades", "quotes"])]
    with pipeline(work=work_dir, redis_url=redis_url, database_url=database_url, feeds=feeds) as p:
        p.simulator(rate=500, trades=n, quote_rate=20)
        consumer = p.start_consumer()
        producer = p.start_producer()
        p.wait_rows(n)
        p.stop(producer)
        wait_for(lambda: redis_client.xinfo_groups(raw_key("binance"))[0]["lag"] == 0, what="lag 0")
        p.stop(consumer)
        before = (p.count("trades"), p.count("quotes"))
        done = subprocess.run(
            [sys.executable, "-m", "common.cli", "replay", f"--config={p.config}", "--from=0"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "0 new rows" in done.stdout
        assert (p.count("trades"), p.count("quotes")) == before
        # the temporary replay group is gone again
        groups = [g["name"] for g in redis_client.xinfo_groups(raw_key("binance"))]
        assert groups in ([b"tickvault"], ["tickvault"])


def test_malformed_frame_is_dead_lettered_and_the_worker_keeps_going(
    redis_url: str, database_url: str, work_dir: Path, redis_client: redis.Redis
) -> None:
    feeds = [Feed("binance", ["BTC-USDT"])]
    with pipeline(work=work_dir, redis_url=redis_url, database_url=database_url, feeds=feeds) as p:
        consumer = p.start_consumer()
        key = raw_key("binance")
        base = {
            b"k": b"t",
            b"e": b"binance",
            b"x": b"",
            b"c": b"test",
            b"t": b"1700000000000000000",
        }
        good = (
            b'{"e":"trade","E":1700000000000,"s":"BTCUSDT","t":7,"p":"1.5","q":"2",'
            b'"T":1700000000000,"m":false,"M":true}'
        )
        bad_id = redis_client.xadd(key, {**base, b"n": b"1", b"f": b"{not json"})
        redis_client.xadd(key, {**base, b"n": b"2", b"f": good})
        p.wait_rows(1)
        dead = wait_for(lambda: redis_client.xrange(dead_key("binance")), what="dead letter")
        [(_, fields)] = dead
        assert fields[b"f"] == b"{not json"
        assert fields[b"origin"] == bad_id
        assert b"undecodable" in fields[b"reason"]
        assert consumer.poll() is None
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(30) == 0
        assert redis_client.xpending(key, "tickvault")["pending"] == 0
        assert p.query("SELECT trade_id, price, amount, side FROM trades") == [
            ("7", Decimal("1.5"), Decimal("2"), "buy")
        ]
