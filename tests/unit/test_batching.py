"""The batch flushes on count, on time, and (by default) when the stream is drained."""

from __future__ import annotations

from common.records import Trade
from consumer.batching import Batcher
from consumer.process import Outcome


def _trade(i: int) -> Trade:
    return Trade("binance", "BTC-USDT", str(i), "1", "1", "buy", 10**18, 10**18)


def test_flushes_at_max_entries() -> None:
    b = Batcher(max_entries=3, max_delay_s=10.0, flush_when_drained=False)
    for i in range(2):
        b.add("k", f"1-{i}", {}, Outcome(trades=[_trade(i)]), now=0.0)
        assert not b.due(0.0)
    b.add("k", "1-2", {}, Outcome(trades=[_trade(2)]), now=0.0)
    assert b.due(0.0)
    batch = b.take()
    assert batch.entries == 3 and [t.trade_id for t in batch.trades] == ["0", "1", "2"]
    assert batch.acks == {"k": ["1-0", "1-1", "1-2"]}
    assert b.batch.entries == 0 and not b.due(100.0)


def test_flushes_after_max_delay_from_the_first_entry() -> None:
    b = Batcher(max_entries=1000, max_delay_s=0.05, flush_when_drained=False)
    b.add("k", "1-0", {}, Outcome(trades=[_trade(0)]), now=10.0)
    b.add("k", "1-1", {}, Outcome(trades=[_trade(1)]), now=10.04)
    assert not b.due(10.049)
    assert abs(b.wait_s(10.03) - 0.02) < 1e-9
    assert b.due(10.05)


def test_flushes_when_drained_only_if_enabled() -> None:
    eager = Batcher(max_entries=1000, max_delay_s=10.0)
    lazy = Batcher(max_entries=1000, max_delay_s=10.0, flush_when_drained=False)
    for b in (eager, lazy):
        b.add("k", "1-0", {}, Outcome(trades=[_trade(0)]), now=0.0)
    assert eager.due(0.0, drained=True)
    assert not lazy.due(0.0, drained=True)
    assert not Batcher(10, 1.0).due(5.0, drained=True)  # empty batches never flush


def test_dead_letters_controls_and_spans_are_kept_per_entry() -> None:
    b = Batcher(max_entries=10, max_delay_s=1.0)
    b.add("k1", "1-0", {b"f": b"x"}, Outcome(dead="bad"), now=0.0)
    b.add("k1", "1-1", {}, Outcome(control="ack"), now=0.0)
    b.add("k2", "2-0", {}, Outcome(trades=[_trade(1), _trade(2)], recv_ns=5), now=0.0)
    b.add("k2", "2-1", {}, Outcome(trades=[_trade(3)], dead="half bad", recv_ns=3), now=0.0)
    batch = b.take()
    assert [(d.entry_id, d.reason, d.fields) for d in batch.dead] == [
        ("1-0", "bad", {b"f": b"x"}),
        ("2-1", "half bad", {}),
    ]
    assert batch.controls == {"ack": 1}
    assert [(s.entry_id, s.trades) for s in batch.spans] == [("2-0", (0, 2)), ("2-1", (2, 3))]
    assert batch.acks == {"k1": ["1-0", "1-1"], "k2": ["2-0", "2-1"]}
    assert batch.oldest_recv_ns == 3
