"""Finding the refused frames of a refused batch by halving, not frame by frame."""

from __future__ import annotations

import math
from collections.abc import Sequence

import psycopg.errors as pg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import TransientError
from consumer.isolation import isolate


class Table:
    """A write that refuses any part holding a bad item, like one transaction would."""

    def __init__(self, bad: set[int]) -> None:
        self.bad = bad
        self.written: list[int] = []
        self.writes = 0

    def write(self, part: Sequence[int]) -> None:
        self.writes += 1
        refused = [i for i in part if i in self.bad]
        if refused:
            raise pg.ProgramLimitExceeded(f"index row size too large ({refused[0]})")
        self.written += part


def test_one_bad_frame_in_five_thousand_costs_a_few_dozen_writes() -> None:
    table = Table({1234})
    refused = isolate(list(range(5000)), table.write)
    assert [i for i, _ in refused] == [1234]
    assert isinstance(refused[0][1], pg.ProgramLimitExceeded)
    assert sorted(table.written) == [i for i in range(5000) if i != 1234]
    assert table.writes <= 2 * math.ceil(math.log2(5000)) + 2  # not 5,000


@settings(max_examples=200, database=None, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_exactly_the_bad_ones_are_refused_and_the_rest_written(n: int, data: st.DataObject) -> None:
    bad = data.draw(st.sets(st.integers(0, n - 1), max_size=n))
    table = Table(bad)
    refused = isolate(list(range(n)), table.write)
    assert sorted(i for i, _ in refused) == sorted(bad)
    assert sorted(table.written) == sorted(set(range(n)) - bad)


def test_other_errors_are_not_taken_for_bad_data() -> None:
    def down(part: Sequence[int]) -> None:
        raise TransientError("postgres went away")

    with pytest.raises(TransientError):
        isolate([1, 2, 3], down)

    def revoked(part: Sequence[int]) -> None:
        raise pg.InsufficientPrivilege("permission denied for table trades")

    with pytest.raises(pg.InsufficientPrivilege):  # fatal: never dead-letter on it
        isolate([1, 2, 3, 4], revoked)
