"""``tickvault status``'s pure parts, without a server: problems from a snapshot (and a previous
one), the thresholds, dead letters' reason classes, ages and sizes, and the tables at 80 columns."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from common.envelope import raw_key
from common.status.problems import find_problems, reason_class
from common.status.snapshot import (
    ConsumerInfo,
    DeadInfo,
    Failure,
    FeedInfo,
    GapInfo,
    GroupInfo,
    Problem,
    Snapshot,
    StreamInfo,
    SymbolInfo,
    Thresholds,
    fmt_age,
    fmt_bytes,
)
from common.status.view import render, to_document

NOW_NS = 1_800_000_000_000_000_000


def group(**kw: Any) -> GroupInfo:
    fields: dict[str, Any] = dict(
        name="tickvault", pending=0, lag_entries=0, lag_s=0.0, oldest_pending_s=None,
        consumers=[ConsumerInfo(name="c1", pending=0, idle_s=0.2)],
    )  # fmt: skip
    return GroupInfo(**(fields | kw))


def feed(**kw: Any) -> FeedInfo:
    fields: dict[str, Any] = dict(
        producer="p1", label="binance/0", exchange="binance", context="", symbols=["BTC-USDT"],
        state="connected", connected_since_ns=NOW_NS - 600 * 10**9, connected_s=600.0,
        last_frame_age_s=0.5, reconnects_1h=0, conn="binance/0#1@1", heartbeat_age_s=1.0,
        every_s=5.0,
    )  # fmt: skip
    return FeedInfo(**(fields | kw))


def stream(*groups: GroupInfo, length: int = 1000) -> StreamInfo:
    return StreamInfo(
        exchange="binance", key=raw_key("binance"), exists=True, length=length,
        memory_bytes=250_000, oldest_age_s=3600.0, newest_age_s=0.1, groups=list(groups),
    )  # fmt: skip


def snapshot(**kw: Any) -> Snapshot:
    fields: dict[str, Any] = dict(
        taken_ns=NOW_NS, redis="127.0.0.1:6379 db 0", database="127.0.0.1:5432/postgres",
        configured=["binance"], streams=[stream(group())], feeds=[feed()],
        symbols=[SymbolInfo(exchange="binance", symbol="BTC-USDT", rows_1m=600, rows_1h=36000,
                            newest_age_s=0.2)],
        dead_letters=[DeadInfo(exchange="binance", count=0, sampled=0, reasons={})],
        gaps=[], failures=[], redis_ok=True, database_ok=True,
    )  # fmt: skip
    return Snapshot(**(fields | kw))


def kinds(problems: list[Problem]) -> list[tuple[str, str]]:
    return [(p.kind, p.subject) for p in problems]


def test_a_healthy_snapshot_has_no_problem() -> None:
    assert find_problems(snapshot()) == []
    assert to_document(snapshot(), [])["healthy"] is True


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"feeds": [feed(state="backoff", reconnects_1h=7)]}, ("down", "p1 binance/0")),
        ({"feeds": [feed(state="connecting")]}, ("down", "p1 binance/0")),
        ({"feeds": [feed(last_frame_age_s=61.0)]}, ("silent", "p1 binance/0")),
        ({"feeds": [feed(last_frame_age_s=None, connected_s=75.0)]}, ("silent", "p1 binance/0")),
        ({"feeds": [feed(heartbeat_age_s=16.0)]}, ("stale", "p1 binance/0")),
        ({"feeds": [feed(state="stopped")]}, ("stopped", "p1 binance/0")),
        ({"feeds": []}, ("no-heartbeat", "producer")),
        ({"configured": ["binance", "okx"]}, ("no-heartbeat", "okx")),
        ({"streams": [stream(group(lag_s=31.0, lag_entries=900))]}, ("lag", "binance tickvault")),
        ({"streams": [stream(group(oldest_pending_s=40.0, pending=3))]},
         ("lag", "binance tickvault")),
        ({"streams": [stream(group(pending=4, consumers=[
            ConsumerInfo(name="c2", pending=4, idle_s=61.0)]))]},
         ("idle-consumer", "binance tickvault")),
        ({"streams": [stream()]}, ("no-group", "binance")),
        ({"dead_letters": [DeadInfo(exchange="binance", count=2, sampled=2,
                                    reasons={"undecodable frame": 2})]},
         ("dead-letters", "binance")),
        ({"gaps": [GapInfo(exchange="binance", open=1, backfilling=0, oldest_s=12.0)]},
         ("gaps", "binance")),
        ({"failures": [Failure(source="postgresql", text="cannot reach", unreachable=True)],
          "database_ok": False, "symbols": [], "gaps": None},
         ("unreachable", "postgresql")),
    ],
)  # fmt: skip
def test_each_kind_of_trouble_is_one_problem(changes: dict[str, Any], expected: Any) -> None:
    problems = find_problems(snapshot(**changes))
    assert kinds(problems) == [expected]
    assert problems[0].text


def test_the_thresholds_are_options() -> None:
    snap = snapshot(feeds=[feed(last_frame_age_s=20.0)], streams=[stream(group(lag_s=10.0))])
    assert find_problems(snap) == []
    limits = Thresholds(silent_s=15.0, lag_s=5.0, idle_s=60.0)
    assert kinds(find_problems(snap, limits=limits)) == [
        ("silent", "p1 binance/0"),
        ("lag", "binance tickvault"),
    ]


def test_an_idle_consumer_without_pending_entries_is_fine() -> None:
    idle = [ConsumerInfo(name="c2", pending=0, idle_s=3600.0)]
    assert find_problems(snapshot(streams=[stream(group(consumers=idle))])) == []


def test_a_lag_growing_between_two_samples_is_flagged_below_the_threshold() -> None:
    before = snapshot(streams=[stream(group(lag_s=4.0))])
    now = snapshot(streams=[stream(group(lag_s=9.0))])
    assert kinds(find_problems(now, before)) == [("lag-growing", "binance tickvault")]
    assert find_problems(now) == []  # one sample cannot show growth
    steady = snapshot(streams=[stream(group(lag_s=9.2))])
    assert find_problems(steady, now) == []  # up by less than a second
    small = snapshot(streams=[stream(group(lag_s=3.0))])
    assert find_problems(small, snapshot(streams=[stream(group(lag_s=0.1))])) == []


def test_redis_unreachable_leaves_only_its_failure() -> None:
    snap = snapshot(
        streams=[], feeds=[], dead_letters=[], redis_ok=False,
        failures=[Failure(source="redis", text="cannot reach redis", unreachable=True)],
    )  # fmt: skip
    assert kinds(find_problems(snap)) == [("unreachable", "redis")]  # no "no heartbeat" noise


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("binance: undecodable frame: JSON is malformed: line 1", "undecodable frame"),
        ("delivered 6 times: processing failed: KeyError: 'p'", "delivered too often"),
        ("postgres rejected (22003): numeric field overflow", "postgres rejected (22003)"),
        ("trade 123: price 1e30 is not below 1e20", "bad trade price"),
        ("quote 99: ask_amount -1 is not a plain decimal", "bad quote ask_amount"),
        ("trade id  is 0 bytes (at most 128)", "bad trade id"),
        ("processing failed: ZeroDivisionError: division by zero",
         "processing failed: ZeroDivisionError"),
        ("bad envelope: run lengths or times: 12 != 3", "bad envelope"),
        ("binance: frame has neither event nor arg+data", "frame has neither event nor arg+data"),
        ("", "(no reason)"),
    ],
)  # fmt: skip
def test_reason_classes_drop_the_particulars(reason: str, expected: str) -> None:
    assert reason_class(reason, "binance") == expected


def test_ages_and_sizes_are_short() -> None:
    assert [fmt_age(s) for s in (None, -1, 0.25, 42, 245, 7380, 3 * 86400 + 4 * 3600)] == [
        "-", "0.0s", "0.2s", "42s", "4m05s", "2h03m", "3d04h",
    ]  # fmt: skip
    assert [fmt_bytes(n) for n in (None, 512, 250_000, 3 * 2**30)] == [
        "-", "512 B", "244.1 KB", "3.0 GB",
    ]  # fmt: skip


def rendered(snap: Snapshot, problems: list[Problem]) -> str:
    console = Console(width=80, record=True, file=open("/dev/null", "w"))
    console.print(render(snap, problems))
    console.file.close()
    return console.export_text()


def test_the_tables_fit_80_columns_and_show_every_part() -> None:
    snap = snapshot(
        streams=[stream(group(pending=2, oldest_pending_s=45.0, lag_entries=None, consumers=[
            ConsumerInfo(name="worker-host-a-12345", pending=2, idle_s=75.0),
            ConsumerInfo(name="worker-host-b-67890", pending=0, idle_s=0.1)]))],
        feeds=[feed(), feed(label="binance/1", state="backoff", connected_s=None,
                            last_frame_age_s=None, reconnects_1h=12)],
        dead_letters=[DeadInfo(exchange="binance", count=3, sampled=3,
                               reasons={"undecodable frame": 2, "bad trade price": 1})],
        gaps=[GapInfo(exchange="binance", open=2, backfilling=1, oldest_s=130.0)],
    )  # fmt: skip
    problems = find_problems(snap)
    assert {p.kind for p in problems} == {"lag", "idle-consumer", "down", "dead-letters", "gaps"}
    text = rendered(snap, problems)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in text  # folded, never cut
    for word in (
        "5 problem(s) need attention", "streams", "groups", "feeds", "trades", "dead letters",
        "gaps", "binance/1", "backoff", "worker-host-a-12345", "45s", "BTC-USDT", "36000",
        "244.1 KB", "undecodable frame (2)", "1h00m",
    ):  # fmt: skip
        assert word in text, (word, text)
    assert "healthy" in rendered(snapshot(), [])
