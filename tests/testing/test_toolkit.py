"""The testing toolkit users get: mocks, step records, the pytest fixture, strategies."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import replay
import replay.testing
from replay.testing import TestEnv, explore_crashes, strategies

app = replay.App("toolkit", store="memory://")
real_charges: list[str] = []


@app.step(retry=replay.RetryPolicy(max_attempts=2, initial_interval=timedelta(seconds=1), jitter=False))
async def charge(order_id: str) -> str:
    real_charges.append(order_id)
    return f"real-{order_id}"


@app.step()
def ship(order_id: str) -> str:
    return f"shipped {order_id}"


@app.workflow()
async def order(ctx: replay.Context, order_id: str) -> str:
    try:
        receipt = await charge(order_id)
    except replay.StepFailed as exc:
        return f"declined: {exc.message}"
    await ctx.sleep(timedelta(hours=1))
    return f"{receipt}, {await ctx.step(ship, order_id)}"


async def test_mock_step_by_function_or_name_records_calls() -> None:
    real_charges.clear()
    async with TestEnv(app) as env:
        charged = env.mock_step(charge, returns="fake")
        shipped = env.mock_step("ship", side_effect=lambda oid: f"mocked {oid}")
        run = await app.start(order, "o-1")
        await env.advance(timedelta(hours=1))
        assert await run.result() == "fake, mocked o-1"
        assert charged.calls == [(["o-1"], {})] and shipped.call_count == 1
        steps = await env.steps(run)
        assert [(s.name, s.status, s.result) for s in steps] == [
            ("charge", "completed", "fake"),
            ("ship", "completed", "mocked o-1"),
        ]
    assert real_charges == []


async def test_a_mock_that_raises_is_retried_then_fails_the_step() -> None:
    async with TestEnv(app) as env:
        mock = env.mock_step(charge, raises=ConnectionError("card network down"))
        run = await app.start(order, "o-2")
        await env.advance(timedelta(seconds=1))
        assert await run.result() == "declined: card network down"
        assert mock.call_count == 2
        [step] = await env.steps(run)
        assert (step.status, step.attempts, step.error) == ("failed", 2, "ConnectionError: card network down")


async def test_mocks_survive_a_crash() -> None:
    async with TestEnv(app) as env:
        env.mock_step(charge, returns="fake")
        run = await app.start(order, "o-3")
        await env.idle()
        await env.crash()
        await env.advance(timedelta(hours=1))
        assert (await run.result()).startswith("fake")


def test_mock_step_needs_exactly_one_outcome() -> None:
    env = TestEnv(app)
    with pytest.raises(TypeError, match="exactly one"):
        env.mock_step(charge)
    with pytest.raises(TypeError, match="exactly one"):
        env.mock_step(charge, returns=1, raises=ValueError())


@pytest.fixture
def replay_app() -> replay.App:
    return app


async def test_the_pytest_fixture_runs_the_app(replay_env: TestEnv) -> None:
    replay_env.mock_step(charge, returns="via fixture")
    run = await app.start(order, "o-4")
    await replay_env.advance(timedelta(hours=1))
    assert await run.result() == "via fixture, shipped o-4"


clock_app = replay.App("clock", store="memory://")


seen_runs: set[str] = set()


@clock_app.step()
async def welcome() -> str:
    return "welcome"


@clock_app.step()
async def welcome_back() -> str:
    return "welcome back"


@clock_app.workflow()
async def remembers_in_memory(ctx: replay.Context) -> str:
    # Hidden non-determinism: process memory decides which step runs, so a
    # replay in a fresh process (or after eviction) takes the other branch.
    first_time = ctx.run_id not in seen_runs
    seen_runs.add(ctx.run_id)
    greeting = await (welcome() if first_time else welcome_back())
    await ctx.sleep(timedelta(minutes=1))
    return greeting


async def test_explore_crashes_catches_hidden_non_determinism() -> None:
    seen_runs.clear()
    with pytest.raises(replay.testing.CrashExplorationError) as info:
        await explore_crashes(clock_app, remembers_in_memory)
    report = info.value.report
    assert not report.ok and not report.deterministic
    summary = report.summary()
    assert summary.startswith("the workflow is not deterministic")
    assert "journal entry 2: step_scheduled 'welcome'" in summary


@clock_app.workflow()
async def reads_ctx_now(ctx: replay.Context) -> str:
    started = ctx.now()
    await ctx.sleep(timedelta(minutes=1))
    return str(ctx.now() - started)


async def test_explore_crashes_passes_deterministic_workflows() -> None:
    report = await explore_crashes(clock_app, reads_ctx_now)
    assert report.ok and report.outcome == "0:01:00" and len(report.points) == 2 * report.appends


async def test_explore_crashes_runs_each_crash_with_the_mocks_setup_gives() -> None:
    mocks: list[Any] = []

    def setup(env: TestEnv) -> None:
        mocks.append(env.mock_step(welcome, returns="mocked welcome"))

    report = await explore_crashes(clock_app, greets, setup=setup)
    assert report.ok and report.outcome == "mocked welcome"
    assert len(mocks) == 1 + len(report.points)  # one environment per run, each mocked
    assert all(mock.call_count <= 2 for mock in mocks)  # the step ran as the mock, at most twice a run
    with pytest.raises(ValueError, match="phases"):
        await explore_crashes(clock_app, greets, phases=("befor",))  # type: ignore[arg-type]


@clock_app.workflow()
async def greets(ctx: replay.Context) -> str:
    greeting = await welcome()
    await ctx.sleep(timedelta(minutes=1))
    return greeting


@pytest.mark.replay_app(clock_app)
async def test_the_marker_picks_the_app(replay_env: TestEnv) -> None:
    run = await clock_app.start(reads_ctx_now)
    await replay_env.advance(timedelta(minutes=1))
    assert await run.result() == "0:01:00"


value_app = replay.App("values", store="memory://")


@value_app.step()
def echo(value: Any) -> Any:
    return value


@value_app.workflow()
async def keeps(ctx: replay.Context, value: Any) -> list[Any]:
    first = await echo(value)
    await ctx.sleep(timedelta(seconds=1))
    return [first, await echo(first)]


@settings(max_examples=50, deadline=None)
@given(strategies.json_values(), strategies.delays(timedelta(hours=1)), strategies.event_data())
def test_strategies_draw_values_that_survive_the_journal(
    value: Any, delay: timedelta, data: dict[str, Any]
) -> None:
    import asyncio

    assert timedelta(0) <= delay <= timedelta(hours=1)
    assert isinstance(data, dict) and all(isinstance(k, str) for k in data)

    async def run() -> list[Any]:
        async with TestEnv(value_app) as env:
            handle = await value_app.start(keeps, value)
            await env.idle()
            await env.crash()
            await env.advance(timedelta(seconds=1))
            return await handle.result()

    assert asyncio.run(run()) == [value, value]


def test_json_values_never_draw_tuples_or_nan() -> None:
    @settings(max_examples=100, deadline=None)
    @given(strategies.json_values())
    def check(value: Any) -> None:
        import math

        def walk(v: Any) -> None:
            assert not isinstance(v, tuple)
            if isinstance(v, float):
                assert math.isfinite(v)
            for child in v if isinstance(v, list) else v.values() if isinstance(v, dict) else []:
                walk(child)

        walk(value)

    check()
    assert isinstance(st.just(1), st.SearchStrategy)


async def test_explore_report_keeps_each_points_journal() -> None:
    report = await explore_crashes(clock_app, reads_ctx_now)
    for point in report.points:
        [journal] = point.journals.values()
        assert journal[-1].kind == "workflow_completed"


async def test_check_replay_catches_a_changed_workflow() -> None:
    from replay.stores.memory import MemoryStore
    from replay.testing import check_replay

    store = MemoryStore()
    v1 = replay.App("deploys", store="memory://")

    @v1.step()
    async def reserve() -> str:
        return "reserved"

    @v1.workflow(name="order")
    async def order_v1(ctx: replay.Context) -> str:
        done = await reserve()
        await ctx.sleep(timedelta(days=1))
        return done

    async with TestEnv(v1, store=store) as env:
        await v1.start(order_v1, run_id="in-flight")
        await env.idle()
    v2 = replay.App("deploys", store="memory://")

    @v2.step()
    async def audit() -> str:
        return "audited"

    @v2.workflow(name="order")
    async def order_v2(ctx: replay.Context) -> str:
        done = await audit()  # the first command changed
        await ctx.sleep(timedelta(days=1))
        return done

    before = await store.read_journal("in-flight")
    [problem] = await check_replay(v2, store)
    assert (problem.run_id, problem.kind) == ("in-flight", "nondeterminism")
    assert "journal entry 2: step_scheduled 'reserve'" in problem.message
    assert "new command:      step_scheduled 'audit'" in problem.message
    assert await store.read_journal("in-flight") == before  # nothing written
    assert await check_replay(v1, store) == []


async def test_a_mock_for_a_name_no_step_has_is_refused() -> None:
    async with TestEnv(app) as env:
        with pytest.raises(ValueError, match=r"no step named 'shp' is registered .*its steps: charge, ship"):
            env.mock_step("shp", returns="x")  # a typo would let the real step run


async def test_an_async_side_effect_is_awaited() -> None:
    async def fake_ship(order_id: str) -> str:
        await asyncio.sleep(0)
        return f"async {order_id}"

    async with TestEnv(app) as env:
        env.mock_step(charge, returns="fake")
        env.mock_step(ship, side_effect=fake_ship)
        run = await app.start(order, "o-2")
        await env.advance(timedelta(hours=1))
        assert await run.result() == "fake, async o-2"


async def test_a_store_url_is_taken_and_time_moves_by_finite_amounts(tmp_path: Any) -> None:
    async with TestEnv(app, store=f"sqlite:///{tmp_path}/t.db") as env:
        env.mock_step(charge, returns="fake")
        run = await app.start(order, "o-3")
        await env.advance(timedelta(hours=1))
        assert await run.result() == "fake, shipped o-3"
        for bad in (float("nan"), float("inf"), -1.0):
            with pytest.raises(ValueError, match="finite"):
                await env.advance(bad)
