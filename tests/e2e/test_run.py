"""``tickvault run``: embedded servers it starts itself (kept in ``--dir``), the producer and a
consumer supervised, an ordered stop that loses nothing, and its refusals; the feeds point at the
simulator (the test machine has no internet). The first tests need no server: the pieces of
``common.run`` that decide (config, URLs, restart delays, the status line)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
import redis

from common.config import load_settings, settings_from_mapping
from common.envelope import decode_entry, raw_key
from common.errors import ConfigError
from common.run import children, directory, view
from common.run import plan as run_plan
from common.servers import free_port
from common.status import snapshot as status
from tests.conftest import SLOW
from tests.e2e.harness import ROOT, _listening
from tests.waiting import wait_for

# -- no server -----------------------------------------------------------------------------------


pytestmark = pytest.mark.own_servers  # tickvault run starts its own servers


def test_first_run_writes_the_default_config_then_keeps_it(tmp_path: Path) -> None:
    source = run_plan.config_source(None, tmp_path, {})
    assert source == tmp_path / "tickvault.toml"
    settings = load_settings(source, {})
    pairs = [
        (f.exchange, str(s), [c.value for c in f.channels])
        for f in settings.feeds
        for s in f.symbols
    ]
    assert pairs == [
        ("binance", "BTC-USDT", ["trades", "quotes"]),
        ("binance", "ETH-USDT", ["trades", "quotes"]),
        ("upbit", "BTC-KRW", ["trades", "quotes"]),
    ]
    assert all(f.url is None for f in settings.feeds)  # the venues' real endpoints
    source.write_text(source.read_text().replace('"ETH-USDT"', '"SOL-USDT"'))  # the user edits
    assert run_plan.config_source(None, tmp_path, {}) == source
    assert "SOL-USDT" in source.read_text()  # used as it is, never rewritten
    given = tmp_path / "mine.toml"
    assert run_plan.config_source(str(given), tmp_path, {}) == given
    assert run_plan.config_source(None, tmp_path, {"TICKVAULT_CONFIG": str(given)}) == given


def test_urls_count_as_given_only_when_written_or_in_the_environment(tmp_path: Path) -> None:
    feeds = '[[feeds]]\nexchange = "binance"\nsymbols = ["BTC-USDT"]\n'
    bare = tmp_path / "bare.toml"
    bare.write_text(feeds)
    plan = run_plan.plan(bare, {})
    assert (plan.redis_url, plan.database_url) == (None, None)  # both embedded
    # the default value written out is still an explicit choice
    written = tmp_path / "written.toml"
    written.write_text('[redis]\nurl = "redis://127.0.0.1:6379/0"\nmaxlen = 10\n' + feeds)
    plan = run_plan.plan(written, {})
    assert (plan.redis_url, plan.database_url) == ("redis://127.0.0.1:6379/0", None)
    # a [database] table without url is not a URL
    other = tmp_path / "other.toml"
    other.write_text("[database]\npartition_days_ahead = 2\n" + feeds)
    assert run_plan.plan(other, {}).database_url is None
    env = {"TICKVAULT_DATABASE_URL": "postgresql://u@db:5432/x"}
    plan = run_plan.plan(written, env)
    assert plan.database_url == "postgresql://u@db:5432/x"
    env = {"TICKVAULT_REDIS_URL": "redis://r:6380/1"}
    assert run_plan.plan(written, env).redis_url == "redis://r:6380/1"  # env wins, as elsewhere


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[[feeds]]\nexchange = "binance"\nsymbols = ["btc-usdt"]\n', "feeds[0].symbols[0]"),
        ('[[feeds]]\nexchange = "nasdaq"\nsymbols = ["BTC-USDT"]\n', "feeds[0].exchange"),
        ('[producer]\nbufer_frames = 3\n[[feeds]]\nexchange = "binance"\nsymbols = ["BTC-USDT"]\n',
         "producer.bufer_frames"),
        ("[consumer]\nbatch_ms = 20\n", "feeds"),
    ],
)  # fmt: skip
def test_plan_refuses_a_bad_config_with_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        run_plan.plan(path, {})
    assert caught.value.key == key


def test_the_children_config_reads_back_with_the_urls_and_run_defaults(tmp_path: Path) -> None:
    data = {
        "producer": {"spill_fsync": "always", "stop_timeout_s": 7.5},
        "consumer": {"name": "mine", "flush_when_drained": False},
        "feeds": [
            {"exchange": "okx", "symbols": ["BTC-USDT"], "channels": ["trades"],
             "options": {"trades": "trades-all"}, "url": 'ws://h:1/"quoted"\\path'},
        ],
    }  # fmt: skip
    out = run_plan.children_config(
        data, redis_url="redis://:p%40ss@h:1/0", database_url="postgresql://u@h/d", state=tmp_path
    )
    text = run_plan.dump_toml(out)
    assert tomllib.loads(text) == out
    assert out["redis"] == {"url": "redis://:p%40ss@h:1/0"}
    assert out["producer"]["spill_dir"] == str(tmp_path / "data" / "spill")  # run's own
    assert out["consumer"]["name"] == "mine"  # the user's, kept
    assert data["feeds"][0]["options"] == {"trades": "trades-all"}  # the source is not changed
    assert "redis" not in data
    assert (
        "name"
        in run_plan.children_config({}, redis_url="r", database_url="d", state=tmp_path)["consumer"]
    )


def test_restart_delays_double_to_a_cap_and_reset_after_a_long_life() -> None:
    delays = children.RestartDelays()
    assert [delays.after_exit(0.5) for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert delays.after_exit(59.0) == 60  # not long enough
    assert delays.after_exit(60.0) == 1  # lived a minute: from the start again
    assert delays.after_exit(3.0) == 2


def test_exit_statuses_are_named() -> None:
    assert children.describe_exit(-9) == "killed by SIGKILL"
    assert children.describe_exit(5) == "status 5 (LOST)"
    assert children.describe_exit(0) == "status 0 (OK)"
    assert children.describe_exit(77) == "status 77"


def test_status_line_sums_the_symbols_and_names_the_children(tmp_path: Path) -> None:
    group = status.GroupInfo(
        name="tickvault", pending=2, lag_entries=3, lag_s=0.4, oldest_pending_s=1.5, consumers=[]
    )
    other = status.GroupInfo(
        name="replay", pending=9, lag_entries=None, lag_s=9, oldest_pending_s=None, consumers=[]
    )
    snap = status.Snapshot(
        taken_ns=0, redis="127.0.0.1:6379/0", database="127.0.0.1:5432/postgres",
        configured=["binance", "upbit"],
        streams=[
            status.StreamInfo(exchange="binance", key=raw_key("binance"), exists=True,
                              groups=[group, other]),
            status.StreamInfo(exchange="upbit", key=raw_key("upbit"), exists=False),
        ],
        feeds=[], dead_letters=[], gaps=None, failures=[], redis_ok=True, database_ok=True,
        symbols=[
            status.SymbolInfo(exchange="binance", symbol="BTC-USDT", rows_1m=600, newest_age_s=0.3),
            status.SymbolInfo(exchange="upbit", symbol="BTC-KRW", rows_1m=30, newest_age_s=4.0),
        ],
    )  # fmt: skip
    problems = [status.Problem(kind="gaps", subject="binance", text="1 open gap")]
    child = children.Child("consumer", ["consumer"], tmp_path / "c.log", {})
    child.restarts, child.last_exit, child.restart_at = 2, -9, 104.0
    line = view.status_line(snap, problems, [child], "tickvault", now=100.0, uptime_s=130.0)
    assert line == (
        "run 2m10s: 630 trades in the last minute (newest 0.3s old), lag 3 entries (1.5s "
        "behind), 2 pending; consumer killed by SIGKILL; restarting in 4 s (2 restarts); "
        "1 problem(s): binance: 1 open gap"
    )
    quiet = msgspec.structs.replace(snap, symbols=[], streams=[])
    line = view.status_line(quiet, [], [], "tickvault", now=0.0, uptime_s=5.0)
    assert line == (
        "run 5.0s: 0 trades in the last minute (none in the last hour), lag 0 entries (0.0s "
        "behind), 0 pending; "
    )


@pytest.mark.integration
def test_the_stop_waits_for_a_group_that_has_read_and_acked_everything(
    redis_url: str, redis_client: redis.Redis
) -> None:
    feeds = [
        {"exchange": "binance", "symbols": ["BTC-USDT"]},
        {"exchange": "okx", "symbols": ["BTC-USDT"]},
    ]
    settings = settings_from_mapping({"redis": {"url": redis_url}, "feeds": feeds}, env={})
    watcher = view.Watcher(settings)
    try:
        assert watcher.drained() is True  # no stream yet: nothing to wait for
        key = raw_key("binance")
        redis_client.xadd(key, {"f": "1"})
        assert watcher.drained() is False  # entries, and no group has read them
        redis_client.xgroup_create(key, "tickvault", id="0")
        assert watcher.drained() is False  # not delivered
        read = redis_client.xreadgroup("tickvault", "c", {key: ">"})
        assert watcher.drained() is False  # delivered, pending
        redis_client.xack(key, "tickvault", read[0][1][0][0])
        assert watcher.drained() is True
        redis_client.xgroup_create(key, "other", id="0")  # another group's backlog is not ours
        assert watcher.drained() is True
        redis_client.xadd(key, {"f": "2"})
        assert watcher.drained() is False
    finally:
        watcher.close()
    down = settings_from_mapping(
        {"redis": {"url": f"redis://127.0.0.1:{free_port()}/0"}, "feeds": feeds}, env={}
    )
    watcher = view.Watcher(down)
    assert watcher.drained() is None  # Redis away: the stop does not wait for it
    watcher.close()


# -- real processes ------------------------------------------------------------------------------

SYMBOLS = {"BTCUSDT": "BTC-USDT", "ETHUSDT": "ETH-USDT"}


def _config(path: Path, port: int) -> Path:
    path.write_text(
        "[consumer]\nbatch_ms = 20\n\n"
        "[producer]\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.5\n\n"
        "[backfill]\nevery_s = 1.0\nsettle_s = 2.0\n\n"
        '[[feeds]]\nexchange = "binance"\nchannels = ["trades", "quotes"]\n'
        'symbols = ["BTC-USDT", "ETH-USDT"]\n'
        f'url = "ws://127.0.0.1:{port}"\nrest_url = "http://127.0.0.1:{port}"\n'
    )
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKVAULT_")}
    env["TICKVAULT_TEST_SLOW"] = os.environ.get("TICKVAULT_TEST_SLOW", "1")
    return env


class Run:
    """One ``tickvault run --no-table`` process, in a process group of its own (as a shell's job:
    a terminal's Ctrl-C is a SIGINT to the whole group)."""

    def __init__(self, config: Path, state: Path, log: Path, env: dict[str, str] | None = None):
        self.state, self.log = state, log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "common.cli", "run", f"--config={config}",
                 f"--dir={state}", "--no-table"],
                cwd=ROOT, env=env or _env(), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-8000:]

    def info(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.state / "run.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if data.get("pid") == self.proc.pid else {}

    def wait_up(self) -> dict[str, Any]:
        def up() -> dict[str, Any]:
            assert self.proc.poll() is None, self.output()
            info = self.info()
            running = info.get("servers") and all(
                c["pid"] for c in info.get("children", {}).values()
            )
            return info if running else {}

        return wait_for(up, timeout=30, what="run's servers and children")

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            with psycopg.connect(self.info()["database"], connect_timeout=3) as conn:
                return conn.execute(sql).fetchall()
        except psycopg.errors.UndefinedTable:
            return []

    def trades(self) -> int:
        assert self.proc.poll() is None, self.output()
        rows = self.query("SELECT count(*) FROM trades")
        return int(rows[0][0]) if rows else 0

    def ctrl_c(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(60 * SLOW)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").exists() and " Z " in Path(f"/proc/{pid}/stat").read_text()


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[int]:
    """The Binance simulator: 100 trades/s per symbol, consecutive ids from 1, until killed."""
    port = free_port()
    with open(tmp_path / "simulator.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "common.cli", "simulate", f"--serve=binance={port}",
             "--rate=100", "--quote-rate=5"],
            cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        wait_for(lambda: _listening(port) or proc.poll() is not None, what="the simulator")
        assert proc.poll() is None
        yield port
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for r in started:  # a failed test leaves nothing behind: SIGINT stops it all in order
        if r.proc.poll() is None:
            os.killpg(r.proc.pid, signal.SIGINT)
            try:
                r.proc.wait(60)
            except subprocess.TimeoutExpired:
                r.kill()
        for entry in r.info().get("processes", []):  # what a killed run left running
            if directory.cmdline_of(entry["pid"]) == entry["cmdline"]:
                os.kill(entry["pid"], signal.SIGKILL)


def _stream_trade_ids(redis_url: str, before_ms: int) -> set[tuple[str, str]]:
    """(symbol, trade id) of every trade frame in the raw stream written before ``before_ms``."""
    client = redis.Redis.from_url(redis_url)
    out: set[tuple[str, str]] = set()
    try:
        for _, fields in client.xrange(raw_key("binance"), max=f"({before_ms}"):
            for env in decode_entry(fields):
                if not env.frame.startswith(b"{"):
                    continue
                event = json.loads(env.frame)
                data = event.get("data", event)
                if isinstance(data, dict) and data.get("e") == "trade":
                    out.add((SYMBOLS[data["s"]], str(data["t"])))
    finally:
        client.close()
    return out


def _started(runs: list[Run], config: Path, state: Path, log: Path) -> Run:
    """A `tickvault run` started (and stopped by the ``runs`` fixture whatever happens)."""
    run = Run(config, state, log)
    runs.append(run)
    return run


@pytest.mark.e2e
def test_run_supervises_stops_in_order_and_keeps_its_data(
    tmp_path: Path, simulator: int, runs: list[Run]
) -> None:
    config, state = _config(tmp_path / "run.toml", simulator), tmp_path / "state"
    first = _started(runs, config, state, tmp_path / "run-1.log")
    info = first.wait_up()
    assert "postgres postgresql://" in first.output()  # the URL is printed, and in run.json
    assert set(info["servers"]) == {"keeper", "redis", "postgres"}
    wait_for(lambda: first.trades() >= 300, timeout=30, what="300 trades stored")

    # one run per directory
    second = subprocess.run(
        [sys.executable, "-m", "common.cli", "run", f"--config={config}", f"--dir={state}"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=30 * SLOW,
    )  # fmt: skip
    assert second.returncode == 2, second.stderr
    assert f"another tickvault run (pid {first.proc.pid}) is using {state}" in second.stderr

    # supervision: a consumer killed is started again, and the trades keep coming
    killed = info["children"]["consumer"]["pid"]
    os.kill(killed, signal.SIGKILL)
    at_kill = first.trades()

    def restarted() -> dict[str, Any]:
        child = first.info().get("children", {}).get("consumer", {})
        return child if child.get("restarts") == 1 and child.get("pid") else {}

    consumer = wait_for(restarted, timeout=15, what="the consumer restarted")
    assert consumer["pid"] != killed and consumer["last_exit"] == -signal.SIGKILL
    wait_for(lambda: first.trades() >= at_kill + 300, timeout=30, what="trades after the restart")
    out = first.output()
    assert f"consumer (pid {killed}) exited unexpectedly with killed by SIGKILL" in out
    assert "starting it again in 1 s (restart 1)" in out

    # Ctrl-C (the whole process group) while trades flow: everything stops, in order, cleanly
    before_stop = first.trades()
    assert first.ctrl_c() == 0, first.output()
    out = first.output()
    order = [
        "stopping the producer", "producer stopped: status 0", "the group has read and acked "
        "every entry", "consumer stopped: status 0", "stopping the embedded servers",
        "postgres stopped: status 0", "redis stopped: status 0", "stopped cleanly",
    ]  # fmt: skip
    positions = [out.find(text) for text in order]
    assert -1 not in positions and positions == sorted(positions), out
    pids = [c["pid"] for c in first.info()["children"].values()] + [killed, consumer["pid"]]
    pids += [info["servers"][name] for name in ("keeper", "redis", "postgres")]
    assert all(_gone(pid) for pid in pids), pids
    assert not _listening(int(info["redis"].rsplit(":", 1)[1].split("/")[0]))
    assert first.info()["stopped"] is True

    # again on the same directory: the data is still there, every trade received stored once
    # (the simulator trades on: what the third run adds, backfill included, comes after)
    third_start = time.time()
    third = _started(runs, config, state, tmp_path / "run-3.log")
    info = third.wait_up()
    wait_for(lambda: third.query("SELECT 1 FROM trades LIMIT 1"), what="the database")
    rows = third.query(
        "SELECT symbol, count(*), count(DISTINCT trade_id), min(trade_id::bigint), "
        f"max(trade_id::bigint) FROM trades WHERE recv_ts < to_timestamp({third_start}) "
        "GROUP BY 1 ORDER BY 1"
    )
    assert [r[0] for r in rows] == ["BTC-USDT", "ETH-USDT"]
    assert sum(r[1] for r in rows) >= before_stop
    for _, count, distinct, low, high in rows:
        assert count == distinct == high - low + 1, rows  # once each, no hole
    stored = {(s, str(i)) for s, i in third.query("SELECT symbol, trade_id FROM trades")}
    written = _stream_trade_ids(info["redis"], int(third_start * 1000))
    assert len(written) >= before_stop
    assert written <= stored  # all the producer wrote before the stop: in the database
    os.killpg(third.proc.pid, signal.SIGTERM)
    assert third.proc.wait(60 * SLOW) == 0, third.output()


@pytest.mark.e2e
def test_a_killed_run_stops_its_servers_and_the_next_run_its_leftovers(
    tmp_path: Path, simulator: int, runs: list[Run]
) -> None:
    config, state = _config(tmp_path / "run.toml", simulator), tmp_path / "state"
    first = _started(runs, config, state, tmp_path / "run-1.log")
    info = first.wait_up()
    wait_for(lambda: first.trades() >= 100, timeout=30, what="100 trades stored")
    first.kill()  # SIGKILL: no stop sequence at all
    orphans = [c["pid"] for c in info["children"].values()]
    assert not any(_gone(pid) for pid in orphans)  # the kill left them running

    second = _started(
        runs, config, state, tmp_path / "run-2.log"
    )  # at once: the keeper may still stop
    second.wait_up()
    assert all(_gone(pid) for pid in orphans)
    out = second.output()
    assert "a killed run left producer" in out and "a killed run left consumer" in out
    # the first keeper saw its pipe close and stopped its servers itself (Redis' AOF flushed)
    servers = [info["servers"][name] for name in ("keeper", "redis", "postgres")]
    assert all(_gone(pid) for pid in servers)
    keeper_log = (state / "logs" / "servers.log").read_text()
    for name in ("postgres", "redis"):
        assert f"run[{servers[0]}] keeper: {name} stopped with 0" in keeper_log
    wait_for(lambda: second.trades() >= 200, timeout=30, what="trades in the second run")
    assert second.ctrl_c() == 0, second.output()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[feeds]]\nexchange = "binance"\nsymbols = ["btc-usdt"]\n',
         "config error at feeds[0].symbols[0]: 'btc-usdt' is not a canonical symbol"),
        ("[consumer]\nbatch_ms = 20\n", "config error at feeds: no feed configured"),
        ('[[feeds]\nexchange = "binance"\n', "invalid TOML"),
    ],
)  # fmt: skip
def test_a_bad_config_exits_2_at_once_and_starts_nothing(
    tmp_path: Path, text: str, message: str
) -> None:
    config, state = tmp_path / "bad.toml", tmp_path / "state"
    config.write_text(text)
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", "run", f"--config={config}", f"--dir={state}",
         "--no-table"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=30 * SLOW,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert time.monotonic() - began < 10 * SLOW
    assert not (state / "data").exists()


@pytest.mark.e2e
def test_a_given_server_that_does_not_answer_exits_4_and_starts_nothing(tmp_path: Path) -> None:
    config, state = _config(tmp_path / "run.toml", free_port()), tmp_path / "state"
    env = {**_env(), "TICKVAULT_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", "run", f"--config={config}", f"--dir={state}",
         "--no-table"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30 * SLOW,
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert "cannot reach a server" in done.stderr
    assert not (state / "data").exists()  # no embedded PostgreSQL started for nothing


@pytest.mark.e2e
def test_an_embedded_server_that_does_not_start_exits_3_and_stops_the_other(
    tmp_path: Path,
) -> None:
    config, state = _config(tmp_path / "run.toml", free_port()), tmp_path / "state"
    broken = state / "data" / "postgres" / "data"
    broken.mkdir(parents=True)
    (broken / "PG_VERSION").write_text("7\n")  # a cluster no PostgreSQL here can open
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", "run", f"--config={config}", f"--dir={state}",
         "--no-table"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60 * SLOW,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "tickvault run: cannot start the embedded PostgreSQL: " in done.stderr
    log = (state / "logs" / "servers.log").read_text()
    assert "keeper: redis stopped with 0" in log  # the one that did start is stopped again
    assert not (state / "logs" / "producer.log").exists()  # no child was started
