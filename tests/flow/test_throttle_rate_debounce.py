"""Throttle queues starts, RateLimit drops them, Debounce folds them into one run."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

import replay
from replay.testing import TestEnv

MINUTE = timedelta(minutes=1)


async def test_throttle_begins_at_most_limit_per_period_and_queues_the_rest(
    env_for: Callable[..., TestEnv],
) -> None:
    app = replay.App("throttle", store="memory://")
    began: list[tuple[int, float]] = []

    @app.step()
    def begin(i: int) -> None:
        began.append((i, app.clock.now()))

    @app.workflow(throttle=replay.Throttle(2, MINUTE))
    async def throttled(ctx: replay.Context, i: int) -> int:
        await begin(i)
        return i

    async with env_for(app) as env:
        t0 = env.now()
        runs = [await app.start(throttled, i) for i in range(5)]
        await env.idle()
        assert [await r.status() for r in runs] == ["completed"] * 2 + ["pending"] * 3
        await env.advance(MINUTE)
        assert [await r.status() for r in runs] == ["completed"] * 4 + ["pending"]
        await env.advance(MINUTE)
        assert [await r.result() for r in runs] == list(range(5))  # none dropped, in order
    offsets = [round(at - t0) for _, at in began]
    assert offsets == [0, 0, 60, 60, 120]
    # In any window of one period, at most two begins.
    for _, at in began:
        assert sum(1 for _, other in began if at <= other < at + 60) <= 2


async def test_throttle_keys_are_independent(env_for: Callable[..., TestEnv]) -> None:
    app = replay.App("throttle-key", store="memory://")

    @app.workflow(throttle=replay.Throttle(1, MINUTE, key=lambda user: user))
    async def per_user(ctx: replay.Context, user: str) -> str:
        return user

    async with env_for(app) as env:
        runs = [await app.start(per_user, u) for u in ("a", "b", "a")]
        await env.idle()
        assert [await r.status() for r in runs] == ["completed", "completed", "pending"]


async def test_rate_limit_drops_starts_beyond_the_limit(env_for: Callable[..., TestEnv]) -> None:
    app = replay.App("rate", store="memory://")
    ran: list[int] = []

    @app.step()
    def record(i: int) -> None:
        ran.append(i)

    @app.workflow(rate_limit=replay.RateLimit(3, MINUTE))
    async def limited(ctx: replay.Context, i: int) -> None:
        await record(i)

    async with env_for(app) as env:
        runs = [await app.start(limited, i, run_id=f"r{i}") for i in range(10)]
        await env.idle()
        assert [await r.status() for r in runs] == ["completed"] * 3 + ["cancelled"] * 7
        with pytest.raises(replay.Cancelled, match="rate limit of 3"):
            await runs[5].result()
        again = await app.start(limited, 5, run_id="r5")  # idempotent: the same dropped run
        assert await again.status() == "cancelled"
        await env.advance(MINUTE)
        late = await app.start(limited, 10)
        await env.idle()
        assert await late.status() == "completed"  # a new window
    assert sorted(ran) == [0, 1, 2, 10]  # sync steps run in threads: any order


async def test_fifty_quick_starts_under_debounce_start_one_run_with_the_last_input(
    env_for: Callable[..., TestEnv],
) -> None:
    app = replay.App("debounce", store="memory://")
    calls: list[int] = []

    @app.step()
    def handle(n: int) -> None:
        calls.append(n)

    @app.workflow(debounce=replay.Debounce(timedelta(seconds=5), key=lambda doc, n: doc))
    async def reindex(ctx: replay.Context, doc: str, n: int) -> int:
        await handle(n)
        return n

    async with env_for(app) as env:
        handles = []
        for n in range(50):
            handles.append(await app.start(reindex, "doc-1", n))
            await env.advance(timedelta(seconds=1))  # never 5 s of quiet
        other = await app.start(reindex, "doc-2", 99)
        assert len({h.run_id for h in handles}) == 1
        assert await handles[0].status() == "pending"
        await env.advance(timedelta(seconds=5))
        assert await handles[-1].result() == 49
        assert await other.result() == 99
        assert len(await app.list_runs(workflow="reindex")) == 2
    assert sorted(calls) == [49, 99]


async def test_debounce_timeout_caps_the_delay(env_for: Callable[..., TestEnv]) -> None:
    app = replay.App("debounce-cap", store="memory://")

    @app.step()
    def began_at() -> float:
        return app.clock.now()

    @app.workflow(debounce=replay.Debounce(timedelta(seconds=5), timeout=timedelta(seconds=20)))
    async def flush(ctx: replay.Context, n: int) -> float:
        return await began_at()

    async with env_for(app) as env:
        t0 = env.now()
        first = await app.start(flush, 0)
        for n in range(1, 30):
            await env.advance(timedelta(seconds=2))
            await app.start(flush, n)
        began = await first.result()
        assert began - t0 == pytest.approx(20)
        # Starts after a run began make a new debounced run, capped the same way:
        # the start at t0 + 20 (just after the first run began) opens a run that begins at t0 + 40.
        runs = await app.list_runs(workflow="flush")
        assert sorted(r.status for r in runs) == ["completed", "completed", "pending"]
        assert sorted(r.result - t0 for r in runs if r.result) == pytest.approx([20, 40])


def test_flow_options_are_checked_when_the_workflow_is_registered() -> None:
    app = replay.App("checks", store="memory://")
    with pytest.raises(ValueError, match="limit must be an int >= 1"):
        replay.Concurrency(0)
    with pytest.raises(ValueError, match="period must be a positive timedelta"):
        replay.Throttle(1, timedelta(0))
    with pytest.raises(TypeError, match="key must be a function"):
        replay.RateLimit(1, MINUTE, key="user")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"concurrency must be a replay.Concurrency"):

        @app.workflow(concurrency=3)  # type: ignore[call-overload]
        async def wf(ctx: replay.Context) -> None: ...

    with pytest.raises(TypeError, match="priority must be an int"):

        @app.workflow(priority="high")  # type: ignore[call-overload]
        async def wf2(ctx: replay.Context) -> None: ...

    assert app.workflows == {}


async def test_a_run_waiting_to_begin_is_cancelled_at_once(env_for: Callable[..., TestEnv]) -> None:
    app = replay.App("cancel-waiting", store="memory://")

    @app.workflow(throttle=replay.Throttle(1, MINUTE))
    async def slow_lane(ctx: replay.Context, n: int) -> int:
        return n

    async with env_for(app) as env:
        first = await app.start(slow_lane, 1)
        queued = await app.start(slow_lane, 2)
        await env.idle()
        assert await queued.status() == "pending"
        await queued.cancel()
        assert await queued.status() == "cancelled"  # no worker had to take it
        with pytest.raises(replay.Cancelled):
            await queued.result()
        assert await first.result() == 1
