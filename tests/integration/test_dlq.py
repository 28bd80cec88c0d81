"""``tickvault dlq`` against a real Redis (and PostgreSQL for the requeue that ends stored): list,
show, requeue, purge, their confirmations and refusals, and a requeue that loses nothing."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import psycopg
import pytest
import redis

from common.cli import main as cli_main
from common.config import load_settings
from common.envelope import Envelope, dead_key, encode_entry, raw_key
from common.servers import free_port
from consumer.batching import DeadLetter
from consumer.deadletter import DeadLetters
from consumer.dlq import main
from consumer.store import Store
from consumer.worker import Worker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

RAW = raw_key("binance")
DEAD = dead_key("binance")
RECV_NS = 1_700_000_000_000_000_000
BAD = b'{"e":"trade",'  # what the Binance parser refuses: "binance: undecodable frame: ..."
BAD_REASON = "binance: undecodable frame: Input data was truncated"
TRANSIENT = "delivered 5 times: postgres unreachable (08006): connection lost"


def trade_frame(i: int) -> bytes:
    return (
        f'{{"e":"trade","E":1700000000000,"s":"BTCUSDT","t":{i},"p":"1.{i}","q":"1",'
        f'"T":1700000000000,"m":false,"M":true}}'
    ).encode()


def fields(frame: bytes, n: int = 1, *, exchange: str = "binance") -> dict[bytes, bytes]:
    return Envelope(frame, False, exchange, "", "binance-1-1700000000", n, RECV_NS).fields()


def dead_letter(
    client: redis.Redis, frame: bytes, reason: str, *, n: int = 1, exchange: str = "binance"
) -> str:
    """Dead-letter ``frame`` as the consumer does (``DeadLetters.send``); its dead-letter id."""
    key = raw_key(exchange)
    DeadLetters(client).send(
        [DeadLetter(key, f"1700000000000-{n}", fields(frame, n, exchange=exchange), reason)]
    )
    rows = client.xrevrange(dead_key(exchange), count=1)
    entry_id: str = rows[0][0].decode()  # type: ignore[index]
    # the next one gets a later millisecond, in any stream (ids of two streams may be equal)
    ms = int(entry_id.split("-")[0])
    wait_for(lambda: time.time() * 1000 >= ms + 1, what="the next millisecond")
    return entry_id


def old_dead_letter(client: redis.Redis, frame: bytes, reason: str, age_s: float) -> str:
    """A dead letter written ``age_s`` ago (its id says when), with the consumer's fields."""
    ms = int((time.time() - age_s) * 1000)
    body = {**fields(frame), b"reason": reason.encode(), b"origin": b"1-0", b"stream": RAW.encode()}
    return client.xadd(DEAD, body, id=f"{ms}-0").decode()  # type: ignore[arg-type,union-attr]


@pytest.fixture
def config(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A config naming no feed: the dead-letter streams are found with SCAN."""
    for name in ("TICKVAULT_REDIS_URL", "TICKVAULT_DATABASE_URL", "TICKVAULT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "tickvault.toml"
    path.write_text(f'[redis]\nurl = "{redis_url}"\n')
    return str(path)


def feeds_config(tmp_path: Path, redis_url: str, database_url: str) -> str:
    path = tmp_path / "feeds.toml"
    path.write_text(
        f'[redis]\nurl = "{redis_url}"\n[database]\nurl = "{database_url}"\n'
        "[consumer]\nbatch_ms = 10\nblock_ms = 50\n"
        '[[feeds]]\nexchange = "binance"\nsymbols = ["BTC-USDT"]\n'
    )
    return str(path)


class Tty(io.StringIO):
    """A terminal on stdin, with the answer typed in advance."""

    def isatty(self) -> bool:
        return True


# -- list ---------------------------------------------------------------------------------------
def test_list_prints_one_line_each_newest_first_and_a_summary_per_exchange_and_reason(
    config: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    a = dead_letter(redis_client, BAD, BAD_REASON, n=1)
    b = dead_letter(redis_client, trade_frame(2), TRANSIENT, n=2)
    c = dead_letter(redis_client, BAD, "okx: undecodable frame: x", n=3, exchange="okx")
    d = dead_letter(redis_client, b"\x00\x1b[2J", "binance: undecodable frame: \x1b[2J", n=4)

    assert main(["list", "--config", config]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "TIME", "EXCHANGE", "ORIGIN", "REASON"]
    rows = [line.split(maxsplit=4) for line in lines[1:5]]
    # newest first across exchanges (SCAN found both streams: no feed configured)
    assert [r[0] for r in rows] == [d, c, b, a]
    assert [r[2] for r in rows] == ["binance", "okx", "binance", "binance"]
    assert [r[3] for r in rows] == [f"1700000000000-{i}" for i in (4, 3, 2, 1)]
    assert rows[3][4] == BAD_REASON
    assert rows[0][1].endswith("Z") and rows[0][1][:2] == "20"
    assert "\x1b" not in out  # a reason's control characters are escaped
    assert "4 of 4 dead letters shown, newest first" in out
    summary = lines[lines.index(next(x for x in lines if x.startswith("EXCHANGE"))) + 1 :]
    assert [s.split(maxsplit=2) for s in summary] == [
        ["binance", "2", "binance: undecodable frame"],
        ["binance", "1", "delivered 5 times"],
        ["okx", "1", "okx: undecodable frame"],
    ]

    assert main(["list", "--config", config, "--oldest", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[0] == a  # one line per exchange at most, then merged
    assert "1 of 4 dead letters shown, oldest first" in out

    assert main(["list", "--config", config, "--reason", "DELIVERED", "--exchange", "binance"]) == 0
    out = capsys.readouterr().out
    assert [x.split()[0] for x in out.splitlines()[1:2]] == [b]
    assert "1 of 1 dead letters matching 'DELIVERED' shown" in out


def test_list_with_feeds_configured_reads_those_exchanges_only(
    tmp_path: Path,
    config: str,
    redis_url: str,
    database_url: str,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead_letter(redis_client, BAD, "okx: undecodable frame: x", exchange="okx")
    configured = feeds_config(tmp_path, redis_url, database_url)
    assert main(["list", "--config", configured]) == 1  # binance's stream: empty
    assert "no dead letters (tickvault:dead:{binance})" in capsys.readouterr().out
    assert main(["list", "--config", configured, "--exchange", "okx"]) == 0
    assert "okx: undecodable frame: x" in capsys.readouterr().out


def test_list_finding_nothing_exits_1(
    config: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["list", "--config", config]) == 1
    assert "no dead letters (no tickvault:dead:* stream)" in capsys.readouterr().out
    dead_letter(redis_client, BAD, BAD_REASON)
    assert main(["list", "--config", config, "--reason", "postgres"]) == 1
    assert "no dead letters matching 'postgres'" in capsys.readouterr().out
    assert main(["list", "--config", config, "--limit", "-1"]) == 2
    assert "is not a number" in capsys.readouterr().err


# -- show ---------------------------------------------------------------------------------------
def test_show_prints_every_field_and_the_frame_safely(
    config: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    text_id = dead_letter(redis_client, trade_frame(7), TRANSIENT, n=7)
    binary = b"\xff\x00\x1b[31mred" + b"z" * 3000
    binary_id = dead_letter(redis_client, binary, BAD_REASON, n=8)

    assert main(["show", text_id, "--config", config]) == 0
    out = capsys.readouterr().out
    assert f"id        {text_id} (dead-lettered " in out
    assert "exchange  binance (tickvault:dead:{binance})" in out
    assert "stream    tickvault:raw:{binance} (requeue into tickvault:raw:{binance})" in out
    assert "origin    1700000000000-7" in out
    assert f"reason    {TRANSIENT}" in out
    assert "n         7" in out
    assert "t         1700000000000000000 (received 2023-11-14T22:13:20.000+00:00)" in out
    frame = trade_frame(7)
    assert f"frame     {len(frame)} bytes, UTF-8 text:\n{frame.decode()}" in out

    assert main(["show", binary_id, "--exchange", "binance", "--config", config]) == 0
    out = capsys.readouterr().out
    assert f"frame     {len(binary)} bytes, not UTF-8, escaped, the first 2048 shown:" in out
    assert "\\xff\\x00\\x1b[31mred" in out
    assert "\x1b" not in out and "\x00" not in out


def test_show_an_unknown_id_exits_1_and_a_malformed_one_2(
    config: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_letter(redis_client, BAD, BAD_REASON)
    assert main(["show", "1-1", "--config", config]) == 1
    assert "no dead letter 1-1 in tickvault:dead:{binance}" in capsys.readouterr().err
    assert main(["show", "1-1", "--exchange", "okx", "--config", config]) == 1
    assert "no dead letter 1-1 in tickvault:dead:{okx}" in capsys.readouterr().err
    assert main(["show", "yesterday", "--config", config]) == 2
    assert "'yesterday' is not a stream id" in capsys.readouterr().err


# -- requeue ------------------------------------------------------------------------------------
def test_requeue_puts_back_the_original_fields_then_deletes_the_dead_letter(
    config: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    good = dead_letter(redis_client, trade_frame(1), TRANSIENT, n=1)
    bad = dead_letter(redis_client, BAD, BAD_REASON, n=2)
    # a run that could not be split is dead-lettered whole, with its l field
    run = encode_entry([Envelope(trade_frame(i), False, "binance", "", "c", i, RECV_NS + i)
                        for i in (3, 4)])  # fmt: skip
    run[b"l"] = b"1,2"
    DeadLetters(redis_client).send([DeadLetter(RAW, "1700000000000-3", run, "bad envelope: x")])

    assert main(["requeue", "--all", "--reason", "delivered", "--yes", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "requeue 1 dead letter, oldest first:" in out
    assert "requeued 1 dead letter into tickvault:raw:{binance}" in out
    (raw_id, raw_fields), *_ = redis_client.xrange(RAW)
    assert list(raw_fields.items()) == list(fields(trade_frame(1)).items())  # same order too
    assert good.encode() not in [i for i, _ in redis_client.xrange(DEAD)]

    assert main(["requeue", bad, "--config", config, "--yes"]) == 0
    out = capsys.readouterr().out
    assert f"requeued {bad} (binance) as " in out
    assert main(["requeue", "--all", "--config", config, "--yes"]) == 0
    capsys.readouterr()
    assert redis_client.xlen(DEAD) == 0
    rows = redis_client.xrange(RAW)
    assert [dict(f) for _, f in rows] == [fields(trade_frame(1)), fields(BAD, 2), run]
    assert all(b"reason" not in f and b"origin" not in f for _, f in rows)
    assert raw_id == rows[0][0]

    assert main(["requeue", "--all", "--config", config, "--yes"]) == 0  # nothing to do
    assert "nothing to requeue" in capsys.readouterr().out


def test_requeue_without_yes_and_without_a_terminal_refuses_and_changes_nothing(
    config: str,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dead_letter(redis_client, trade_frame(1), TRANSIENT)
    assert main(["requeue", "--all", "--config", config]) == 2
    captured = capsys.readouterr()
    assert "requeue 1 dead letter, oldest first:" in captured.out  # what it would do
    assert "refusing to requeue 1 dead letter without --yes (stdin is not a terminal)" in (
        captured.err
    )
    assert (redis_client.xlen(DEAD), redis_client.exists(RAW)) == (1, 0)

    monkeypatch.setattr("sys.stdin", Tty("n\n"))
    assert main(["requeue", "--all", "--config", config]) == 2
    captured = capsys.readouterr()
    assert "requeue 1 dead letter? [y/N]" in captured.err
    assert "not confirmed: nothing done" in captured.err
    assert (redis_client.xlen(DEAD), redis_client.exists(RAW)) == (1, 0)

    monkeypatch.setattr("sys.stdin", Tty("y\n"))
    assert main(["requeue", "--all", "--config", config]) == 0
    assert (redis_client.xlen(DEAD), redis_client.xlen(RAW)) == (0, 1)


def test_requeue_reports_unknown_ids_and_requeues_the_known_ones(
    config: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    known = dead_letter(redis_client, trade_frame(1), TRANSIENT)
    assert main(["requeue", "9-9", known, "--yes", "--config", config]) == 1
    captured = capsys.readouterr()
    assert "no dead letter 9-9 in tickvault:dead:{binance}" in captured.err
    assert f"requeued {known} (binance)" in captured.out
    assert (redis_client.xlen(DEAD), redis_client.xlen(RAW)) == (0, 1)
    assert main(["requeue", "9-9", "--yes", "--config", config]) == 1
    assert "nothing to requeue" in capsys.readouterr().out


def test_requeue_usage_errors_exit_2(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["requeue", "--config", config]) == 2
    assert "give dead-letter ids or --all" in capsys.readouterr().err
    assert main(["requeue", "1-0", "--all", "--config", config]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["requeue", "last", "--config", config]) == 2
    assert main(["purge", "--before", "last week", "--config", config]) == 2
    assert "neither a duration" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


def test_a_failed_xadd_keeps_the_dead_letter(
    config: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    one = dead_letter(redis_client, trade_frame(1), TRANSIENT)
    redis_client.set(RAW, "not a stream")  # XADD answers WRONGTYPE
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        main(["requeue", one, "--yes", "--config", config])
    capsys.readouterr()
    assert [i.decode() for i, _ in redis_client.xrange(DEAD)] == [one]


def test_a_dead_letter_without_frame_fields_stays(
    config: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    DeadLetters(redis_client).send([DeadLetter(RAW, "5-0", {}, "entry has no fields")])
    empty = redis_client.xrange(DEAD)[0][0].decode()  # type: ignore[index]
    assert main(["requeue", "--all", "--yes", "--config", config]) == 0
    out = capsys.readouterr().out
    assert f"left {empty} (binance): it holds no frame fields to requeue" in out
    assert "requeued nothing" in out
    assert (redis_client.xlen(DEAD), redis_client.exists(RAW)) == (1, 0)


# -- purge --------------------------------------------------------------------------------------
def test_purge_before_keeps_the_newer_dead_letters(
    config: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    old = old_dead_letter(redis_client, BAD, BAD_REASON, age_s=10 * 86400)
    old_other = old_dead_letter(redis_client, trade_frame(1), TRANSIENT, age_s=9 * 86400)
    newer = old_dead_letter(redis_client, BAD, BAD_REASON, age_s=3 * 86400)
    new = dead_letter(redis_client, BAD, BAD_REASON)

    assert main(["purge", "--before", "7d", "--config", config]) == 2  # no terminal, no --yes
    assert redis_client.xlen(DEAD) == 4
    capsys.readouterr()
    args = ["purge", "--before", "7d", "--reason", "undecodable", "--yes", "--config", config]
    assert main(args) == 0
    assert "purged 1 dead letter" in capsys.readouterr().out
    assert [i.decode() for i, _ in redis_client.xrange(DEAD)] == [old_other, newer, new]

    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 86400))
    assert main(["purge", "--before", iso, "--yes", "--config", config]) == 0
    assert "purged 2 dead letters" in capsys.readouterr().out
    assert [i.decode() for i, _ in redis_client.xrange(DEAD)] == [new]
    assert main(["purge", "--before", old, "--yes", "--config", config]) == 0
    assert "nothing to purge" in capsys.readouterr().out
    assert main(["purge", "--yes", "--config", config]) == 0
    assert redis_client.xlen(DEAD) == 0


def test_an_unreachable_redis_raises_and_the_cli_exits_with_its_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TICKVAULT_REDIS_URL", raising=False)
    path = tmp_path / "down.toml"
    path.write_text(f'[redis]\nurl = "redis://127.0.0.1:{free_port()}/0"\n')
    with pytest.raises(redis.ConnectionError):
        main(["list", "--config", str(path)])
    assert cli_main(["dlq", "list", "--config", str(path)]) == 4
    assert "cannot reach a server" in capsys.readouterr().err


# -- end to end: requeued frames through a real consumer into PostgreSQL ------------------------
def test_requeued_frames_are_stored_once_or_dead_again_nothing_lost(
    tmp_path: Path,
    redis_url: str,
    database_url: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("TICKVAULT_REDIS_URL", "TICKVAULT_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    config = feeds_config(tmp_path, redis_url, database_url)
    good = trade_frame(42)
    dead_letter(redis_client, good, TRANSIENT, n=1)  # good, but PostgreSQL was down too long
    dead_letter(redis_client, BAD, BAD_REASON, n=2)  # a frame the parser refuses
    # a requeue that crashed between its XADD and its XDEL left the good frame in both
    redis_client.xadd(RAW, fields(good, 1))  # type: ignore[arg-type]
    before = redis_client.xlen(DEAD)

    assert main(["requeue", "--all", "--yes", "--config", config]) == 0
    assert "requeued 2 dead letters into tickvault:raw:{binance}" in capsys.readouterr().out
    assert (redis_client.xlen(DEAD), redis_client.xlen(RAW)) == (0, 3)

    store = Store(database_url)
    worker = Worker.from_settings(
        load_settings(config), name="t", streams=[RAW], redis_client=redis_client,
        store=store, claim=False, read_pending_first=False, stop_when_drained=True,
    )  # fmt: skip
    try:
        worker.run(threading.Event())
    finally:
        store.close()

    with psycopg.connect(database_url) as conn:
        stored = conn.execute("SELECT trade_id, price, amount FROM trades").fetchall()
    assert [(t, str(p), str(a)) for t, p, a in stored] == [("42", "1.42", "1")]  # once
    dead = redis_client.xrange(DEAD)
    assert len(dead) == 1
    back = dict(dead[0][1])
    assert back[b"reason"].decode() == BAD_REASON
    assert back[b"stream"] == RAW.encode()
    requeued_ids = [i for i, f in redis_client.xrange(RAW) if f[b"f"] == BAD]
    assert back[b"origin"] == requeued_ids[0]
    assert {k: v for k, v in back.items() if k not in (b"reason", b"origin", b"stream")} == (
        fields(BAD, 2)
    )
    assert redis_client.xpending(RAW, "tickvault")["pending"] == 0
    assert len(stored) + redis_client.xlen(DEAD) == before  # every dead letter: stored or back
