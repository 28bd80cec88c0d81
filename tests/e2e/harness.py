"""Run the real processes (simulator, producer, consumers) against the test servers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from common.servers import free_port
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Feed:
    exchange: str
    symbols: Sequence[str]
    channels: Sequence[str] = ("trades",)
    options: dict[str, str] = field(default_factory=dict)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


@dataclass
class Pipeline:
    work: Path
    redis_url: str
    database_url: str
    feeds: Sequence[Feed]
    consumer: dict[str, Any] = field(default_factory=dict)
    producer: dict[str, Any] = field(default_factory=dict)
    backfill: dict[str, Any] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for feed in self.feeds:
            self.ports.setdefault(feed.exchange, free_port())
        self.config = self.work / "tickvault.toml"
        self.write_config()

    def write_config(self) -> None:
        consumer = {"batch_ms": 20, "claim_idle_ms": 1500, "claim_every_s": 0.5, **self.consumer}
        producer = {
            "backoff_initial_s": 0.05, "backoff_max_s": 0.5,
            "spill_dir": str(self.work / "spill"),  # each test its own (not the repo's)
            **self.producer,
        }  # fmt: skip
        lines = [
            f'[redis]\nurl = "{self.redis_url}"\n',
            f'[database]\nurl = "{self.database_url}"\n',
        ]
        lines.append("[consumer]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in consumer.items()]
        lines.append("\n[producer]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in producer.items()]
        lines.append("\n[backfill]")
        backfill = {"every_s": 1.0, "settle_s": 2.0, **self.backfill}
        lines += [f"{k} = {_toml_value(v)}" for k, v in backfill.items()]
        for feed in self.feeds:
            lines.append("\n[[feeds]]")
            lines.append(f'exchange = "{feed.exchange}"')
            lines.append(f"symbols = {_toml_value(list(feed.symbols))}")
            lines.append(f"channels = {_toml_value(list(feed.channels))}")
            lines.append(f'url = "ws://127.0.0.1:{self.ports[feed.exchange]}"')
            # the simulator serves the venue's REST API on the same port (backfill)
            lines.append(f'rest_url = "http://127.0.0.1:{self.ports[feed.exchange]}"')
            if feed.options:
                opts = ", ".join(f'{k} = "{v}"' for k, v in feed.options.items())
                lines.append(f"options = {{ {opts} }}")
        self.config.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.work / f"{name}.log", "ab")
        env = dict(os.environ, TICKVAULT_CONFIG=str(self.config), PYTHONUNBUFFERED="1")
        env.pop("TICKVAULT_REDIS_URL", None)
        env.pop("TICKVAULT_DATABASE_URL", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "common.cli", *args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        self.procs.append(proc)
        return proc

    def simulator(self, *, rate: float, trades: int, quote_rate: float = 0.0, **extra: Any) -> Any:
        serve = [f"--serve={ex}={port}" for ex, port in self.ports.items()]
        more = [  # a flag given "" is passed without a value
            f"--{k.replace('_', '-')}" + (f"={v}" if v != "" else "") for k, v in extra.items()
        ]
        proc = self._spawn(
            "simulator", "simulate", *serve, f"--rate={rate}", f"--trades={trades}",
            f"--quote-rate={quote_rate}", *more,
        )  # fmt: skip
        for port in self.ports.values():
            wait_for(lambda p=port: _listening(p) or proc.poll() is not None, what="simulator")
        assert proc.poll() is None, self.log("simulator")
        return proc

    def start_producer(self) -> subprocess.Popen[bytes]:
        return self._spawn("producer", "producer")

    def start_consumer(
        self, name: str = "c1", *, args: Sequence[str] = (), **settings: Any
    ) -> subprocess.Popen[bytes]:
        """A consumer; ``args`` are extra command-line arguments (e.g. ``--metrics-port=N``);
        ``settings`` override ``[consumer]`` keys for this one only."""
        argv = ["consumer", f"--name={name}", *args]
        if settings:
            saved, path = dict(self.consumer), self.config
            self.consumer.update(settings)
            self.config = self.work / f"tickvault-{name}.toml"
            self.write_config()
            argv.append(f"--config={self.config}")
            self.consumer, self.config = saved, path
        return self._spawn(f"consumer-{name}", *argv)

    def log(self, name: str) -> str:
        path = self.work / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    # -- database views ---------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with psycopg.connect(self.database_url, connect_timeout=3) as conn:
                return conn.execute(sql, params).fetchall()
        except psycopg.errors.UndefinedTable:
            return []

    def count(self, table: str = "trades") -> int:
        rows = self.query(f"SELECT count(*) FROM {table}")
        return int(rows[0][0]) if rows else 0

    def check_alive(self) -> None:
        """Fail at once, with its log, if a process died by itself (not killed by the test)."""
        for proc in self.procs:
            if proc.poll() not in (None, 0, -signal.SIGKILL, -signal.SIGTERM):
                logs = "\n".join(
                    f"--- {p.name}\n{self.log(p.stem)}" for p in self.work.glob("*.log")
                )
                raise AssertionError(f"{proc.args[3:5]} exited with {proc.returncode}\n{logs}")

    def wait_rows(self, n: int, *, table: str = "trades", timeout: float = 60) -> None:
        def enough() -> bool:
            self.check_alive()
            return self.count(table) >= n

        wait_for(enough, timeout=timeout, what=f"{n} rows in {table}")


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@contextlib.contextmanager
def pipeline(**kwargs: Any) -> Iterator[Pipeline]:
    p = Pipeline(**kwargs)
    try:
        yield p
    finally:
        p.close()


def settle(seconds: float) -> None:
    """Give a running process time to do more work mid-stream (not a synchronisation)."""
    time.sleep(seconds)
