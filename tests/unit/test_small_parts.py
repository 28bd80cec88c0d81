"""Envelope, errors and backoff, symbols, COPY text, replay ids, metrics, pacing."""

from __future__ import annotations

import random

import pytest
import redis

from common.envelope import Envelope, dead_key, decode_fields, exchange_of_key, raw_key
from common.errors import ConfigError, PoisonFrame, TransientError, backoff, is_transient
from common.metrics import Metrics
from common.records import Quote, Trade
from common.simulator.engine import Pacer, make_trade
from common.symbols import Kind, parse_symbol
from consumer.replay import before, to_stream_id
from consumer.store import quotes_copy_text, trades_copy_text


def test_envelope_round_trip_keeps_bytes_and_kind() -> None:
    env = Envelope(
        b"\x00\xffbinary", True, "upbit", "", "upbit/0#1@1", 42, 1_700_000_000_000_000_001
    )
    assert decode_fields(env.fields()) == env
    with pytest.raises(PoisonFrame, match="bad envelope"):
        decode_fields({b"f": b"x", b"e": b"binance", b"t": b"soon"})


def test_stream_keys_carry_a_hash_tag_per_exchange() -> None:
    assert raw_key("binance") == "tickvault:raw:{binance}"
    assert dead_key("okx") == "tickvault:dead:{okx}"
    assert exchange_of_key(raw_key("binance-futures")) == "binance-futures"


def test_backoff_grows_is_capped_and_jittered() -> None:
    delays = backoff(initial=1.0, factor=2.0, cap=8.0, jitter=0.5, rng=random.Random(1))
    values = [next(delays) for _ in range(8)]
    assert 0.5 <= values[0] <= 1.5
    assert all(v <= 8.0 for v in values)  # the jitter spreads below the cap, never above
    assert all(4.0 <= v for v in values[4:])
    assert len(set(values)) == len(values)  # jittered


def test_classify_errors() -> None:
    assert is_transient(redis.ConnectionError("down"))
    assert is_transient(TransientError("x"))
    assert is_transient(ConnectionRefusedError())
    assert not is_transient(PoisonFrame("x"))
    assert not is_transient(ConfigError("k", "p"))
    assert not is_transient(ValueError("x"))


def test_symbols() -> None:
    assert str(parse_symbol("BTC-USDT")) == "BTC-USDT"
    assert parse_symbol("XBT-USD").base == "BTC"
    assert parse_symbol("BTC-USDT-PERP").kind is Kind.PERP
    future = parse_symbol("BTC-USD-250627")
    assert (future.kind, future.expiry, str(future)) == (Kind.FUTURE, "250627", "BTC-USD-250627")
    for bad in ("btc-usdt", "BTCUSDT", "BTC-USDT-SWAP", "BTC-USDT-2506"):
        with pytest.raises(ValueError, match="canonical"):
            parse_symbol(bad)


def test_copy_text_escapes_what_copy_would_misread() -> None:
    t = Trade("kraken", "BTC-USD", "a\tb\\c\nd", "1.5", "2", None, 1_700_000_000_123_456_789, 5_000)
    assert trades_copy_text([t]) == (
        "kraken\tBTC-USD\ta\\tb\\\\c\\nd\t1.5\t2\t\\N\t1700000000123456\t5\t0\n"
    )
    q = Quote("okx", "BTC-USDT", "7", "1", "2", "3", "4", 1_000, 2_000, flags=16)
    assert quotes_copy_text([q]) == "okx\tBTC-USDT\t7\t1\t2\t3\t4\t1\t2\t16\n"


def test_replay_ids() -> None:
    assert to_stream_id("1700000000000-5") == "1700000000000-5"
    assert to_stream_id("1700000000000") == "1700000000000-0"
    assert to_stream_id("2023-11-14T22:13:20Z") == "1700000000000-0"
    assert to_stream_id("2023-11-14T22:13:20", end=True).startswith("1700000000000-1844")
    assert before("5-3") == "5-2"
    assert before("5-0") == "4-18446744073709551615"
    assert before("0-0") == "0-0"
    with pytest.raises(ValueError, match="ISO"):
        to_stream_id("yesterday")


def test_metrics_summary_and_prometheus() -> None:
    m = Metrics("consumer")
    m.inc("trades", 3)
    m.inc("control:ack")
    m.set("lag", 7)
    m.latency.observe(0.004, 10)
    m.latency.observe(0.3)
    assert m.latency.quantile(0.5) == 0.005 and m.latency.quantile(0.99) == 0.5
    m.set("lag:binance", 7)
    text = m.prometheus()
    assert 'tickvault_trade_rows_committed_total{process="consumer"} 3.0' in text
    assert 'tickvault_control_frames_total{kind="ack",process="consumer"} 1.0' in text
    assert 'tickvault_group_lag{exchange="binance",process="consumer"} 7.0' in text
    assert 'tickvault_receive_to_commit_seconds_bucket{le="+Inf",process="consumer"} 11.0' in text
    assert "trades=3" in m.summary()


def test_simulated_trades_are_deterministic_and_paced() -> None:
    a, b = make_trade("BTC-USDT", 3, 1), make_trade("BTC-USDT", 3, 2)
    assert (
        (a.price, a.amount, a.side) == (b.price, b.amount, b.side) == ("100.03", "0.00004", "sell")
    )
    pacer = Pacer(rate=100, limit=150)
    assert pacer.due(10.0) == 1
    assert pacer.due(10.5) == 50
    assert pacer.due(12.0) == 99  # capped at the limit
    assert pacer.finished and pacer.due(20.0) == 0


def test_metrics_are_served_over_http() -> None:
    import urllib.request

    from common.metrics import serve_metrics
    from common.servers import free_port

    m = Metrics("producer")
    m.inc("published:binance", 5)
    port = free_port()
    server = serve_metrics(m, port, host="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'tickvault_frames_written_total{exchange="binance",process="producer"} 5.0' in body
