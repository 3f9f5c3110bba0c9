"""Events, child runs, cancellation and workflow timeouts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import replay
from replay.testing import TestEnv

app = replay.App("events", store="memory://")
cleanups: list[str] = []


@app.workflow()
async def waiter(ctx: replay.Context, match: dict[str, Any]) -> Any:
    event = await ctx.wait_for_event("paid", match=match, timeout=timedelta(hours=1))
    return None if event is None else event.data


async def test_an_event_matches_by_containment_and_only_after_the_wait_began() -> None:
    async with TestEnv(app) as env:
        await app.send_event("paid", {"order": {"id": 1}, "cents": 5})  # before any wait: ignored
        run = await app.start(waiter, {"order": {"id": 1}})
        await env.idle()
        await app.send_event("paid", {"order": {"id": 2}, "cents": 6})  # no match
        await app.send_event("other", {"order": {"id": 1}})  # another name
        await env.idle()
        assert await run.status() == "suspended"
        event_id = await app.send_event("paid", {"order": {"id": 1, "x": True}, "cents": 7}, id="evt-7")
        assert event_id == "evt-7"
        assert await run.result() == {"order": {"id": 1, "x": True}, "cents": 7}


async def test_a_wait_times_out_with_none_and_a_late_event_is_ignored() -> None:
    async with TestEnv(app) as env:
        run = await app.start(waiter, {})
        await env.advance(timedelta(hours=1))
        assert await run.result() is None
        await app.send_event("paid", {})


async def test_an_event_sent_while_no_worker_runs_is_delivered_later() -> None:
    async with TestEnv(app) as env:
        run = await app.start(waiter, {"k": 1})
        await env.idle()
        env.worker.halt()
        await app.send_event("paid", {"k": 1})
        await env.crash()
        assert await run.result() == {"k": 1}


@app.workflow()
async def parent(ctx: replay.Context, n: int) -> list[Any]:
    results = await asyncio.gather(*(ctx.child(child, i) for i in range(n)))
    try:
        await ctx.child(child, -1)
    except replay.WorkflowFailed as exc:
        results.append(exc.message)
    return results


@app.workflow()
async def child(ctx: replay.Context, i: int) -> int:
    if i < 0:
        raise ValueError("negative")
    await ctx.sleep(timedelta(minutes=i))
    return i * 10


async def test_children_run_and_their_results_and_errors_reach_the_parent() -> None:
    async with TestEnv(app) as env:
        run = await app.start(parent, 3, run_id="p")
        await env.advance(timedelta(minutes=1))
        await env.crash()
        await env.advance(timedelta(minutes=1))
        assert await run.result() == [0, 10, 20, "negative"]
        infos = {r.run_id: r for r in await app.list_runs(workflow="child")}
        assert all(info.parent_id == "p" for info in infos.values())
        assert len(infos) == 4


@app.workflow()
async def cancellable(ctx: replay.Context) -> str:
    try:
        await ctx.sleep(timedelta(days=30))
    except asyncio.CancelledError:
        cleanups.append(ctx.run_id)
        raise
    return "slept"


async def test_cancel_raises_cancelled_error_at_the_next_await() -> None:
    cleanups.clear()
    async with TestEnv(app) as env:
        run = await app.start(cancellable, run_id="c")
        await env.idle()
        await run.cancel()
        with pytest.raises(replay.Cancelled):
            await run.result()
        assert await run.status() == "cancelled"
        assert [e.kind for e in await run.journal()][-2:] == ["cancel_requested", "workflow_cancelled"]
        await run.cancel()  # cancelling a finished run changes nothing
    assert cleanups == ["c"]


@app.workflow(timeout=timedelta(hours=2))
async def slow(ctx: replay.Context) -> str:
    await ctx.sleep_until(datetime(2026, 1, 2, tzinfo=UTC))
    return "done"


async def test_a_workflow_timeout_fails_the_run() -> None:
    async with TestEnv(app) as env:
        run = await app.start(slow)
        await env.advance(timedelta(hours=3))
        with pytest.raises(replay.WorkflowTimeout):
            await run.result()


async def test_a_child_started_on_recovery_is_created_even_when_news_flushes_it() -> None:
    """Regression: the entry of a child started while catching up was journaled without its run.

    A recovered run that issues a new child command at once, while news (a child
    that finished meanwhile) is journaled before the usual dispatch, appended the
    ``child_started`` entry with the news but never created the child: the parent
    then waited for it forever (found by the crash property on SQLite).
    """
    from replay import journal as j
    from replay.journal import Entry
    from replay.stores.base import NewRun
    from replay.stores.memory import MemoryStore

    app = replay.App("catch-up", store="memory://")

    @app.workflow()
    async def leaf(ctx: replay.Context, name: str) -> str:
        return name

    @app.workflow()
    async def parent(ctx: replay.Context) -> list[str]:
        async def first_branch() -> str:
            await ctx.wait_for_event("go")
            return await ctx.child(leaf, "second", run_id="second")

        return list(await asyncio.gather(first_branch(), ctx.child(leaf, "first", run_id="first")))

    store = MemoryStore()
    async with TestEnv(app, store=store) as env:
        first = await app.start(leaf, "first", run_id="first")
        assert await first.result() == "first"
        t = env.now()
        started = {"workflow": "parent", "args": [], "journal": j.FORMAT_VERSION}
        prefix = (
            Entry(2, j.CHILD_STARTED, t, {"name": "leaf", "args": ["first"], "run_id": "first"}),
            Entry(3, j.WAIT_STARTED, t, {"name": "go", "match": {}}),
            Entry(4, j.EVENT_RECEIVED, t, {"op": 3, "event": {"id": "e", "name": "go", "data": {}, "at": t}}),
        )
        # As a crash would leave it: the event journaled, the finished child not yet.
        await store.create_run(
            NewRun("p", "parent", [], Entry(1, j.WORKFLOW_STARTED, t, started), journal=prefix)
        )
        await env.idle()
        assert await app.get_run("p").status() == "completed"
        assert await app.get_run("p").result() == ["second", "first"]
        assert (await app.get_run("second").info()).parent_id == "p"
