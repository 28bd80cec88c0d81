"""consumer.flags: abnormal trades and quotes are flagged (pure; times come from the rows)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import FlagsSettings
from common.errors import ConfigError
from common.records import Quote, Trade
from consumer.flags import Flag, Flagger, FlagSettings, flag_names, flagger_from

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
SECOND = 1_000_000_000
HOUR = 3600 * SECOND
PRICE = int(Flag.PRICE_OUTLIER)
SIZE = int(Flag.SIZE_OUTLIER)


class Tape:
    """Trades of one (exchange, symbol) at a fixed pace, through one flagger."""

    def __init__(
        self,
        flagger: Flagger | None = None,
        *,
        exchange: str = "binance",
        symbol: str = "BTC-USDT",
        every_ns: int = MS,
    ) -> None:
        self.flagger = flagger or Flagger()
        self.exchange, self.symbol, self.every_ns = exchange, symbol, every_ns
        self.ts = T0
        self.n = 0

    def trade(self, price: object, amount: object = "1", *, after_ns: int | None = None) -> int:
        self.ts += self.every_ns if after_ns is None else after_ns
        self.n += 1
        t = Trade(
            self.exchange, self.symbol, str(self.n), str(price), str(amount), "buy",
            self.ts, self.ts + 2 * MS,
        )  # fmt: skip
        return self.flagger.trade(t)

    def prices(self, prices: Iterable[object]) -> list[int]:
        return [self.trade(p) for p in prices]


def steady(n: int = 40, level: float = 100.0) -> list[str]:
    """``n`` prices within +-0.1 % of ``level``."""
    return [f"{level * (1 + 0.001 * ((i % 3) - 1)):.4f}" for i in range(n)]


def quote(bid: str, ask: str) -> Quote:
    return Quote("binance", "BTC-USDT", "1", bid, "1", ask, "1", T0, T0)


# -- price: spikes, moves that hold, normal moves ----------------------------------------------


@pytest.mark.parametrize("spike", [["150"], ["150", "152"], ["60"], ["61", "60.5"]])
def test_a_spike_that_reverts_is_flagged_and_the_trades_after_it_are_clean(
    spike: list[str],
) -> None:
    tape = Tape()
    assert tape.prices(steady()) == [0] * 40
    assert tape.prices(spike) == [PRICE] * len(spike)
    assert tape.prices(steady(20)) == [0] * 20  # the spike did not move the reference


def test_outliers_stay_out_of_the_windows() -> None:
    tape = Tape(Flagger(FlagSettings(window=4, min_history=4)))
    assert tape.prices(["100"] * 4) == [0] * 4
    # two spikes in a four-trade window would make 150 the median, were they added
    assert tape.prices(["150", "152"]) == [PRICE, PRICE]
    assert tape.trade("100") == 0
    assert [tape.trade("100", "100") for _ in range(3)] == [SIZE] * 3  # sizes likewise
    assert tape.trade("100", "1") == 0


def test_outliers_on_alternating_sides_never_rebase() -> None:
    tape = Tape()
    tape.prices(steady())
    assert tape.prices(["150", "60"] * 5) == [PRICE] * 10
    assert tape.prices(steady(5)) == [0] * 5


@pytest.mark.parametrize("rebase_after", [1, 3, 5])
@pytest.mark.parametrize("level", [70.0, 140.0, 0.5, 20_000.0])  # crashes and rallies
def test_a_move_that_holds_is_flagged_only_at_its_start(rebase_after: int, level: float) -> None:
    tape = Tape(Flagger(FlagSettings(rebase_after=rebase_after)))
    tape.prices(steady())
    flags = tape.prices(steady(30, level))
    assert flags == [PRICE] * rebase_after + [0] * (30 - rebase_after)
    assert tape.prices(steady(10, level * 1.02)) == [0] * 10  # and moves on from the new level


def test_a_crash_that_keeps_falling_is_flagged_at_each_leg_only() -> None:
    tape = Tape()
    tape.prices(steady())
    flags = tape.prices(steady(20, 70.0) + steady(20, 45.0))
    assert flags == [PRICE] * 3 + [0] * 17 + [PRICE] * 3 + [0] * 17


@pytest.mark.parametrize("seed", range(5))
def test_a_random_walk_with_small_steps_is_never_flagged(seed: int) -> None:
    rng = random.Random(seed)
    tape = Tape()
    price = 100.0
    for _ in range(10_000):
        price *= 1 + rng.choice((-0.001, 0.001))
        assert tape.trade(f"{price:.6f}", f"{rng.uniform(0.01, 2.0):.5f}") == 0


@pytest.mark.parametrize("end", [1.2, 1 / 1.2])
def test_a_slow_drift_is_never_flagged(end: float) -> None:
    tape = Tape()
    prices = [f"{100 * end ** (i / 1000):.4f}" for i in range(1000)]
    assert tape.prices(prices) == [0] * 1000


def test_a_volatile_symbol_gets_a_wider_band() -> None:
    rng = random.Random(7)
    tape = Tape()
    # prices spread over 90..110: the interquartile range is ~10, so the band is ~20 %, not 10 %
    tape.prices(f"{rng.uniform(90, 110):.2f}" for _ in range(64))
    assert tape.trade("115") == 0
    assert tape.trade("85") == 0
    assert tape.trade("150") == PRICE


# -- illiquid symbols ---------------------------------------------------------------------------


def test_an_illiquid_symbol_may_move_more_between_trades() -> None:
    tape = Tape(every_ns=HOUR)
    assert tape.prices(steady(20)) == [0] * 20
    # moves of 15 % an hour apart: the band is 10 % * sqrt(60) = 77 %
    assert tape.prices(steady(20, 115.0) + steady(20, 132.25) + steady(20, 112.4)) == [0] * 60
    assert tape.prices(["100", "115"] * 10) == [0] * 20


def test_the_same_move_within_a_second_is_flagged() -> None:
    tape = Tape(every_ns=HOUR)
    tape.prices(steady(20))
    assert tape.trade("115", after_ns=SECOND) == PRICE
    assert tape.trade("100", after_ns=HOUR) == 0


def test_the_band_widens_with_the_square_root_of_the_gap() -> None:
    def flagged(after_ns: int, price: str) -> bool:
        tape = Tape()
        tape.prices(steady())
        return tape.trade(price, after_ns=after_ns) == PRICE

    # 4 minutes: 10 % * sqrt(4) = 20 %
    assert not flagged(4 * 60 * SECOND, "119")
    assert flagged(4 * 60 * SECOND, "121")
    assert flagged(60 * SECOND, "111")  # below a minute, the base band
    assert flagged(-HOUR, "111")  # out of order: no widening


# -- size ------------------------------------------------------------------------------------


def test_a_fat_finger_size_is_flagged_and_stays_out_of_the_size_window() -> None:
    rng = random.Random(3)
    tape = Tape()
    for _ in range(40):
        assert tape.trade("100", f"{rng.uniform(0.5, 1.5):.4f}") == 0
    assert tape.trade("100", "40") == 0  # 40 x the median
    assert tape.trade("100", "100") == SIZE
    assert tape.trade("100", "80") == SIZE  # the 100 did not raise the median
    assert tape.trade("150", "100") == PRICE | SIZE
    assert tape.trade("100", "1") == 0


def test_the_first_min_history_trades_get_no_price_or_size_flag() -> None:
    tape = Tape(Flagger(FlagSettings(min_history=16)))
    flags = [tape.trade(p, a) for p, a in [("100", "1")] * 15 + [("1000", "100000")]]
    assert flags == [0] * 16
    assert tape.trade("1000", "100000") == PRICE | SIZE  # the 17th is judged against 16


def test_unusable_values_get_no_verdict_and_do_not_count() -> None:
    tape = Tape(Flagger(FlagSettings(min_history=4)))
    tape.prices(["100"] * 3)
    for bad in ("0", "-5", "nan", "inf", "1e999", "abc", ""):
        assert tape.trade(bad, bad) == 0
    assert tape.trade("1000") == 0  # the 4th usable price: still no verdict
    assert tape.prices(["100"] * 4) == [0] * 4
    assert tape.trade("1000") == PRICE


# -- times ---------------------------------------------------------------------------------


def test_late_and_early_thresholds() -> None:
    f = Flagger()

    def flags(ts: int, recv: int) -> int:
        return f.trade(Trade("okx", "BTC-USDT", "1", "100", "1", None, ts, recv))

    assert flags(T0, T0 + 5 * SECOND) == 0
    assert flags(T0, T0 + 5 * SECOND + 1) == Flag.LATE
    assert flags(T0 + SECOND, T0) == 0
    assert flags(T0 + SECOND + 1, T0) == Flag.EARLY
    g = Flagger(FlagSettings(late_s=0.5, early_s=0.25))
    assert g.trade(Trade("okx", "X", "1", "1", "1", None, T0, T0 + 600 * MS)) == Flag.LATE
    assert g.trade(Trade("okx", "X", "1", "1", "1", None, T0 + 300 * MS, T0)) == Flag.EARLY


# -- quotes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bid", "ask", "expected"),
    [
        ("100.1", "100.2", 0),
        ("100.3", "100.2", Flag.CROSSED),
        ("100.1", "100.10", Flag.LOCKED),
        ("95", "105", Flag.WIDE_SPREAD),  # 10 % of the mid
        ("97.6", "102.5", 0),  # 4.9 %
        ("97.4", "102.5", Flag.WIDE_SPREAD),  # 5.1 %
        # equal as floats, not as decimals
        ("1.00000000000000000001", "1.00000000000000000002", 0),
        ("1.00000000000000000002", "1.00000000000000000001", Flag.CROSSED),
        ("0", "100", 0),  # unusable prices: no verdict
        ("nan", "100", 0),
        ("100", "abc", 0),
        ("1e999", "1e999", 0),
    ],
)
def test_quotes(bid: str, ask: str, expected: int) -> None:
    assert Flagger().quote(quote(bid, ask)) == expected


# -- state ---------------------------------------------------------------------------------


def test_symbols_are_independent() -> None:
    f = Flagger()
    tapes = [
        Tape(f, exchange="binance", symbol="BTC-USDT"),
        Tape(f, exchange="upbit", symbol="BTC-USDT"),  # same symbol elsewhere: another level
        Tape(f, exchange="binance", symbol="ETH-USDT"),
    ]
    levels = [100.0, 140_000_000.0, 3_000.0]
    for i in range(40):
        for tape, level in zip(tapes, levels, strict=True):
            assert tape.trade(steady(3, level)[i % 3]) == 0
    assert tapes[0].trade("150") == PRICE
    assert tapes[1].trade(f"{levels[1]:.0f}") == 0
    assert tapes[2].trade("3000") == 0
    assert f.tracked == 3


def test_max_symbols_forgets_the_least_recently_touched() -> None:
    f = Flagger(FlagSettings(max_symbols=2))
    a, b, c = (Tape(f, symbol=s) for s in ("A", "B", "C"))
    a.prices(steady())
    b.prices(steady())
    a.trade("100")  # A is the most recently touched: B goes when C comes
    c.prices(steady())
    assert f.tracked == 2
    assert a.trade("150") == PRICE  # A kept its history
    assert b.trade("150") == 0  # B starts again: no verdict before min_history


def test_the_state_is_bounded() -> None:
    f = Flagger(FlagSettings(max_symbols=100))
    for i in range(1000):
        f.trade(Trade("binance", f"S{i}", "1", "1", "1", None, T0, T0))
        assert f.tracked == min(i + 1, 100)


# -- settings and integration --------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"window": 0},
        {"rebase_after": 0},
        {"max_symbols": 0},
        {"min_history": -1},
        {"price_band": 0.0},
        {"size_factor": math.nan},
        {"spread_band": math.inf},
    ],
)
def test_settings_out_of_range_are_config_errors(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=f"flags.{next(iter(bad))}"):
        FlagSettings(**bad)  # type: ignore[arg-type]


def test_min_history_zero_judges_from_the_second_trade() -> None:
    tape = Tape(Flagger(FlagSettings(min_history=0)))
    assert tape.trade("100") == 0
    assert tape.trade("1000") == PRICE


def test_flagger_from_the_configuration() -> None:
    assert flagger_from(FlagsSettings(enabled=False)) is None
    f = flagger_from(FlagsSettings(window=8, price_band=0.2))
    assert f is not None
    assert f.settings == FlagSettings(window=8, price_band=0.2)


def test_flag_names() -> None:
    assert list(flag_names(0)) == []
    assert list(flag_names(int(Flag.PRICE_OUTLIER | Flag.LATE))) == ["price_outlier", "late"]
    assert len(list(flag_names(127))) == 7


# -- never raises --------------------------------------------------------------------------

_TEXT = st.one_of(
    st.sampled_from(["0", "0.0", "1e-8", "1E+30", "1e400", "1e-400", "-1", "nan", "inf", ""]),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.floats().map(repr),
    st.integers(min_value=0, max_value=10**40).map(str),
    st.text(max_size=12),
)
_TIME = st.integers(min_value=-(2**70), max_value=2**70)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 3), _TEXT, _TEXT, _TIME, _TIME), min_size=1, max_size=60
    ),
    quotes=st.lists(st.tuples(_TEXT, _TEXT), max_size=10),
)
def test_any_rows_never_raise(
    rows: list[tuple[int, str, str, int, int]], quotes: list[tuple[str, str]]
) -> None:
    f = Flagger(FlagSettings(window=4, min_history=2, rebase_after=2, max_symbols=3))
    for symbol, price, amount, ts, recv in rows:
        bits = f.trade(Trade("binance", f"S{symbol}", "1", price, amount, None, ts, recv))
        assert type(bits) is int
        assert 0 <= bits <= 127
        assert not bits & (Flag.CROSSED | Flag.LOCKED | Flag.WIDE_SPREAD)
    for bid, ask in quotes:
        bits = f.quote(quote(bid, ask))
        assert bits in (0, Flag.CROSSED, Flag.LOCKED, Flag.WIDE_SPREAD)
    assert f.tracked <= 3


@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from(["100", "101", "99", "150", "40"]),
            st.sampled_from(["1", "2", "500"]),
        ),
        min_size=1,
        max_size=80,
    ),
)
def test_the_last_symbol_kept_at_hand_gives_the_flags_of_a_lookup_every_trade(
    rows: list[tuple[int, str, str]],
) -> None:
    # the shortcut to the last trade's symbol state must not change a verdict, evictions too
    settings = FlagSettings(window=4, min_history=2, rebase_after=2, max_symbols=2)
    fast, slow = Flagger(settings), Flagger(settings)
    for symbol, price, amount in rows:
        t = Trade("binance", f"S{symbol}", "1", price, amount, None, T0, T0)
        slow._last = None  # every trade looks its symbol up
        assert fast.trade(t) == slow.trade(t)
        assert fast.tracked == slow.tracked


def test_the_processor_keeps_flagged_rows_with_their_bits_and_counts_each_check() -> None:
    from common.metrics import Metrics
    from consumer.process import Processor

    metrics = Metrics("consumer")

    def count(bits: int, exchange: str) -> None:
        for name in flag_names(bits):
            metrics.inc(f"flagged:{name}:{exchange}")

    proc = Processor(
        subscribed={"binance": frozenset({"BTC-USDT"})},
        symbol_maps={("binance", ""): {"BTCUSDT": "BTC-USDT"}},
        max_future_skew_ns=10**10,
        flagger=Flagger(FlagSettings(min_history=4)),
        on_flag=count,
    )

    def frame(i: int, price: str, amount: str = "0.5") -> dict[bytes, bytes]:
        body = (
            b'{"e":"trade","E":1764500000000,"s":"BTCUSDT","t":%d,"p":"%s","q":"%s",'
            b'"T":1764500000000,"m":true,"M":true}' % (i, price.encode(), amount.encode())
        )
        return {b"f": body, b"k": b"t", b"e": b"binance", b"x": b"", b"c": b"c", b"n": b"1",
                b"t": b"1764500000001000000"}  # fmt: skip

    outs = [proc.process(f"{i}-0", frame(i, "100.0")) for i in range(1, 9)]
    outs.append(proc.process("9-0", frame(9, "50.0")))  # a spike
    outs.append(proc.process("10-0", frame(10, "100.1", "900")))  # a fat finger
    assert all(o.dead is None for o in outs)
    assert [o.trades[0].flags for o in outs] == [0] * 8 + [Flag.PRICE_OUTLIER, Flag.SIZE_OUTLIER]
    assert outs[8].trades[0].price == "50.0"  # kept as it came, flagged
    text = metrics.prometheus()
    assert 'tickvault_rows_flagged_total{check="price_outlier",exchange="binance"' in text
    assert 'tickvault_rows_flagged_total{check="size_outlier",exchange="binance"' in text
