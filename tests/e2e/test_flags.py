"""Abnormal trades flagged at ingest, end to end: the simulator injects fat fingers and short
flash crashes; every trade is stored exactly once, the injected ones with their flag bits, the
others clean, and nothing is dead-lettered."""

from __future__ import annotations

import pytest
import redis

from common.envelope import dead_key, raw_key
from common.simulator.engine import is_fat_finger, is_flash_crash, make_trade
from consumer.flags import Flag
from tests.conftest import SLOW
from tests.e2e.harness import Feed, pipeline
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


def test_injected_abnormal_trades_are_stored_flagged_and_nothing_else_is(
    redis_url: str, redis_client, database_url: str, work_dir
) -> None:
    total = 2_100  # two fat fingers (500, 1497) and one flash crash (1000, 1001) per symbol
    with pipeline(
        work=work_dir, redis_url=redis_url, database_url=database_url,
        feeds=[Feed("binance", ["BTC-USDT", "ETH-USDT"])],
    ) as p:  # fmt: skip
        p.simulator(rate=400, trades=total, abnormal="")
        p.start_consumer("c1")
        p.start_consumer("c2")  # each sees part of a symbol's trades: flags still right

        def both_reading() -> bool:  # each builds its own history from the first trade on
            try:
                return len(redis_client.xinfo_consumers(raw_key("binance"), "tickvault")) == 2
            except redis.ResponseError:  # no stream or group yet
                return False

        wait_for(both_reading, timeout=30 * SLOW, what="both consumers reading")
        p.start_producer()
        wait_for(lambda: p.count() == 2 * total, timeout=60 * SLOW, what="every trade")
        rows = p.query("SELECT symbol, trade_id::int, price::text, amount::text, flags FROM trades")
        assert len(rows) == 2 * total and len({(r[0], r[1]) for r in rows}) == 2 * total
        for symbol, tid, price, amount, flags in rows:
            want = make_trade(symbol, tid, 0, abnormal=True)
            assert (price, amount) == (want.price, want.amount), (tid, price, amount)
            expected = 0
            if is_fat_finger(tid):
                expected |= Flag.SIZE_OUTLIER
            if is_flash_crash(tid):
                expected |= Flag.PRICE_OUTLIER
            assert flags == expected, (symbol, tid, price, amount, flags)
        assert redis_client.xlen(dead_key("binance")) == 0
        flagged = p.query("SELECT count(*) FROM trades WHERE flags <> 0")[0][0]
        assert flagged == 2 * (2 + 2)  # per symbol: two fat fingers, two crash trades
