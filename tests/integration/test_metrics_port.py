"""A ``--metrics-port`` that cannot be served (taken by another process) stops the producer and
the consumer at start as the configuration error it is (exit status 2, the port and the fix),
not as a server that cannot be reached (exit status 4)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.errors import ConfigError, ExitStatus
from common.metrics import Metrics, serve_metrics
from tests.conftest import SLOW

pytestmark = pytest.mark.integration


@pytest.fixture
def taken_port() -> Iterator[int]:
    holder = socket.socket()
    holder.bind(("0.0.0.0", 0))
    holder.listen()
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


def test_serving_a_taken_port_is_a_config_error(taken_port: int) -> None:
    with pytest.raises(ConfigError) as info:
        serve_metrics(Metrics("producer"), taken_port)
    assert info.value.key == "--metrics-port"
    assert f":{taken_port}" in str(info.value) and "choose a free port" in str(info.value)


@pytest.mark.parametrize("process", ["producer", "consumer"])
def test_a_process_stops_at_start_with_exit_status_2(
    process: str, taken_port: int, redis_url: str, database_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    for name in ("TICKVAULT_CONFIG", "TICKVAULT_REDIS_URL", "TICKVAULT_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "tickvault.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_url}"\n[database]\nurl = "{database_url}"\n'
        f'[producer]\nspill_dir = "{tmp_path / "spill"}"\n[backfill]\nauto = false\n'
        '[[feeds]]\nexchange = "binance"\nsymbols = ["BTC-USDT"]\nurl = "ws://127.0.0.1:1"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", process, f"--config={config}",
         f"--metrics-port={taken_port}"],
        capture_output=True, text=True, timeout=60 * SLOW,
    )  # fmt: skip
    assert done.returncode == ExitStatus.CONFIG, done.stdout + done.stderr
    assert "--metrics-port" in done.stderr and f":{taken_port}" in done.stderr
    assert "cannot reach a server" not in done.stderr
