"""What a run uses: its config file (written with a default the first time) and the URLs
of the servers given, else the embedded ones'; the children's config."""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import load_settings
from ..errors import ConfigError

logger = logging.getLogger("tickvault.run")

DEFAULT_CONFIG = """\
# tickvault run: a few liquid markets on the venues' public endpoints.
# Written on the first run; used as it is from then on: edit it freely (README: Configuration
# reference). Without [redis] / [database] url, run starts its own servers under this directory.

[[feeds]]
exchange = "binance"
channels = ["trades", "quotes"]
symbols = ["BTC-USDT", "ETH-USDT"]

[[feeds]]
exchange = "upbit"
channels = ["trades", "quotes"]
symbols = ["BTC-KRW"]
"""


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What a run uses: the config's source, the URLs given (None: start the embedded server)."""

    source: Path
    data: dict[str, Any]  # the source file, parsed
    redis_url: str | None
    database_url: str | None


def config_source(config: str | None, state: Path, env: Mapping[str, str]) -> Path:
    """``--config``, else ``TICKVAULT_CONFIG``, else ``<dir>/tickvault.toml``, written with
    :data:`DEFAULT_CONFIG` when absent (never overwritten: the user may have edited it)."""
    given = config or env.get("TICKVAULT_CONFIG")
    if given:
        return Path(given)
    path = state / "tickvault.toml"
    if not path.exists():
        state.mkdir(parents=True, exist_ok=True)
        path.write_text(DEFAULT_CONFIG)
        logger.info("wrote the default config %s (edit it to change markets)", path)
    return path


def plan(source: Path, env: Mapping[str, str]) -> Plan:
    """Check ``source`` (a ConfigError names the key and the fix) and say which URLs it gives.

    A URL counts as given when the environment sets it or the file has the key itself (even
    with the default value): defaults filled in by the settings never count.
    """
    settings = load_settings(source, env)  # every check the children would make, now
    if not settings.feeds:
        raise ConfigError("feeds", "no feed configured", "add a [[feeds]] table")
    with open(source, "rb") as fh:
        data = tomllib.load(fh)

    def given(section: str, variable: str, url: str) -> str | None:
        table = data.get(section)
        explicit = env.get(variable) or (isinstance(table, dict) and "url" in table)
        return url if explicit else None

    return Plan(
        source=source,
        data=data,
        redis_url=given("redis", "TICKVAULT_REDIS_URL", settings.redis.url),
        database_url=given("database", "TICKVAULT_DATABASE_URL", settings.database.url),
    )


def children_config(
    data: Mapping[str, Any], *, redis_url: str, database_url: str, state: Path
) -> dict[str, Any]:
    """The children's config: the source's keys, the URLs in use, and run's own defaults for a
    spill directory and consumer name the file does not set (stable across restarts: a
    restarted consumer re-reads its own pending entries, a restarted producer its spill)."""
    out = copy.deepcopy(dict(data))
    out.setdefault("redis", {})["url"] = redis_url
    out.setdefault("database", {})["url"] = database_url
    out.setdefault("producer", {}).setdefault("spill_dir", str(state / "data" / "spill"))
    out.setdefault("consumer", {}).setdefault("name", f"{socket.gethostname()}-run")
    return out


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # inf, -inf and nan read back as TOML's own
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's escapes are TOML's basic ones
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_toml(data: Mapping[str, Any]) -> str:
    """``data`` as TOML that ``tomllib`` reads back equal: tables as ``[name]``, lists of tables
    as ``[[name]]``, deeper tables inline."""

    def is_tables(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines = [
        f"{_toml_key(k)} = {_toml_value(v)}"
        for k, v in data.items()
        if not isinstance(v, dict) and not is_tables(v)
    ]
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"\n[{_toml_key(key)}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
        elif is_tables(value):
            for item in value:
                lines.append(f"\n[[{_toml_key(key)}]]")
                lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def write_private(path: Path, text: str) -> None:
    """Write ``path`` atomically, readable by its owner only (it may hold passwords)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
