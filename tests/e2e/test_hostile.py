"""A fake Binance spot server mixing good trades with hostile frames, read by two consumers.

The fake speaks just enough of Binance's combined-stream protocol for the producer (``/stream``,
``SUBSCRIBE`` answered with ``{"result": null, "id": N}``), then sends one deterministic list of
frames, once. What must come out:

- every good trade stored exactly once, with its exact price, amount, side and times;
- every hostile frame that cannot be stored in the dead-letter stream, found by its ``f`` field,
  with a non-empty reason of at most 500 characters on one line;
- an unknown event type counted, never dead-lettered, and its name unable to add a line to the
  ``/metrics`` exposition;
- no process exits by itself, nothing stays pending, every process exits 0 on SIGTERM.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from common.envelope import dead_key, raw_key
from common.servers import free_port
from tests.e2e.harness import Feed, Pipeline, pipeline
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

SYMBOLS = {"BTC-USDT": "BTCUSDT", "ETH-USDT": "ETHUSDT"}  # canonical -> Binance's name
GOOD = 2_000  # good trades, over both symbols
HOSTILE_EVERY = 40  # one hostile frame after this many good trades
REASON_MAX = 500
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# One exposition line: name{label="value",...} value (label values escaped, no raw newline)
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
METRIC_LINE = re.compile(
    rf"[a-zA-Z_:][a-zA-Z0-9_:]*(?:\{{{_LABEL}(?:,{_LABEL})*\}})? "
    r"(?:[+-]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|Inf)|NaN)\Z"
)


@dataclass(frozen=True)
class Good:
    symbol: str  # canonical
    trade_id: int
    price: str
    amount: str
    buyer_is_maker: bool
    time_ms: int

    def frame(self, *, wrapped: bool = True, extra: str = "") -> bytes:
        venue = SYMBOLS[self.symbol]
        event = (
            f'{{"e":"trade","E":{self.time_ms + 1},"s":"{venue}","t":{self.trade_id},'
            f'"p":"{self.price}","q":"{self.amount}","T":{self.time_ms},'
            f'"m":{json.dumps(self.buyer_is_maker)},"M":true{extra}}}'
        )
        if wrapped:
            event = f'{{"stream":"{venue.lower()}@trade","data":{event}}}'
        return event.encode()

    @property
    def side(self) -> str:
        return "sell" if self.buyer_is_maker else "buy"  # m: "Is the buyer the market maker?"


@dataclass(frozen=True)
class Hostile:
    name: str
    data: bytes
    binary: bool = False
    dead: bool = True  # a dead-letter case (else: counted as a control frame)


def _trade(trade_id: object = 900_001, **fields: object) -> bytes:
    """A Binance trade event as JSON text; ``fields`` replace (or, as raw JSON text, add) keys;
    a value of ``...`` removes the key."""
    event: dict[str, object] = {
        "e": "trade", "E": "@NOW", "s": "BTCUSDT", "t": trade_id, "p": "1.5", "q": "2",
        "T": "@NOW", "m": False, "M": True,
    }  # fmt: skip
    event.update(fields)
    parts = []
    for key, value in event.items():
        if value is ...:
            continue
        text = value if isinstance(value, bytes) else json.dumps(value).encode()
        parts.append(b'"%s":%s' % (key.encode(), text))
    return b"{" + b",".join(parts) + b"}"


def hostile_frames(now_ms: int) -> list[Hostile]:
    """One frame of each hostile kind (``@NOW`` in a frame stands for a plausible time)."""
    deep = 50_000
    frames = [
        Hostile("time of 1,000 digits", _trade(T=b"9" * 1000)),
        Hostile("trade id of 1,000 digits", _trade(trade_id=b"7" * 1000)),
        Hostile("price of 1,000 digits", _trade(p="1" * 1000)),
        Hostile("price NaN", _trade(p="NaN")),
        Hostile("price Infinity", _trade(p="Infinity")),
        Hostile("price -1", _trade(p="-1")),
        Hostile("price 1e999", _trade(p="1e999")),
        Hostile("price 0", _trade(p="0")),
        Hostile("amount 0", _trade(q="0")),
        Hostile("time in year 9999 (ms)", _trade(T=253_402_300_799_000)),
        Hostile("time in 1970", _trade(T=1_000)),
        Hostile("deep list", b"[" * deep),
        Hostile("deep objects", b'{"a":' * deep + b"1" + b"}" * deep),
        Hostile("deep objects in a trade", _trade(s=b'{"a":' * deep + b"1" + b"}" * deep)),
        Hostile("invalid UTF-8, binary", _trade(s=b'"BTC\xff\xfeUSDT"'), binary=True),
        Hostile("invalid UTF-8 bytes alone, binary", b"\xff\xfe\xfd\x80", binary=True),
        Hostile("invalid UTF-8, text", _trade(s=b'"ETH\xc3\x28USDT"')),
        Hostile("NUL in the symbol", _trade(s="BTC\u0000USDT")),
        Hostile("NUL in the price", _trade(p="1\u00005")),
        Hostile("raw NUL byte in a string", _trade(s=b'"BTC\x00USDT"')),
        Hostile("2 MB symbol", _trade(s="X" * 2_000_000)),
        Hostile("empty frame", b""),
        Hostile("not JSON", b"this is {not JSON"),
        Hostile("JSON array", b"[]"),
        Hostile("JSON number", b"1"),
        Hostile("JSON string", b'"x"'),
        Hostile("JSON null", b"null"),
        Hostile("symbol not subscribed", _trade(s="XRPUSDT")),
        Hostile("trade missing fields", _trade(900_002, p=..., q=..., T=..., m=...)),
        Hostile("price as a number", _trade(p=5)),
        Hostile("m as a string", _trade(m="yes")),
        Hostile("t as a string", _trade(trade_id="900003")),
        Hostile(
            "unknown event injecting a metric",
            b'{"e":"x\\"} 1\\nfake_metric{a=\\"b","E":1}',
            dead=False,
        ),
    ]
    now = str(now_ms).encode()
    return [Hostile(h.name, h.data.replace(b'"@NOW"', now), h.binary, h.dead) for h in frames]


def good_trades(now_ms: int) -> list[Good]:
    """Consecutive ids per symbol, varied exact decimals, times just before now (ms)."""
    trades = []
    ids = dict.fromkeys(SYMBOLS, 1_000)
    for i in range(GOOD):
        symbol = "BTC-USDT" if i % 3 else "ETH-USDT"
        ids[symbol] += 1
        price = f"{27_000 + i}.{i % 100:02d}" if symbol == "BTC-USDT" else f"1800.{i:05d}"
        amount = f"0.{i + 1:08d}" if i % 5 else f"{i % 7 + 1}"
        trades.append(Good(symbol, ids[symbol], price, amount, i % 2 == 1, now_ms - GOOD + i))
    # bounds that must still pass: 40 significant digits, 24 after the point, just below 1e20
    trades[7] = Good(
        trades[7].symbol, trades[7].trade_id, "1234567890123456789.012345678901234567890",
        "0.000000000000000000000001", False, trades[7].time_ms,
    )  # fmt: skip
    trades[8] = Good(
        trades[8].symbol, trades[8].trade_id, "99999999999999999999.9999", "1.50000", True,
        trades[8].time_ms,
    )  # fmt: skip
    return trades


class FakeBinance:
    """Binance spot's combined stream, sending ``frames`` once over whatever connections come."""

    def __init__(self, port: int, frames: list[tuple[bytes, bool]]) -> None:
        self.frames = frames
        self.sent = 0
        self.connections = 0
        self.subscribes: list[object] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self.server: Server = serve(
            self._handle, "127.0.0.1", port, compression=None, max_size=2**16
        )
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-binance")

    def __enter__(self) -> FakeBinance:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self._thread.join(10)

    def _handle(self, ws: ServerConnection) -> None:
        try:
            with self._lock:
                self.connections += 1
            assert ws.request is not None and ws.request.path == "/stream", ws.request
            for message in ws:
                request = json.loads(message)
                self.subscribes.append(request.get("params"))
                ws.send(json.dumps({"result": None, "id": request["id"]}))
                self._send_rest(ws)
        except ConnectionClosed:
            pass
        except BaseException as exc:  # seen by the test, never a thread's unhandled error
            self.errors.append(exc)

    def _send_rest(self, ws: ServerConnection) -> None:
        with self._lock:  # a reconnecting producer gets what was not sent yet
            while self.sent < len(self.frames):
                data, binary = self.frames[self.sent]
                ws.send(data, text=not binary)
                self.sent += 1


def interleave(good: list[Good], hostile: list[Hostile]) -> list[tuple[bytes, bool]]:
    frames: list[tuple[bytes, bool]] = []
    bad = iter(hostile)
    for i, trade in enumerate(good):
        if i == 500:  # a good trade with a 2 MB field nobody reads
            frames.append((trade.frame(extra=f',"junk":"{"J" * 2_000_000}"'), False))
        else:
            frames.append((trade.frame(wrapped=i % 10 != 0), False))
        if i % HOSTILE_EVERY == HOSTILE_EVERY // 2:
            h = next(bad, None)
            if h is not None:
                frames.append((h.data, h.binary))
    frames += [(h.data, h.binary) for h in bad]
    return frames


def _dead_letters(client: redis.Redis) -> list[dict[bytes, bytes]]:
    rows: Any = client.xrange(dead_key("binance"))
    return [fields for _, fields in rows]


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        body: bytes = reply.read()
    return body.decode()


def _unknown_counted(exposition: str) -> int:
    total = 0
    for line in exposition.splitlines():
        if line.startswith("tickvault_control_frames_total{") and 'kind="unknown"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


@pytest.fixture
def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def p(redis_url: str, database_url: str, work_dir: Path) -> Iterator[Pipeline]:
    feeds = [Feed("binance", list(SYMBOLS))]
    with pipeline(
        work=work_dir, redis_url=redis_url, database_url=database_url, feeds=feeds,
        consumer={"batch_entries": 200},
        producer={"silence_s": 300},  # the fake venue goes quiet after its burst: not tested here
    ) as pipe:  # fmt: skip
        yield pipe


def test_hostile_frames_are_dead_lettered_and_good_trades_stored_once(
    p: Pipeline, redis_client: redis.Redis, now_ms: int
) -> None:
    good = good_trades(now_ms)
    hostile = hostile_frames(now_ms)
    assert len({h.data for h in hostile}) == len(hostile), "dead letters are found by their f"
    started = datetime.now(UTC) - timedelta(seconds=1)
    metrics_ports = {"c1": free_port(), "c2": free_port()}
    with FakeBinance(p.ports["binance"], interleave(good, hostile)) as fake:
        consumers = [
            p.start_consumer(name, args=[f"--metrics-port={port}"])
            for name, port in metrics_ports.items()
        ]
        # Both consumers reading before the first frame: frames reach them live.
        key = raw_key("binance")

        def readers() -> set[str]:
            p.check_alive()
            try:
                found = redis_client.xinfo_consumers(key, "tickvault")
            except redis.ResponseError:  # no stream or group yet
                return set()
            return {c["name"].decode() for c in found}

        wait_for(lambda: readers() == set(metrics_ports), what="both consumers reading")
        producer = p.start_producer()
        p.wait_rows(GOOD, timeout=40)

        # Every dead-letter case reaches the dead-letter stream; nothing stays pending.
        by_frame: dict[bytes, list[dict[bytes, bytes]]] = {}

        def missing_dead_letters() -> list[str]:
            p.check_alive()
            by_frame.clear()
            for fields in _dead_letters(redis_client):
                by_frame.setdefault(fields.get(b"f", b"<no f>"), []).append(fields)
            return [h.name for h in hostile if h.dead and h.data not in by_frame]

        wait_for(lambda: not missing_dead_letters(), timeout=20, what="every dead letter")
        wait_for(
            lambda: (
                redis_client.xpending(key, "tickvault")["pending"] == 0
                and redis_client.xinfo_groups(key)[0]["lag"] == 0
            ),
            what="nothing pending, nothing unread",
        )
        assert fake.sent == len(fake.frames)
        assert fake.errors == []
        assert fake.connections == 1, "the producer reconnected: a frame broke its connection"
        assert fake.subscribes == [["btcusdt@trade", "ethusdt@trade"]]

        # Good trades: each exactly once, exact values.
        rows = p.query(
            "SELECT symbol, trade_id, price, amount, side, ts, recv_ts FROM trades "
            "WHERE exchange = 'binance'"
        )
        finished = datetime.now(UTC) + timedelta(seconds=1)
        assert len(rows) == GOOD, f"{len(rows)} rows for {GOOD} good trades"
        stored = {(r[0], r[1]): r for r in rows}
        assert len(stored) == GOOD, "a trade was stored twice"
        for t in good:
            row = stored.get((t.symbol, str(t.trade_id)))
            assert row is not None, f"good trade {t} not stored"
            _, _, price, amount, side, ts, recv_ts = row
            for got, text in ((price, t.price), (amount, t.amount)):
                want = Decimal(text)
                assert got == want and got.as_tuple().exponent == want.as_tuple().exponent, (
                    f"{t}: stored {got}, sent {text}"
                )
            assert side == t.side, t
            assert ts == EPOCH + timedelta(milliseconds=t.time_ms), t
            assert ts <= recv_ts and started <= recv_ts <= finished, (t, recv_ts)

        # Hostile frames: each dead-lettered, a bounded one-line reason, its origin and stream.
        for h in hostile:
            letters = by_frame.get(h.data, [])
            if not h.dead:
                assert letters == [], f"{h.name}: dead-lettered: {letters[0][b'reason']!r}"
                continue
            assert letters, f"{h.name}: no dead letter"
            for fields in letters:
                reason = fields[b"reason"].decode()
                assert reason.strip(), h.name
                assert len(reason) <= REASON_MAX, (h.name, len(reason))
                assert reason.isprintable(), (h.name, reason)  # one line: no newline, no NUL
                assert fields[b"stream"] == key.encode()
                assert re.fullmatch(rb"[0-9]+-[0-9]+(/[0-9]+)?", fields[b"origin"]), fields
                assert fields[b"k"] == (b"b" if h.binary else b"t"), h.name
        wanted = {h.data for h in hostile if h.dead}
        unexpected = [f[b"reason"] for d, fs in by_frame.items() if d not in wanted for f in fs]
        assert unexpected == [], "frames dead-lettered that should not have been"

        # The unknown event type is counted, and cannot add a line to the exposition. A batch is
        # counted when its XACK's reply is read, with the next read, which may block (up to
        # ACKS_BLOCK_MS): "nothing pending" can be seen before the count, so wait for it.
        def scraped() -> list[str]:
            texts = [_metrics(port) for port in metrics_ports.values()]
            return texts if sum(_unknown_counted(text) for text in texts) >= 1 else []

        expositions = wait_for(scraped, timeout=5, what="the unknown event type counted")
        for text in expositions:
            for line in text.splitlines():
                assert not line.startswith("fake_metric"), line
                if line.startswith(("# HELP tickvault_", "# TYPE tickvault_")):
                    assert "\n" not in line and line.isprintable(), line
                    continue
                assert METRIC_LINE.match(line), f"not an exposition line: {line!r}"

        p.check_alive()
        assert p.stop(producer) == 0, p.log("producer")
        for name, proc in zip(metrics_ports, consumers, strict=True):
            assert p.stop(proc) == 0, p.log(f"consumer-{name}")
        assert redis_client.xpending(key, "tickvault")["pending"] == 0
