"""Values as the journal reads them back: ``round_trip`` and its shortcut for plain values."""

from __future__ import annotations

import enum
import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from replay.errors import SerializationError
from replay.journal import round_trip


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


# Scalars at and past the edges of what JSON and orjson keep as they are.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.sampled_from([2**63 - 1, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),  # with surrogates, which orjson refuses
    st.sampled_from([Colour.RED, Name("n"), "\ud800", "é", -0.0]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.tuples(scalars, scalars),
    st.lists(st.lists(scalars, max_size=2), max_size=2),
    st.dictionaries(st.text(max_size=3), scalars, max_size=3),
)


def _slow(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return type(b) is list and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@given(values)
def test_round_trip_is_what_the_journal_reads_back(value: Any) -> None:
    try:
        expected = _slow(value)
    except TypeError:
        with pytest.raises(SerializationError):
            round_trip(value)
        return
    got = round_trip(value)
    assert _same(expected, got), (value, expected, got)
    if isinstance(value, list | dict):
        assert got is not value  # a copy: the step may change its own later


def test_round_trip_turns_what_json_changes() -> None:
    assert round_trip((1, "a")) == [1, "a"]
    assert round_trip(float("nan")) is None
    assert type(round_trip(Colour.RED)) is int
    assert type(round_trip(Name("n"))) is str
    with pytest.raises(SerializationError, match="64-bit"):
        round_trip(2**64)
    with pytest.raises(SerializationError, match="surrogates"):
        round_trip(["ok", "\ud800"])
