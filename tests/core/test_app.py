"""The client: registration, starts and bad input (clear errors, nothing stored)."""

from __future__ import annotations

from datetime import timedelta

import pytest

import replay
from replay.stores.memory import MemoryStore
from replay.testing import TestEnv

app = replay.App("client", store="memory://")


@app.workflow
async def echo(ctx: replay.Context, value: object) -> object:
    return value


@app.workflow(name="other")
async def other(ctx: replay.Context) -> None:
    return None


async def test_an_argument_json_cannot_hold_raises_and_stores_nothing() -> None:
    async with TestEnv(app):
        with pytest.raises(replay.SerializationError, match="an argument of workflow 'echo'"):
            await app.start(echo, {1, 2})
        assert await app.list_runs() == []


async def test_unknown_run_ids_raise_run_not_found() -> None:
    async with TestEnv(app):
        handle = app.get_run("nope")  # no I/O yet
        for call in (handle.status(), handle.result(), handle.journal(), handle.cancel()):
            with pytest.raises(replay.RunNotFound, match="nope"):
                await call


async def test_a_run_id_of_another_workflow_is_refused() -> None:
    async with TestEnv(app) as env:
        await app.start(other, run_id="taken")
        await env.idle()
        with pytest.raises(ValueError, match="already exists as a run of 'other'"):
            await app.start(echo, 1, run_id="taken")


async def test_workflows_of_another_app_are_refused() -> None:
    elsewhere = replay.App("elsewhere", store="memory://")

    @elsewhere.workflow
    async def foreign(ctx: replay.Context) -> None:
        return None

    async with TestEnv(app):
        with pytest.raises(ValueError, match="not a workflow registered"):
            await app.start(foreign)


async def test_result_timeout_and_list_runs_filters() -> None:
    async with TestEnv(app) as env:
        done = await app.start(echo, "x")
        await env.idle()
        assert await done.result(timeout=timedelta(seconds=1)) == "x"
        assert [r.run_id for r in await app.list_runs(status="completed")] == [done.run_id]
        assert await app.list_runs(workflow="other") == []


def test_registration_errors_are_clear() -> None:
    local = replay.App("local", store="memory://")
    with pytest.raises(TypeError, match="async def"):
        local.workflow(lambda ctx: None)  # type: ignore[arg-type,return-value]
    local.workflow(name="w")(echo.fn)
    with pytest.raises(ValueError, match="already registered"):
        local.workflow(name="w")(echo.fn)
    with pytest.raises(TypeError, match="RetryPolicy"):
        local.step(retry=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        local.step(timeout=timedelta(0))
    with pytest.raises(ValueError, match="non-empty name"):
        replay.App("")


def test_a_store_url_with_an_unknown_scheme_is_refused() -> None:
    from replay.stores import open_store

    with pytest.raises(ValueError, match="unknown store 'mongodb://x'"):
        open_store("mongodb://x")
    with pytest.raises(ValueError, match="a store URL looks like"):
        open_store("replay.db")


def test_two_apps_do_not_see_each_other() -> None:
    a = replay.App("a", store="memory://")
    b = replay.App("b", store="memory://")

    @a.workflow(name="same")
    async def wa(ctx: replay.Context) -> None:
        return None

    @b.workflow(name="same")
    async def wb(ctx: replay.Context) -> None:
        return None

    assert a.workflows["same"] is wa and b.workflows["same"] is wb


async def test_a_start_with_arguments_the_workflow_cannot_take_is_refused_and_stores_nothing() -> None:
    async with TestEnv(app):
        with pytest.raises(
            TypeError, match=r"workflow 'echo' cannot take these arguments: missing .*'value'"
        ):
            await app.start(echo)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="workflow 'other' cannot take these arguments: too many"):
            await app.start(other, 1)  # type: ignore[call-arg]
        assert await app.list_runs() == []


def test_a_workflow_must_take_its_context_and_what_its_trigger_passes() -> None:
    local = replay.App("local", store="memory://")

    async def no_context() -> None:
        return None

    async def two_args(ctx: replay.Context, a: int, b: int) -> None:
        return None

    with pytest.raises(TypeError, match=r"must take the run's context first: async def no_context\(ctx"):
        local.workflow(no_context)
    with pytest.raises(TypeError, match="cannot take the one Event an event start passes"):
        local.workflow(name="on_event", trigger="order.created")(two_args)
    with pytest.raises(TypeError, match="cannot take the no arguments a cron start passes"):
        local.workflow(name="nightly", trigger=replay.cron("0 3 * * *"))(two_args)
    handler = local.workflow(name="handler")(two_args)  # (run_id, error) fits two parameters
    local.workflow(name="guarded", on_failure=handler)(echo.fn)
    with pytest.raises(TypeError, match="cannot take the run id and error an on_failure handler gets"):
        local.workflow(name="badly_guarded", on_failure=local.workflow(name="h2")(echo.fn))(echo.fn)
    assert "on_event" not in local.workflows and "nightly" not in local.workflows


@app.workflow
async def starts_a_child_badly(ctx: replay.Context) -> str:
    try:
        await ctx.child(echo)  # type: ignore[call-arg]
    except TypeError as exc:
        return str(exc)
    return "started"


async def test_a_child_with_arguments_it_cannot_take_raises_in_the_parent() -> None:
    async with TestEnv(app):
        run = await app.start(starts_a_child_badly)
        assert "workflow 'echo' cannot take these arguments" in await run.result()
        assert [r.workflow for r in await app.list_runs()] == ["starts_a_child_badly"]


async def test_a_run_whose_stored_arguments_no_longer_fit_fails_instead_of_retrying() -> None:
    # Started by code whose workflow took one argument; the code deployed since takes none.
    store = MemoryStore()
    before = replay.App("deploys", store=store)
    after = replay.App("deploys", store=store)

    @before.workflow(name="job")
    async def job_v1(ctx: replay.Context, n: int) -> int:
        return n

    @after.workflow(name="job")
    async def job_v2(ctx: replay.Context) -> int:
        return 0

    started = await before.start(job_v1, 7, run_id="old")  # no worker: it waits
    async with after.worker():
        with pytest.raises(replay.WorkflowFailed, match="positional argument") as failed:
            await after.get_run(started.run_id).result(timeout=10)
    assert failed.value.type_name == "TypeError"


async def test_a_result_that_times_out_says_what_the_run_is_doing() -> None:
    store = MemoryStore()
    local = replay.App("idle", store=store)

    @local.workflow(name="waits")
    async def waits(ctx: replay.Context) -> None:
        return None

    run = await local.start(waits)  # and no worker anywhere
    with pytest.raises(
        TimeoutError, match=r"pending: no worker has begun it; is a worker running workflow 'waits'"
    ):
        await run.result(timeout=0.01)
    await local.close()
