"""The client: registration, starts and bad input (clear errors, nothing stored)."""

from __future__ import annotations

from datetime import timedelta

import pytest

import replay
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
