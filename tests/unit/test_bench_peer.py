"""The peer scenario's pure parts: run order, percentiles, medians and ratios, the table,
``/proc`` parsing and CPU deltas (on a fake ``/proc``), the tickvault config it writes."""

from __future__ import annotations

import json
import math
import os
import random
import statistics
from pathlib import Path

import pytest

from bench import peer, peer_venv
from bench.peer_cpu import CpuMeter, descendants, parse_schedstat, parse_stat, process_cpu_ns
from bench.peer_report import (
    CRYPTOFEED,
    TICKVAULT,
    cpu_per_simulator,
    format_table,
    machine_lines,
    medians,
    percentile,
    ratio,
    run_order,
    summarise,
)
from common.config import load_settings
from common.simulator.dialect import SimSession
from common.simulator.dialects import get_dialect
from common.simulator.engine import make_trade
from common.symbols import parse_symbol
from common.venues.base import Channel
from common.venues.binance import Binance


# -- run order ---------------------------------------------------------------------------------
def test_runs_alternate_in_pairs_so_drift_favours_neither() -> None:
    assert run_order(1) == [CRYPTOFEED, TICKVAULT]
    assert run_order(3) == [CRYPTOFEED, TICKVAULT, TICKVAULT, CRYPTOFEED, CRYPTOFEED, TICKVAULT]
    order = run_order(4)
    assert order.count(CRYPTOFEED) == order.count(TICKVAULT) == 4
    # each takes the first and the second place of a pair equally often
    assert [order[i] for i in range(0, 8, 2)] == [CRYPTOFEED, TICKVAULT] * 2
    assert run_order(0) == []


# -- percentiles -------------------------------------------------------------------------------
def test_percentile_interpolates_between_ranks_like_percentile_cont() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.0) == 1.0  # unsorted input
    assert percentile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.99) == pytest.approx(3.97)
    assert percentile([7.0], 0.99) == 7.0
    values = [float(v * v % 101) for v in range(1, 500)]
    # statistics' "inclusive" method is the same linear interpolation
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    assert percentile(values, 0.5) == pytest.approx(cuts[49])
    assert percentile(values, 0.99) == pytest.approx(cuts[98])


def test_percentile_of_nothing_is_nan_and_bad_quantiles_are_refused() -> None:
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 99)


# -- medians, ratios, table --------------------------------------------------------------------
def test_medians_leave_out_nan_and_keep_every_key() -> None:
    runs = [{"a": 1.0, "b": math.nan}, {"a": 3.0, "b": 4.0}, {"a": 2.0}]
    out = medians(runs)
    assert out["a"] == 2.0 and out["b"] == 4.0
    assert math.isnan(medians([{"c": math.nan}])["c"])


def test_summarise_groups_by_scenario_and_collector_and_sums_the_row_checks() -> None:
    runs = [
        ("1,000/s", CRYPTOFEED, {"rows_per_s": 990.0, "missing": 0.0, "duplicates": 1.0}),
        ("1,000/s", TICKVAULT, {"rows_per_s": 1000.0, "missing": 0.0, "duplicates": 0.0}),
        ("1,000/s", TICKVAULT, {"rows_per_s": 998.0, "missing": 2.0, "duplicates": 0.0}),
        ("1,000/s", CRYPTOFEED, {"rows_per_s": 994.0, "missing": 0.0, "duplicates": 1.0}),
        ("burst", CRYPTOFEED, {"rows_per_s": 25_000.0}),
    ]
    out = summarise(runs)
    assert list(out) == ["1,000/s", "burst"]
    assert out["1,000/s"][CRYPTOFEED]["rows_per_s"] == 992.0
    assert out["1,000/s"][TICKVAULT]["rows_per_s"] == 999.0
    assert out["1,000/s"][TICKVAULT]["missing"] == 2.0  # summed: one bad run shows
    assert out["1,000/s"][CRYPTOFEED]["duplicates"] == 2.0
    assert out["burst"][CRYPTOFEED]["bad"] == 0.0


def test_ratio_is_tickvault_over_cryptofeed_and_nan_without_both() -> None:
    assert ratio(2.0, 4.0) == 0.5
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(math.nan, 1.0)) and math.isnan(ratio(1.0, math.nan))


def test_table_shows_both_medians_the_ratio_checks_and_the_machine() -> None:
    cf = {"rows_per_s": 25_000.0, "p50_ms": 3500.0, "p99_ms": 3900.0, "cpu_us_per_row": 14.0,
          "postgres_us_per_row": 20.0, "missing": 0.0, "duplicates": 0.0, "bad": 0.0,
          "cpu_per_simulator": 1.75, "send_ms": 1043.0, "commit_gap_ms": 1204.5}  # fmt: skip
    tv = {"rows_per_s": 100_000.0, "p50_ms": 350.0, "p99_ms": 780.0, "cpu_us_per_row": 7.0,
          "postgres_us_per_row": 10.0, "missing": 0.0, "duplicates": 3.0, "bad": 0.0,
          "cpu_per_simulator": 0.7, "send_ms": 1210.4, "commit_gap_ms": 40.2}  # fmt: skip
    summary = {
        "burst of 100,000": {CRYPTOFEED: cf, TICKVAULT: tv},
        "1,000/s paced": {TICKVAULT: tv},
    }
    machine = machine_lines(
        {"python_loop_ms": 112.4, "fdatasync_ms": 0.85, "fdatasync_p99_ms": 3.31,
         "fdatasync_max_ms": 45.9},
        {"python_loop_ms": 114.0, "fdatasync_ms": 0.2, "fdatasync_p99_ms": 12.04,
         "fdatasync_max_ms": 80.2},
    )  # fmt: skip
    lines = format_table(summary, runs=3, cryptofeed_version="2.4.1", machine=machine)
    text = "\n".join(lines)
    assert "tickvault vs cryptofeed 2.4.1: medians of 3 run(s)" in text
    header = next(line for line in lines if line.startswith("scenario"))
    assert header.split() == ["scenario", "figure", CRYPTOFEED, TICKVAULT, "ratio"]
    rows = next(line for line in lines if line.startswith("burst of 100,000"))
    assert rows.split()[-3:] == ["25,000", "100,000", "4.00"]
    cpu = next(line for line in lines if "CPU us/row" in line and "14.0" in line)
    assert cpu.split()[-3:] == ["14.0", "7.0", "0.50"]
    assert any(line.split()[-5:] == ["0", "/", "3", "/", "0"] for line in lines)
    normalised = next(line for line in lines if "CPU / simulator's CPU" in line)
    assert normalised.split()[-3:] == ["1.75", "0.70", "0.40"]
    # when the simulator had sent all: on a burst, about the floor of either p99
    sent = next(line for line in lines if "simulator's last send ms" in line)
    assert sent.split()[-3:] == ["1,043", "1,210", "1.16"]
    gap = next(line for line in lines if "longest gap between commits ms" in line)
    assert gap.split()[-3:] == ["1,204.5", "40.2", "0.03"]
    # a scenario without a cryptofeed run: dashes, no ratio
    paced = next(line for line in lines if line.startswith("1,000/s paced"))
    assert paced.split()[-3:] == ["-", "100,000", "-"]
    assert lines[-3].startswith("machine at start / end: sum(range(10**7))")
    assert lines[-3].endswith("112 / 114 ms") and lines[-2].endswith("0.85 / 0.20 ms")
    # the disk's own tail: no collector's p99 frame -> commit is below it
    assert lines[-1].startswith("machine at start / end: fdatasync p99 / longest")
    assert lines[-1].endswith("3.3 / 46; 12.0 / 80 ms")
    widths = {len(line) for line in lines[2:4]}
    assert len(widths) == 1  # the header and its rule are aligned


def test_table_of_no_runs_still_prints() -> None:
    lines = format_table({}, runs=1, cryptofeed_version="2.4.1")
    assert lines[2].split() == ["scenario", "figure", CRYPTOFEED, TICKVAULT, "ratio"]


# -- /proc -------------------------------------------------------------------------------------
def test_schedstat_and_stat_parsing() -> None:
    assert parse_schedstat("102388447 30432226 326\n") == 102_388_447
    # a command name with spaces and parentheses: fields are counted after the last ")"
    stat = "4242 (we (ird) name) S 17 4242 4242 0 -1 4194560 1 0 0 0 250 30 0 0 20 0 3 0 9 0"
    assert parse_stat(stat) == (17, 280)


def test_descendants_follow_the_tree_and_ignore_other_trees() -> None:
    parents = {1: 0, 10: 1, 11: 10, 12: 10, 13: 12, 20: 1, 21: 20}
    assert descendants([10], parents) == {10, 11, 12, 13}
    assert descendants([12, 21], parents) == {12, 13, 21}
    assert descendants([], parents) == set()


def _proc(root: Path, pid: int, ppid: int, threads: dict[int, int]) -> None:
    d = root / str(pid)
    (d / "task").mkdir(parents=True, exist_ok=True)
    (d / "stat").write_text(f"{pid} (python3) S {ppid} 1 1 0 -1 0 0 0 0 0 5 5 0 0 20 0 1 0 1 0\n")
    for tid, ns in threads.items():
        (d / "task" / str(tid)).mkdir(exist_ok=True)
        (d / "task" / str(tid) / "schedstat").write_text(f"{ns} 0 1\n")


def test_cpu_meter_sums_threads_and_children_between_samples(tmp_path: Path) -> None:
    _proc(tmp_path, 1, 0, {1: 10**9})
    _proc(tmp_path, 100, 1, {100: 2_000_000_000, 101: 500_000_000})  # the collector, 2 threads
    _proc(tmp_path, 200, 1, {200: 7 * 10**9})  # something else
    meter = CpuMeter({"collector": [100], "server": [300]}, proc=tmp_path)
    meter.begin()
    _proc(tmp_path, 100, 1, {100: 2_250_000_000, 101: 600_000_000})
    _proc(tmp_path, 150, 100, {150: 40_000_000})  # a child started during the window
    _proc(tmp_path, 200, 1, {200: 9 * 10**9})
    used = meter.end()
    assert used["collector"] == pytest.approx(0.25 + 0.1 + 0.04)
    assert used["server"] == 0.0  # no such process: nothing, not an error


def test_cpu_without_schedstat_falls_back_to_tick_counts(tmp_path: Path) -> None:
    _proc(tmp_path, 7, 1, {})
    (tmp_path / "7" / "task" / "7").mkdir()
    (tmp_path / "7" / "task" / "7" / "stat").write_text(
        "7 (x) S 1 7 7 0 -1 0 0 0 0 0 3 1 0 0 20 0 1 0 1 0\n"
    )
    ticks = 4  # utime 3 + stime 1
    assert process_cpu_ns(7, tmp_path) == ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    assert process_cpu_ns(8, tmp_path) is None


# -- the runs' inputs --------------------------------------------------------------------------
def test_plan_paces_each_rate_for_the_seconds_and_adds_the_burst() -> None:
    paced, fast, burst = peer.plan([1000.0, 40000.0], 10.0, 100_000)
    assert (paced.trades, paced.rate, paced.warmup_s, paced.due_s) == (10_000, 1000.0, 1.0, 10.0)
    assert fast.name == "40,000/s paced" and fast.trades == 400_000
    assert (burst.name, burst.rate, burst.trades) == ("burst of 100,000", 0.0, 100_000)
    assert burst.warmup_s == 0.0 and burst.due_s == 0.0
    assert peer.plan([], 4.0, 0) == []


def test_subscriptions_are_read_from_the_simulator_output() -> None:
    lines = ["ready 9001", "subscribed BTC-USDT aggTrade", "noise", "go 1"]
    assert peer.subscribed(lines) == [("BTC-USDT", "aggTrade")]
    assert peer.subscribed([]) == []


def test_tickvault_config_reads_aggtrade_from_the_simulator(tmp_path: Path) -> None:
    path = tmp_path / "tickvault.toml"
    path.write_text(
        peer.tickvault_config(
            "redis://127.0.0.1:7000/0", "postgresql://postgres@127.0.0.1:7001/postgres", 9001,
            tmp_path / "spill",
        )
    )  # fmt: skip
    s = load_settings(path, {})
    assert s.redis.url == "redis://127.0.0.1:7000/0"
    [feed] = s.feeds
    assert feed.exchange == "binance" and [str(x) for x in feed.symbols] == ["BTC-USDT"]
    assert feed.url == "ws://127.0.0.1:9001" and feed.options == {"trades": "aggTrade"}
    # the same stream cryptofeed subscribes for TRADES
    names = Binance().stream_names(
        list(feed.channels), [parse_symbol("BTC-USDT")], dict(feed.options)
    )
    assert names == ["btcusdt@aggTrade"]


def test_simulator_serves_cryptofeeds_combined_stream_url_without_a_subscribe() -> None:
    """cryptofeed names its streams in the URL and sends no SUBSCRIBE; the Binance dialect
    subscribes them at the greeting and sends aggTrade events wrapped as a combined stream."""
    dialect = get_dialect("binance")
    session = SimSession(path="/stream?streams=btcusdt@aggTrade")
    assert dialect.accepts(session.path)
    assert dialect.greeting(session) == []
    assert session.subscriptions == {(Channel.TRADES, "BTC-USDT"): "aggTrade"}
    [frame] = dialect.trade_frames(session, [make_trade("BTC-USDT", 7, 1_700_000_000_123_456_789)])
    event = json.loads(frame)
    assert event["stream"] == "btcusdt@aggTrade"
    assert event["data"] == {
        "e": "aggTrade", "E": 1_700_000_000_123, "s": "BTCUSDT", "a": 7, "p": "100.07",
        "q": "0.00008", "f": 7, "l": 7, "T": 1_700_000_000_123, "m": False, "M": True,
    }  # fmt: skip


def test_json_results_carry_none_for_nan() -> None:
    got = peer.json_safe({"a": math.nan, "b": [1.0, math.nan], "c": {"d": (math.nan,)}})
    assert got == {"a": None, "b": [1.0, None], "c": {"d": [None]}}


def test_peer_venv_is_complete_only_with_the_pinned_cryptofeed() -> None:
    good = {"cryptofeed": "2.4.1", "uvloop": "0.23.0", "asyncpg": "0.32.0", "websockets": "17.4"}
    assert peer_venv.complete(good)
    assert not peer_venv.complete({**good, "cryptofeed": "2.4.0"})
    assert not peer_venv.complete({**good, "asyncpg": None})
    assert not peer_venv.complete({})


def test_cpu_is_divided_by_the_simulators_of_the_same_run() -> None:
    assert cpu_per_simulator({"cpu_us_per_row": 30.0, "simulator_us_per_row": 12.0}) == 2.5
    assert math.isnan(cpu_per_simulator({"cpu_us_per_row": 30.0}))
    assert math.isnan(cpu_per_simulator({"cpu_us_per_row": 30.0, "simulator_us_per_row": 0.0}))
    assert math.isnan(cpu_per_simulator({"cpu_us_per_row": math.nan, "simulator_us_per_row": 1}))


def test_machine_lines_of_results_without_the_disk_tail() -> None:
    # results written before the tail was measured still print
    lines = machine_lines(
        {"python_loop_ms": 112.4, "fdatasync_ms": 0.85},
        {"python_loop_ms": 114.0, "fdatasync_ms": 0.2},
    )
    assert [label for label, _ in lines] == [
        "machine at start / end: sum(range(10**7))",
        "machine at start / end: fdatasync 8 KiB",
    ]


def test_sync_figures_are_the_median_the_nearest_rank_p99_and_the_longest() -> None:
    from bench.__main__ import sync_figures

    syncs = [0.5] * 980 + [4.0] * 15 + [9.0, 11.0, 12.0, 30.0, 46.0]  # 1,000 probes
    random.Random(7).shuffle(syncs)
    assert sync_figures(syncs) == {
        "fdatasync_ms": 0.5,
        "fdatasync_p99_ms": 4.0,  # the 990th of 1,000
        "fdatasync_max_ms": 46.0,
    }
    assert sync_figures([2.0]) == {
        "fdatasync_ms": 2.0,
        "fdatasync_p99_ms": 2.0,
        "fdatasync_max_ms": 2.0,
    }
