"""The consumer's PostgreSQL connections find a server that vanished without closing them (its
host died, a partition) in seconds, not after the OS's 2 hours: libpq's TCP keepalives and user
timeout are set, unless database.url sets them itself."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from consumer.store import DEAD_PEER, Store, with_dead_peer_options

pytestmark = pytest.mark.integration


def test_the_defaults_are_added_and_the_urls_own_win() -> None:
    got = conninfo_to_dict(
        with_dead_peer_options("postgresql://u:secret@db:5433/tv?sslmode=require")
    )
    assert got == {
        "user": "u", "password": "secret", "host": "db", "port": "5433", "dbname": "tv",
        "sslmode": "require", **DEAD_PEER,
    }  # fmt: skip
    own = conninfo_to_dict(with_dead_peer_options("host=/run/pg dbname=tv keepalives_idle=3"))
    assert own["keepalives_idle"] == "3" and own["tcp_user_timeout"] == "60000"
    assert own["host"] == "/run/pg"
    assert with_dead_peer_options("not a = url =") == "not a = url ="  # libpq says what is wrong


def test_the_consumers_connection_carries_them(database_url: str) -> None:
    store = Store(database_url)
    store.connect(run_migrations=False)
    try:
        assert store._conn is not None
        used = conninfo_to_dict(store._conn.info.dsn)
        assert {k: used.get(k) for k in DEAD_PEER} == DEAD_PEER
    finally:
        store.close()
