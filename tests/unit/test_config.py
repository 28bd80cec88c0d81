"""Config: typed, frozen, fails at start naming the key and the fix."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from common.config import load_settings, settings_from_mapping
from common.errors import ConfigError

FEED = {"exchange": "binance", "symbols": ["BTC-USDT"], "channels": ["trades", "quotes"]}


def test_defaults_and_env_overrides() -> None:
    s = settings_from_mapping(
        {"feeds": [FEED]},
        {
            "TICKVAULT_REDIS_URL": "redis://r:1/2",
            "TICKVAULT_DATABASE_URL": "postgresql://u:secret@h/db",
        },
    )
    assert s.redis.url == "redis://r:1/2"
    assert s.database.url == "postgresql://u:secret@h/db"
    assert "secret" not in repr(s.database) and "***" in repr(s.database)
    assert s.exchanges == ("binance",)
    assert s.subscribed() == {"binance": frozenset({"BTC-USDT"})}
    assert s.symbol_maps() == {("binance", ""): {"BTCUSDT": "BTC-USDT"}}
    assert s.producer.fast_frames is True
    off = settings_from_mapping({"feeds": [FEED], "producer": {"fast_frames": False}}, {})
    assert off.producer.fast_frames is False
    with pytest.raises(AttributeError):
        s.redis.url = "x"  # type: ignore[misc]


def test_load_from_file_and_env_variable(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[consumer]\nbatch_entries = 7\n[[feeds]]\nexchange = "okx"\n'
        'symbols = ["BTC-USDT-PERP"]\noptions = { trades = "trades-all" }\n'
    )
    s = load_settings(None, {"TICKVAULT_CONFIG": str(path)})
    assert s.consumer.batch_entries == 7
    [feed] = s.feeds
    assert str(feed.symbols[0]) == "BTC-USDT-PERP" and feed.options == {"trades": "trades-all"}


@pytest.mark.parametrize(
    ("data", "key", "fix"),
    [
        ({"redis": {"urll": "x"}}, "redis.urll", "README"),
        ({"feeds": [{**FEED, "chanels": []}]}, "feeds[0].chanels", "README"),
        ({"feeds": [{**FEED, "exchange": "nyse"}]}, "feeds[0].exchange", "binance"),
        ({"feeds": [{**FEED, "symbols": ["btc-usdt"]}]}, "feeds[0].symbols[0]", ""),
        ({"feeds": [{**FEED, "symbols": ["BTCUSDT"]}]}, "feeds[0].symbols[0]", ""),
        ({"feeds": [{**FEED, "symbols": ["BTC-USDT-PERP"]}]}, "feeds[0].symbols[0]", ""),
        ({"feeds": [{**FEED, "symbols": []}]}, "feeds[0].symbols", "BTC-USDT"),
        ({"feeds": [{**FEED, "channels": ["book"]}]}, "feeds[0].channels", "trades"),
        ({"feeds": [{**FEED, "options": {"x": "y"}}]}, "feeds[0].options.x", "trades"),
        ({"feeds": [{**FEED, "options": {"trades": "y"}}]}, "feeds[0].options.trades", "aggTrade"),
        ({"feeds": [{**FEED, "url": "http://x"}]}, "feeds[0].url", ""),
        ({"consumer": {"batch_entries": 0}}, "consumer.batch_entries", ""),
        ({"consumer": {"writers": 0}}, "consumer.writers", ""),
        ({"consumer": {"batch_ms": "soon"}}, "consumer.batch_ms", "README"),
        ({"producer": {"fast_frames": "maybe"}}, "producer.fast_frames", "README"),
        ({"database": {"url": "mysql://x"}}, "database.url", ""),
        (
            {
                "feeds": [
                    {
                        "exchange": "bithumb",
                        "symbols": ["BTC-KRW"],
                        "channels": ["quotes"],
                        "options": {"api": "legacy"},
                    }
                ]
            },
            "feeds[0]",
            "",
        ),
    ],
)
def test_bad_config_names_the_key(data: dict[str, object], key: str, fix: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_from_mapping(data, {})
    assert err.value.key == key
    assert fix in str(err.value)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "nope.toml", {})
    bad = tmp_path / "bad.toml"
    bad.write_text("[redis\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(bad, {})


def test_example_config_in_deploy_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    s = load_settings(root / "deploy" / "tickvault.example.toml", {})
    assert len(s.exchanges) >= 2
    assert msgspec.structs.asdict(s.consumer)["group"] == "tickvault"


def test_the_producers_event_loop_is_checked_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import importlib.util
    import sys

    from producer.__main__ import loop_factory

    with pytest.raises(ConfigError, match=r"producer\.event_loop.*unknown event loop 'tokio'"):
        settings_from_mapping({"producer": {"event_loop": "tokio"}}, {})
    assert loop_factory("asyncio") is asyncio.new_event_loop
    uvloop = pytest.importorskip("uvloop")  # a dependency, except on Windows
    assert settings_from_mapping({}, {}).producer.event_loop == "auto"
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    # without uvloop: "auto" falls back to asyncio's loop; "uvloop" is refused at start
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert loop_factory("auto") is asyncio.new_event_loop
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"producer\.event_loop.*uvloop is not installed"):
        settings_from_mapping({"producer": {"event_loop": "uvloop"}}, {})
    assert settings_from_mapping({"producer": {"event_loop": "auto"}}, {})


def test_trade_contexts_are_chosen_per_id_space() -> None:
    """A Binance symbol with a @trade feed in ms and an @aggTrade feed in µs: a backfill of an
    agg- gap asks in µs, one of a plain gap in ms (``consumer.backfill``)."""
    trade_ms = {"exchange": "binance", "symbols": ["BTC-USDT", "ETH-USDT"]}
    agg_us = {
        "exchange": "binance",
        "symbols": ["BTC-USDT"],
        "options": {"trades": "aggTrade", "time_unit": "microsecond"},
    }
    s = settings_from_mapping({"feeds": [trade_ms, agg_us]}, {})
    assert s.trade_contexts("binance") == {"BTC-USDT": "", "ETH-USDT": ""}  # the first feed's
    assert s.trade_contexts("binance", "") == {"BTC-USDT": "", "ETH-USDT": ""}
    # agg-: the aggTrade feed's unit; a symbol no feed of that space has: as without a space
    assert s.trade_contexts("binance", "agg-") == {"BTC-USDT": "microsecond", "ETH-USDT": ""}
    swapped = settings_from_mapping({"feeds": [agg_us, trade_ms]}, {})
    assert swapped.trade_contexts("binance", "") == {"BTC-USDT": "", "ETH-USDT": ""}
    assert swapped.trade_contexts("binance", "agg-")["BTC-USDT"] == "microsecond"
    futures = {"exchange": "binance-futures", "symbols": ["BTC-USDT-PERP"]}
    f = settings_from_mapping({"feeds": [futures]}, {})
    assert f.trade_contexts("binance-futures", "") == {"BTC-USDT-PERP": ""}
