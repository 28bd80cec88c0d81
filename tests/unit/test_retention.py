"""The frame window: streams keep about ``redis.maxlen`` frames however many share an entry."""

from __future__ import annotations

from producer.retention import (
    MAX_BUCKETS,
    FrameWindow,
    GroupState,
    consumed_bound,
    parse_groups,
    parse_id,
)


def eid(ms: int, seq: int = 0) -> bytes:
    return b"%d-%d" % (ms, seq)


def test_whole_seconds_go_once_the_newer_ones_hold_max_frames() -> None:
    w = FrameWindow(max_frames=100)
    w.add("a", eid(10_000), 32)
    w.add("a", eid(10_500), 32)  # same second
    w.add("a", eid(11_200), 60)
    assert w.trims() == []  # 124 frames, but 60 alone are fewer than 100
    w.add("a", eid(12_999), 40)
    # second 11 and 12 hold 100: second 10 may go
    assert w.trims() == [("a", 11_000)] and w.frames("a") == 100
    assert w.trims() == []  # reported once
    w.add("a", eid(13_000, 5), 1)
    assert w.trims() == []  # seconds 11..13 hold 101; 12..13 only 41
    assert w.frames("a") == 101


def test_streams_are_counted_apart() -> None:
    w = FrameWindow(max_frames=10)
    for second in range(5):
        w.add("a", eid(second * 1000), 10)
        w.add("b", eid(second * 1000), 1)
    assert w.trims() == [("a", 4000)]
    assert (w.frames("a"), w.frames("b")) == (10, 5)


def test_a_clock_step_back_counts_in_the_last_second() -> None:
    w = FrameWindow(max_frames=5)
    w.add("a", eid(5_000), 3)
    w.add("a", eid(4_000), 3)  # an id from an earlier second (another producer's clock)
    w.add("a", eid(6_000), 5)
    assert w.trims() == [("a", 6_000)] and w.frames("a") == 5


def test_a_slow_stream_keeps_few_buckets_and_still_trims() -> None:
    """Two frames a second for three hours with a 5,000-frame window: the buckets merge as they
    grow past MAX_BUCKETS, and the window still holds the newest 5,000 frames (and at most one
    bucket more)."""
    w = FrameWindow(max_frames=5_000)
    seconds = 3 * 3600
    for second in range(seconds):
        w.add("a", eid(second * 1000), 2)
        assert w.buckets("a") <= MAX_BUCKETS
    [(_, trim_ms)] = w.trims()
    kept = 2 * (seconds - trim_ms // 1000)  # every second from trim_ms on
    assert kept == w.frames("a")
    assert 5_000 <= kept <= 5_000 + 2 * 4  # buckets are 4 s wide by now


def test_merged_buckets_lose_no_frames() -> None:
    w = FrameWindow(max_frames=1_000_000)
    for second in range(5_000):
        w.add("a", eid(second * 1000), 1)
    assert w.buckets("a") == 2_500  # 2-second buckets since the 4,097th second
    assert w.frames("a") == 5_000 and w.trims() == []


# -- the rule: never past what a group has not acked ------------------------------------------


def test_the_bound_is_the_oldest_entry_any_group_still_needs() -> None:
    done = GroupState("tickvault", pending=0, last_delivered=(900, 0), lag=0)
    behind = GroupState("tickvault-replay-1", 3, (500, 2), 10, oldest_pending=(450, 1))
    assert consumed_bound([done]) == (900, 0)
    assert consumed_bound([done, behind]) == (450, 1)
    assert consumed_bound([]) is None  # no group yet: nothing may go
    assert behind.behind == 13


def test_xinfo_groups_replies_are_read_by_name() -> None:
    reply = [
        [b"name", b"tickvault", b"consumers", 2, b"pending", 4, b"last-delivered-id",
         b"1700000000123-7", b"entries-read", 99, b"lag", 5],
        [b"name", b"other", b"consumers", 0, b"pending", 0, b"last-delivered-id", b"0-0",
         b"entries-read", None, b"lag", None],
    ]  # fmt: skip
    [a, b] = parse_groups(reply)
    assert (a.name, a.pending, a.last_delivered, a.lag) == ("tickvault", 4, (1700000000123, 7), 5)
    assert (b.name, b.lag, b.unacked_from) == ("other", None, (0, 0))
    assert parse_id("5") == (5, 0)
