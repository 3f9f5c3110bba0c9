"""Default ids of runs and events: UUID version 7, in the order they were made."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

import replay
from replay import _ids
from replay.testing import TestEnv

app = replay.App("ids", store="memory://")


@app.step()
async def one() -> int:
    return 1


@app.workflow
async def noop(ctx: replay.Context) -> int:
    return await one()


millis = st.integers(min_value=0, max_value=(1 << 48) - 1)
random_bits = st.integers(min_value=0, max_value=(1 << 80) - 1)


@given(millis, random_bits)
def test_an_id_is_a_version_7_uuid_holding_its_millisecond(ms: int, rand: int) -> None:
    made = _ids._id_at(ms, rand)
    parsed = uuid.UUID(hex=made)
    assert len(made) == 32 and parsed.hex == made
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == ms
    # 74 of the random bits, where RFC 9562 puts them: 12 after the version, 62 after the variant.
    assert (parsed.int >> 64) & 0xFFF == (rand >> 64) & 0xFFF
    assert parsed.int & ((1 << 62) - 1) == rand & ((1 << 62) - 1)


@given(millis, millis, random_bits, random_bits)
def test_ids_sort_by_their_millisecond(ms1: int, ms2: int, rand1: int, rand2: int) -> None:
    if ms1 < ms2:
        assert _ids._id_at(ms1, rand1) < _ids._id_at(ms2, rand2)


def test_ids_made_later_sort_later_and_never_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_700_000_000_000_000_000]

    def time_ns() -> int:
        now[0] += 1_000_000  # a millisecond between calls
        return now[0]

    monkeypatch.setattr(_ids.time, "time_ns", time_ns)
    made = [_ids.new_id() for _ in range(1000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)


def test_ids_of_one_millisecond_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ids.time, "time_ns", lambda: 1_700_000_000_000_000_000)
    made = {_ids.new_id() for _ in range(1000)}
    assert len(made) == 1000
    assert len({m[:12] for m in made}) == 1  # one millisecond: the same first 48 bits


async def test_runs_and_events_get_such_ids_by_default() -> None:
    async with TestEnv(app) as env:
        handle = await app.start(noop)
        event_id = await app.send_event("ping")
        await env.idle()
        forked = await app.fork(handle.run_id, 1)
        for made in (handle.run_id, event_id, forked.run_id):
            assert uuid.UUID(hex=made).version == 7, made
