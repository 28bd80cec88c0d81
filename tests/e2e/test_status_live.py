"""``tickvault status`` against a live pipeline (simulator, producer, consumer as processes):
healthy while it runs, the producer's clean stop and its death each reported; and ``--watch`` in
a real terminal (tmux), drawn in 80 columns and refreshed in place until Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SLOW
from tests.e2e.harness import ROOT, Feed, Pipeline, pipeline
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

SYMBOLS = ["BTC-USDT", "ETH-USDT"]


def status(p: Pipeline, *args: str) -> tuple[int, Any]:
    """``tickvault status --json``: the exit status and the document."""
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", "status", f"--config={p.config}", "--json", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def healthy(p: Pipeline) -> Any:
    p.check_alive()
    code, doc = status(p)
    feeds = doc["feeds"]
    rows = {s["symbol"]: s["rows_1m"] for s in doc["symbols"]}
    ok = (
        code == 0
        and feeds
        and all(f["state"] == "connected" for f in feeds)
        and all(rows.get(s, 0) > 0 for s in SYMBOLS)
    )
    return doc if ok else None


def feed_problems(p: Pipeline, *kinds: str) -> Any:
    """The problems of these kinds, when status exits 1 with one; else None."""
    code, doc = status(p)
    found = [x for x in doc["problems"] if x["kind"] in kinds]
    return found if code == 1 and found else None


@contextlib.contextmanager
def _healthy(
    redis_url: str, database_url: str, work_dir: Path
) -> Iterator[tuple[Pipeline, subprocess.Popen[bytes], Any]]:
    """A live pipeline (simulator, consumer, producer) with rows stored and a healthy status:
    the pipeline, its producer and that status document."""
    with pipeline(
        work=work_dir, redis_url=redis_url, database_url=database_url,
        feeds=[Feed("binance", SYMBOLS)],
    ) as p:  # fmt: skip
        p.simulator(rate=50, trades=1_000_000)
        p.start_consumer()
        producer = p.start_producer()
        p.wait_rows(100, timeout=30)
        yield p, producer, wait_for(lambda: healthy(p), timeout=30, interval=0.5,
                                    what="status healthy")  # fmt: skip


def test_status_of_a_live_pipeline_a_stopped_and_a_killed_producer(
    redis_url: str, database_url: str, work_dir
) -> None:
    with _healthy(redis_url, database_url, work_dir) as (p, producer, doc):
        [stream] = doc["streams"]
        assert stream["exchange"] == "binance" and stream["length"] > 0
        [group] = stream["groups"]
        assert group["name"] == "tickvault" and group["behind_s"] < 30
        [feed] = doc["feeds"]
        assert feed["exchange"] == "binance" and feed["symbols"] == SYMBOLS
        assert feed["last_frame_age_s"] is not None and feed["last_frame_age_s"] < 15
        text = subprocess.run(
            [sys.executable, "-m", "common.cli", "status", f"--config={p.config}"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert text.returncode == 0, text.stdout
        assert "healthy" in text.stdout and "connected" in text.stdout

        assert p.stop(producer) == 0  # a clean stop: its last heartbeat says so
        found = feed_problems(p, "stopped")
        assert found is not None  # at once, no waiting
        assert {x["subject"].split()[-1] for x in found} == {feed["label"]}

        producer = p.start_producer()
        wait_for(lambda: healthy(p), timeout=30, interval=0.5, what="healthy again")
        producer.kill()  # no last word: the heartbeat goes stale, then expires
        producer.wait(10)
        killed = time.monotonic()
        found = wait_for(
            lambda: feed_problems(p, "stale", "no-heartbeat"), timeout=45, interval=1.0,
            what="the dead producer's feed flagged",
        )  # fmt: skip
        assert time.monotonic() - killed < 25 * SLOW  # three heartbeats (15 s) and a sample
        assert found[0]["kind"] == "stale" and "binance/0" in found[0]["subject"]


def tmux(socket: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, timeout=10)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed: no terminal")
def test_watch_in_a_real_terminal_refreshes_in_place(
    redis_url: str, database_url: str, work_dir
) -> None:
    socket = f"tickvault-status-{os.getpid()}"  # a tmux server of this test's own
    with _healthy(redis_url, database_url, work_dir) as (p, _, _):
        command = (
            f"{sys.executable} -m common.cli status --watch --every 0.5 --config {p.config}; "
            "echo exited $?; sleep 30"
        )
        started = tmux(
            socket, "new-session", "-d", "-s", "status", "-x", "80", "-y", "40", "-c", str(ROOT),
            command,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        try:

            def screen() -> str:
                return tmux(socket, "capture-pane", "-p", "-t", "status").stdout

            def drawn() -> str | None:
                shown = screen()
                return shown if "trades" in shown and "BTC-USDT" in shown else None

            first = wait_for(drawn, timeout=20, interval=0.2, what="the status screen")
            lines = first.splitlines()
            assert max(len(line) for line in lines) <= 80
            for word in ("healthy", "streams", "groups", "feeds", "connected", "ETH-USDT"):
                assert word in first, first
            stamp = re.search(r"tickvault status (\d\d:\d\d:\d\d)", first)
            assert stamp is not None, first

            def refreshed() -> str | None:
                shown = screen()
                now = re.findall(r"tickvault status (\d\d:\d\d:\d\d)", shown)
                return shown if now and now != [stamp.group(1)] else None

            second = wait_for(refreshed, timeout=10, interval=0.2, what="a refresh")
            # in place: one screen, one headline (not a scroll of copies)
            assert len(re.findall(r"tickvault status \d", second)) == 1, second
            tmux(socket, "send-keys", "-t", "status", "C-c")
            ended = wait_for(
                lambda: "exited" in screen() and screen(), timeout=10, what="Ctrl-C ends it"
            )
            assert "exited 0" in ended, ended  # healthy at the last sample
        finally:
            tmux(socket, "kill-server")
