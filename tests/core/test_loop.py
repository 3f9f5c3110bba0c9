"""The deterministic loop: asyncio's combinators inside workflows, and the sandbox."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
from asyncio import events
from datetime import timedelta
from typing import Any

import pytest

import replay
from replay._loop import WorkflowLoop
from replay.errors import WorkflowSandboxError
from replay.testing import TestEnv

app = replay.App("loop", store="memory://")
log: list[str] = []


@app.step()
async def record(tag: str) -> str:
    log.append(tag)
    return tag


def test_the_private_asyncio_api_we_rely_on_exists() -> None:
    # The loop swaps itself in with these; if a Python release renames them, fail here.
    assert callable(events._get_running_loop)
    assert callable(events._set_running_loop)
    handle = asyncio.Handle(lambda: None, (), WorkflowLoop.__new__(WorkflowLoop), None)
    assert handle._cancelled is False
    assert callable(handle._run)


@app.workflow()
async def interleave(ctx: replay.Context) -> list[str]:
    async def branch(name: str) -> list[str]:
        first = await record(f"{name}1")
        second = await record(f"{name}2")
        return [first, second]

    a, b = await asyncio.gather(branch("a"), branch("b"))
    done, _ = await asyncio.wait([asyncio.ensure_future(record("w"))])
    async with asyncio.TaskGroup() as tg:
        t1 = tg.create_task(record("tg1"))
        t2 = tg.create_task(record("tg2"))
    fast = await asyncio.wait_for(record("quick"), timeout=60)
    try:
        await asyncio.wait_for(asyncio.sleep(3600), timeout=60)
        late = "no"
    except TimeoutError:
        late = "timed out"
    names = [asyncio.current_task().get_name()]  # type: ignore[union-attr]
    return [*a, *b, next(iter(done)).result(), t1.result(), t2.result(), fast, late, *names]


async def test_gather_wait_taskgroup_and_wait_for_work_and_replay_identically() -> None:
    log.clear()
    async with TestEnv(app) as env:
        run = await app.start(interleave, run_id="i")
        await env.advance(timedelta(minutes=2))
        result = await run.result()
        assert result == ["a1", "a2", "b1", "b2", "w", "tg1", "tg2", "quick", "timed out", "i:main"]
        journal = await run.journal()
        # A fresh instance replaying the whole journal issues exactly the same commands.
        await env.crash()
        assert await run.result() == result
    assert sorted(log) == sorted(["a1", "a2", "b1", "b2", "w", "tg1", "tg2", "quick"])
    kinds = [e.kind for e in journal]
    assert kinds.count("timer_started") == 3  # two wait_for deadlines and the sleep
    assert kinds.count("timer_fired") == 1


@app.workflow()
async def sleeper(ctx: replay.Context) -> float:
    start = ctx.now()
    await asyncio.sleep(30)  # asyncio.sleep inside a workflow is a durable timer
    await ctx.sleep(timedelta(seconds=30))
    return (ctx.now() - start).total_seconds()


async def test_asyncio_sleep_is_a_durable_timer() -> None:
    async with TestEnv(app, keep_hot=0) as env:
        run = await app.start(sleeper)
        await env.idle()
        assert await run.status() == "suspended"
        await env.advance(timedelta(seconds=30))
        await env.crash()
        await env.advance(timedelta(seconds=30))
        assert await run.result() == 60.0


@app.workflow()
async def does_io(ctx: replay.Context, what: str) -> Any:
    loop = asyncio.get_running_loop()
    if what == "executor":
        return await loop.run_in_executor(None, print)
    if what == "connect":
        return await asyncio.open_connection("127.0.0.1", 9)
    if what == "dns":
        return await loop.getaddrinfo("localhost", 80, family=socket.AF_INET)
    if what == "thread":
        return await asyncio.to_thread(print)
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["executor", "connect", "dns", "thread"])
async def test_io_in_a_workflow_is_refused_with_advice(what: str) -> None:
    async with TestEnv(app) as env:
        run = await app.start(does_io, what)
        await env.idle()
        with pytest.raises(WorkflowSandboxError, match="Move this into a step"):
            await run.result()


def test_sandbox_error_is_a_runtime_error() -> None:
    assert issubclass(WorkflowSandboxError, RuntimeError)


@app.workflow()
async def naps(ctx: replay.Context) -> str:
    tag = await record("before the nap")
    await ctx.sleep(timedelta(days=1))
    return tag


async def test_an_evicted_run_is_freed_by_one_collection() -> None:
    # Eviction closes the run's coroutines; their tasks then die pending. The loop
    # must not keep what asyncio reports about them ("Task was destroyed but it is
    # pending!"): a record kept from inside the dying cycle revives it, and every
    # evicted run would hold its memory until yet another full collection.
    gc.disable()
    try:
        async with app.worker() as worker:
            runs = [await app.start(naps) for _ in range(20)]
            await worker.wait_idle()
            assert [await run.status() for run in runs] == ["suspended"] * 20
            assert not worker.drivers
            gc.collect()
            ids = {run.run_id for run in runs}
            alive = [o for o in gc.get_objects() if isinstance(o, WorkflowLoop) and o.instance.run_id in ids]
            assert alive == []
    finally:
        gc.enable()


@app.workflow()
async def drops_a_failed_future(ctx: replay.Context) -> str:
    failed = asyncio.get_running_loop().create_future()
    failed.set_exception(ValueError("nobody looked"))
    del failed  # asyncio reports an exception nobody retrieved, through the loop
    tag = await record("after")
    await ctx.sleep(timedelta(days=1))
    return tag


async def test_an_unretrieved_exception_in_workflow_code_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async with TestEnv(app) as env:
        run = await app.start(drops_a_failed_future, run_id="dropper")
        await env.idle()
        reports = [r for r in caplog.records if "never retrieved" in r.getMessage()]
        assert len(reports) == 1
        assert "[dropper]" in reports[0].getMessage()
        assert reports[0].exc_info is not None and isinstance(reports[0].exc_info[1], ValueError)
        caplog.clear()
        await env.crash()
        await env.advance(timedelta(days=1))  # the replay drops it again, silently
        assert await run.result() == "after"
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


@app.workflow()
async def quits(ctx: replay.Context) -> None:
    await record("before")
    sys.exit(3)


async def test_sys_exit_in_workflow_code_fails_the_run_not_the_worker() -> None:
    async with TestEnv(app) as env:
        run = await app.start(quits)
        with pytest.raises(replay.WorkflowFailed, match="3") as failed:
            await run.result()
        assert failed.value.type_name == "SystemExit"
        assert env.worker is not None and not env.worker.in_flight()
