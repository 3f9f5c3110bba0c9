"""App.fork (a new run from a journal prefix) and Worker.drain (a graceful stop)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import replay
from replay.stores import _sqlite_writer as writer_module
from replay.stores.sqlite import SqliteStore
from replay.testing import TestEnv
from replay.worker import StepInfo

app = replay.App("forks", store="memory://")
ran: list[str] = []
broken = {"c": True}


@app.step()
def step(name: str) -> str:
    ran.append(name)
    if name == "c" and broken["c"]:
        raise replay.NonRetryableError("c is broken")
    return name.upper()


@app.workflow(timeout=timedelta(hours=1))
async def letters(ctx: replay.Context) -> list[str]:
    return [await step(n) for n in "abcd"]


@pytest.fixture(autouse=True)
def _reset() -> None:
    ran.clear()
    broken["c"] = True


async def test_fork_reruns_the_steps_from_n_on_and_reuses_the_earlier_ones() -> None:
    async with TestEnv(app) as env:
        run = await app.start(letters, run_id="old")
        with pytest.raises(replay.StepFailed):
            await run.result(timeout=5)
        assert ran == ["a", "b", "c"]
        old = await run.journal()

        broken["c"] = False  # the fix is deployed
        ran.clear()
        await env.advance(timedelta(hours=2))  # past the old run's deadline: the fork gets its own
        fork = await app.fork("old", 3, run_id="new")
        assert fork.run_id == "new"
        assert await fork.result(timeout=5) == ["A", "B", "C", "D"]
        assert ran == ["c", "d"]

        new = await fork.journal()
        cut = [i for i, e in enumerate(old) if e.kind == "step_scheduled"][2]
        assert new[1:cut] == old[1:cut]
        assert new[0].data["forked_from"] == {"run_id": "old", "step": 3}
        assert new[0].data["deadline"] > env.now()
        info = await fork.info()
        assert info.created_at == env.now() and info.parent_id is None
        assert await run.status() == "failed"  # the old run is left as it was


async def test_fork_works_from_a_bare_app_on_the_same_store() -> None:
    async with TestEnv(app) as env:
        run = await app.start(letters, run_id="old")
        with pytest.raises(replay.StepFailed):
            await run.result(timeout=5)
        bare = replay.App("ops", store=env.store)  # knows no workflow
        fork = await bare.fork("old", 1)
        assert await bare.get_run(fork.run_id).status() == "pending"
        assert [r.run_id for r in await bare.list_runs(status="pending")] == [fork.run_id]
        broken["c"] = False
        await env.idle()
        assert await fork.result(timeout=5) == ["A", "B", "C", "D"]


@pytest.mark.parametrize(("from_step", "match"), [(0, "from 1"), (5, "between 1 and 4"), (True, "from 1")])
async def test_fork_refuses_a_step_out_of_range(from_step: Any, match: str) -> None:
    broken["c"] = False
    async with TestEnv(app):
        run = await app.start(letters, run_id="old")
        await run.result(timeout=5)
        with pytest.raises(ValueError, match=match):
            await app.fork("old", from_step)
        assert [r.run_id for r in await app.list_runs()] == ["old"]


async def test_fork_of_an_unknown_run_or_onto_a_taken_id_is_refused() -> None:
    broken["c"] = False
    async with TestEnv(app):
        with pytest.raises(replay.RunNotFound):
            await app.fork("nope", 1)
        run = await app.start(letters, run_id="old")
        await run.result(timeout=5)
        with pytest.raises(ValueError, match="already exists"):
            await app.fork("old", 1, run_id="old")


# -- drain ---------------------------------------------------------------------------------

drain_app = replay.App("drains", store="memory://")
gate: dict[str, asyncio.Event] = {}


@drain_app.step()
async def slow(name: str) -> str:
    gate["started"].set()
    await gate["release"].wait()
    return name


@drain_app.step()
async def after(name: str) -> str:
    return name


@drain_app.workflow()
async def two(ctx: replay.Context) -> list[str]:
    return [await slow("one"), await after("two")]


@pytest.fixture
def gates() -> dict[str, asyncio.Event]:
    gate.update(started=asyncio.Event(), release=asyncio.Event())
    return gate


async def test_drain_journals_the_step_in_flight_and_starts_no_new_one(gates: Any) -> None:
    started: list[StepInfo] = []
    async with TestEnv(drain_app, on_step=started.append) as env:
        run = await drain_app.start(two, run_id="r")
        await gates["started"].wait()
        drain = asyncio.create_task(env.worker.drain(timeout=5))
        await asyncio.sleep(0)  # the drain begins while the step still runs
        gates["release"].set()
        assert await drain == []
        kinds = [e.kind for e in await run.journal()]
        assert kinds == ["workflow_started", "step_scheduled", "step_completed"]
        assert [s.name for s in started] == ["slow"]  # "after" was left for the next worker
        await env.crash()  # a fresh worker takes the run over
        assert await run.result(timeout=5) == ["one", "two"]


async def test_drain_gives_up_after_its_timeout_and_names_the_step_cut_off(gates: Any) -> None:
    async with TestEnv(drain_app) as env:
        run = await drain_app.start(two, run_id="r")
        await gates["started"].wait()
        cut = await env.worker.drain(timeout=0.01)
        assert [(s.run_id, s.name, s.attempt) for s in cut] == [("r", "slow", 1)]
        assert [e.kind for e in await run.journal()] == ["workflow_started"]
        gates["release"].set()
        await env.crash()
        assert await run.result(timeout=5) == ["one", "two"]


async def test_drain_names_the_attempts_of_a_run_dropped_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run with two steps in flight: the first ends, the drain begins, and the group
    # commit of that outcome fails, so the run is handed back and its other step
    # cancelled. Both attempts will run again: the drain must not say it was clean.
    app = replay.App("drain-dropped", store="memory://")
    failing = False
    drains: list[asyncio.Task[list[StepInfo]]] = []

    @app.step()
    async def quick() -> str:
        nonlocal failing
        failing = True  # the commit of its outcome fails
        return "a"

    @app.step()
    async def held() -> str:
        await asyncio.Event().wait()  # until cancelled
        return "b"

    @app.workflow()
    async def both(ctx: replay.Context) -> list[str]:
        return list(await asyncio.gather(held(), quick()))

    def commit(conn: sqlite3.Connection, size: int) -> None:
        nonlocal failing
        if failing:
            failing = False
            assert env.worker is not None
            drains.append(asyncio.get_running_loop().create_task(env.worker.drain()))
            raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(writer_module, "before_commit", commit)
    async with TestEnv(app, store=SqliteStore(f"sqlite:///{tmp_path}/r.db")) as env:
        run = await app.start(both, run_id="r")
        async with asyncio.timeout(20):  # a bound for a hang, not a timing
            while not drains:
                await env.idle()
            cut = await drains[0]
        assert sorted((s.name, s.attempt) for s in cut) == [("held", 1), ("quick", 1)]
        # Nothing of the two steps was journaled (their scheduling goes with the first outcome).
        assert [e.kind for e in await run.journal()] == ["workflow_started"]
