"""A ``database.url`` that libpq refuses before the server says anything (TLS options that do
not fit the server, a value it does not accept) stops a process at once with the fix, instead of
being retried for ever as a server that is away (real libpq, real server)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from common.cli import main as cli
from common.errors import Action, ExitStatus, classify, fatal_error
from consumer.store import Store

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TICKVAULT_DATABASE_URL", raising=False)
    monkeypatch.delenv("TICKVAULT_CONFIG", raising=False)


@pytest.mark.parametrize(
    ("query", "code"),
    [
        # the server has no TLS (it says so) or has it (the CA file is missing): TLS either way
        ("sslmode=verify-full&sslrootcert=/nonexistent/ca.pem", "TLS"),
        ("sslmode=bogus", "URL"),
    ],
)
def test_a_database_url_libpq_refuses_stops_at_once_with_the_fix(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], query: str, code: str
) -> None:
    """Not retried for ever as a server away: the first try is the answer."""
    url = f"{database_url}?{query}"
    store = Store(url)
    with pytest.raises(psycopg.OperationalError) as info:
        store.connect()
    assert classify(info.value) is Action.FATAL
    fatal = fatal_error(info.value)
    assert fatal is not None and fatal.code == code and "database.url" in fatal.fix
    config = tmp_path / "tickvault.toml"
    config.write_text(f'[database]\nurl = "{url}"\n')
    assert cli(["migrate", "--config", str(config)]) == ExitStatus.POSTGRES
    assert f"postgresql refused ({code})" in capsys.readouterr().err
