"""The silence rule (``producer.liveness``) on a fake clock: a busy feed is replaced after seconds
of silence, a new one after the ceiling, a heartbeat venue after its heartbeat bound; a quiet
feed (a frame a minute, or two trades an hour) is not reconnected in a loop. Simulated days
take milliseconds: the rule is pure, time is an argument."""

from __future__ import annotations

import itertools
import random

import pytest

from producer.liveness import Liveness, LivenessRule

RULE = LivenessRule()  # production defaults: floor 5 s, ceiling 120 s, x4 the q90 gap
TICK = RULE.tick_s


def poisson(rng: random.Random, mean_s: float, until: float, start: float = 0.0) -> list[float]:
    times, t = [], start
    while t < until:
        t += rng.expovariate(1 / mean_s)
        times.append(t)
    return times


def simulate(
    rule: LivenessRule,
    data: list[float],
    until: float,
    *,
    dead_from: float | None = None,
    acks: int = 1,
    reconnect_s: float = 0.5,
) -> list[tuple[float, float]]:
    """Run a feed session on a fake clock: each connection gets an ack 50 ms after opening
    (``acks`` frames, as Binance answers a SUBSCRIBE) and every data frame of ``data`` while it
    is open; from ``dead_from`` on, connections open before it deliver nothing (a connection
    that answers pings, nothing else). Returns (time, silence) of each replacement."""
    feed = Liveness(rule)
    tick = rule.tick_s
    t, i, replaced = 0.0, 0, []
    while t < until:
        opened = t
        watch = feed.watch(t, setup_frames=acks + 1, settle_s=2.0)
        frames = 0
        acked = False
        while True:
            t += tick
            if not acked and t >= opened + 0.05:
                frames, acked = frames + acks, True
            while i < len(data) and data[i] <= t:
                dead = dead_from is not None and opened < dead_from <= data[i]
                if data[i] >= opened and not dead:
                    frames += 1
                i += 1
            watch.observe(t, frames)
            if watch.remaining(t) <= 0:
                replaced.append((t, watch.silence(t)))
                watch.give_up()
                break
            if t >= until:
                return replaced
        t += reconnect_s
    return replaced


def test_a_busy_feed_is_replaced_after_seconds_of_silence() -> None:
    rng = random.Random(7)
    data = poisson(rng, 0.05, 1200)  # 20 frames a second
    [(at, silence), *_] = simulate(RULE, data, 700, dead_from=600)
    assert 600 + RULE.floor_s <= at <= 600 + RULE.floor_s + 2 * TICK
    assert silence == pytest.approx(RULE.floor_s, abs=TICK)


@pytest.mark.parametrize("mean_s", [1.0, 5.0, 20.0])
def test_a_silent_connection_is_replaced_within_k_times_the_observed_gap(mean_s: float) -> None:
    """The documented bound for a feed that has been delivering: max(floor, 4 x q90 gap),
    never more than the ceiling (plus a tick of sampling)."""
    rng = random.Random(int(mean_s))
    data = poisson(rng, mean_s, 8000)
    replaced = simulate(RULE, data, 7600, dead_from=7200)
    [(at, silence)] = [r for r in replaced if r[0] > 7200][:1]
    q90 = sorted(b - a for a, b in itertools.pairwise(data))[int(0.9 * len(data))]
    bound = min(max(RULE.floor_s, RULE.factor * max(q90, TICK)), RULE.ceiling_s)
    assert silence <= bound * 1.3 + TICK  # the window's q90 differs a little from the whole run
    assert at - 7200 <= RULE.ceiling_s + 2 * TICK


def test_a_connection_that_only_acks_is_replaced_at_the_ceiling() -> None:
    """A new feed, nothing known yet: subscribed, acked, then nothing (the issue's Binance
    connection that answers pings and delivers nothing)."""
    [(_at, silence), *_] = simulate(RULE, [], 1000)
    assert silence == pytest.approx(RULE.ceiling_s, abs=TICK)


def test_acks_keep_the_connection_alive_but_are_not_data() -> None:
    feed = Liveness(RULE)
    watch = feed.watch(0.0, setup_frames=2, settle_s=5.0)
    watch.observe(1.0, 1)  # the ack
    assert watch.last_frame == 1.0
    assert feed.last_data is None and feed.strikes == 0
    feed.strikes = 3
    watch.observe(2.0, 2)  # within the settle time and the setup count: still not data
    assert feed.strikes == 3
    watch.observe(3.0, 3)  # past the setup count: data
    assert feed.strikes == 2 and feed.last_data == 3.0
    late = feed.watch(10.0, setup_frames=2, settle_s=5.0)
    late.observe(20.0, 1)  # a first frame after the settle time is data
    assert feed.last_data == 20.0


def test_heartbeat_venues_are_bounded_by_the_heartbeat() -> None:
    """Coinbase subscribes ``heartbeats`` (one a second): 10 s even for a new feed; a busy one
    is replaced after the floor."""
    rule = LivenessRule(heartbeat_s=10.0)
    feed = Liveness(rule)
    assert feed.threshold(0.0) == 10.0
    watch = feed.watch(0.0)
    for n in range(1, 60):
        watch.observe(float(n), n)
    assert feed.threshold(60.0) == rule.floor_s
    feed.strikes = 5  # earlier connections replaced: never past the heartbeat bound
    assert feed.threshold(60.0) == 10.0


def test_okx_style_pongs_every_20_s_give_the_venue_bound() -> None:
    rule = LivenessRule(heartbeat_s=45.0)
    feed = Liveness(rule)
    watch = feed.watch(0.0)
    for n in range(1, 20):
        watch.observe(20.0 * n, n)  # only pongs: a quiet instrument
    assert feed.threshold(400.0) == 45.0  # min(4 x 20 s, ceiling, 45 s)


def test_a_configured_threshold_wins() -> None:
    rule = LivenessRule(fixed_s=30.0, heartbeat_s=10.0)
    feed = Liveness(rule)
    feed.strikes = 4
    assert feed.threshold(0.0) == 30.0
    assert rule.tick_s == 1.0
    assert LivenessRule(fixed_s=0.2).tick_s == pytest.approx(0.05)


def test_connections_replaced_without_data_double_the_threshold() -> None:
    feed = Liveness(RULE)
    thresholds = []
    for _ in range(7):
        thresholds.append(feed.threshold(0.0))
        feed.silenced()
    assert thresholds == [120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0]
    watch = feed.watch(0.0, setup_frames=0)
    for n in range(1, 7):
        watch.observe(float(n), n)  # data again: one strike less per sample with data
        assert feed.strikes == 7 - n


def test_one_long_silence_is_not_a_pattern_two_are() -> None:
    """A busy feed that paused once for 10 minutes (a venue outage) keeps its seconds-long
    threshold; one that has been silent past the ceiling twice gets 1.5x the shorter of the two;
    silences below the ceiling never raise it past the ceiling."""
    feed = Liveness(RULE)
    watch = feed.watch(0.0)
    n, t = 0, 0.0
    for _ in range(200):
        t, n = t + 1.0, n + 1
        watch.observe(t, n)
    t, n = t + 600.0, n + 1
    watch.observe(t, n)  # one 600 s silence that ended in data
    for _ in range(200):
        t, n = t + 1.0, n + 1
        watch.observe(t, n)
    assert feed.threshold(t) == RULE.floor_s
    for _ in range(5):
        t, n = t + 100.0, n + 1
        watch.observe(t, n)  # below the ceiling: no evidence of a quiet feed
    assert feed.threshold(t) == RULE.floor_s  # (and would be at most the ceiling)
    t, n = t + 300.0, n + 1
    watch.observe(t, n)  # a second one past the ceiling, shorter
    assert feed.threshold(t) == pytest.approx(1.5 * 300.0)
    assert feed.threshold(t + RULE.quiet_memory_s + 1) == RULE.floor_s  # forgotten in 6 h


def test_a_frame_a_minute_is_never_replaced() -> None:
    data = [60.0 * k for k in range(1, 24 * 60)]
    assert simulate(RULE, data, 24 * 3600) == []


def test_a_frame_a_minute_at_random_is_replaced_rarely() -> None:
    """Poisson arrivals, one a minute on average: gaps past 120 s are 13% of them, yet after
    the feed has shown them the threshold follows (a few a day, not a loop)."""
    data = poisson(random.Random(1), 60.0, 24 * 3600)
    replaced = simulate(RULE, data, 24 * 3600)
    assert len(replaced) <= 12
    assert all(
        sum(1 for t, _ in replaced if h * 3600 <= t < (h + 1) * 3600) <= 3 for h in range(24)
    )


@pytest.mark.parametrize("burst", [1, 3])
def test_two_trades_an_hour_do_not_reconnect_in_a_loop(burst: int) -> None:
    """An illiquid pair (trades at random, two an hour, alone or in bursts of three): a fixed
    120 s would reconnect 30 times an hour; the rule reconnects a few times in its first hours,
    then well under once an hour."""
    rng = random.Random(3)
    data = sorted(t + 0.3 * j for t in poisson(rng, 1800.0, 48 * 3600) for j in range(burst))
    replaced = simulate(RULE, data, 48 * 3600)
    per_hour = [0] * 48
    for at, _ in replaced:
        per_hour[min(47, int(at // 3600))] += 1
    assert max(per_hour) <= 8  # learning, in the first hours: 120 + 240 + 480 ... s
    assert sum(per_hour[6:]) / 42 < 1.0  # then rarely (a fixed 120 s: 30 an hour)


def test_producer_silence_s_reaches_every_session_and_is_checked() -> None:
    from common.config import settings_from_mapping
    from common.errors import ConfigError
    from common.metrics import Metrics
    from producer.__main__ import build_sessions
    from producer.publisher import Publisher
    from producer.wire import RedisWire

    feeds = [
        {"exchange": "binance", "symbols": ["BTC-USDT"]},
        {"exchange": "okx", "symbols": ["BTC-USDT"]},
    ]
    metrics = Metrics("producer")
    publisher = Publisher(
        RedisWire("redis://127.0.0.1:1/0"), buffer_frames=10, pipeline_max=10, metrics=metrics
    )
    derived = build_sessions(settings_from_mapping({"feeds": feeds}, {}), publisher, metrics)
    rules = {s.venue.exchange: s.liveness.rule for s in derived}
    assert rules["binance"].fixed_s is None and rules["binance"].heartbeat_s is None
    assert rules["okx"].fixed_s is None and rules["okx"].heartbeat_s == 45.0
    fixed = settings_from_mapping({"producer": {"silence_s": 30}, "feeds": feeds}, {})
    assert {s.liveness.rule.fixed_s for s in build_sessions(fixed, publisher, metrics)} == {30.0}
    for bad in (-1, float("nan")):
        with pytest.raises(ConfigError, match=r"producer\.silence_s"):
            settings_from_mapping({"producer": {"silence_s": bad}}, {})
