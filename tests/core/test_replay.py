"""Replay: determinism checks, versioning with patched, side effects, eviction."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

import replay
from replay.stores.memory import MemoryStore
from replay.testing import TestEnv
from replay.testing.checks import replay_entries

calls: list[str] = []


def make_app(version: int) -> tuple[replay.App, replay.WorkflowDef[str]]:
    app = replay.App("versions", store="memory://")

    @app.step()
    async def reserve(item: str) -> str:
        calls.append(f"reserve {item}")
        return f"reserved {item}"

    @app.step()
    async def audit(item: str) -> str:
        calls.append(f"audit {item}")
        return f"audited {item}"

    @app.workflow(name="order")
    async def order(ctx: replay.Context) -> str:
        if version == 1:
            first = await reserve("book")
        elif version == 2:
            first = await audit("book")  # a changed command: not safe
        else:
            first = await audit("book") if ctx.patched("audit-first") else await reserve("book")
        await ctx.sleep(timedelta(hours=1))
        return first

    return app, order


async def test_a_changed_command_parks_the_run_with_a_side_by_side_diff() -> None:
    store = MemoryStore()
    app1, order1 = make_app(1)
    async with TestEnv(app1, store=store) as env:
        await app1.start(order1, run_id="r")
        await env.idle()
        before = await app1.get_run("r").journal()
    app2, _order2 = make_app(2)
    async with TestEnv(app2, store=store) as env:
        await env.advance(timedelta(hours=1))
        run = app2.get_run("r")
        assert await run.status() == "failed"
        with pytest.raises(replay.NonDeterminismError) as info:
            await run.result()
        assert await run.journal() == before  # parked, never corrupted
    message = str(info.value)
    assert "journal entry 2: step_scheduled 'reserve'" in message
    assert "new command:      step_scheduled 'audit' at " in message
    assert "test_replay.py:" in message  # the line in the workflow that issued it


async def test_patched_keeps_old_runs_on_the_old_path_and_new_runs_on_the_new() -> None:
    calls.clear()
    store = MemoryStore()
    app1, order1 = make_app(1)
    async with TestEnv(app1, store=store) as env:
        await app1.start(order1, run_id="old")
        await env.idle()
    app3, order3 = make_app(3)
    async with TestEnv(app3, store=store) as env:
        await app3.start(order3, run_id="new")
        await env.advance(timedelta(hours=1))
        assert await app3.get_run("old").result() == "reserved book"
        assert await app3.get_run("new").result() == "audited book"
        kinds = [e.kind for e in await app3.get_run("new").journal()]
        assert kinds[1] == "patch"
    assert calls == ["reserve book", "audit book"]


side_app = replay.App("side", store="memory://")


@side_app.workflow()
async def draws(ctx: replay.Context) -> list[object]:
    values: list[object] = [ctx.random(), str(ctx.uuid4()), ctx.now().isoformat()]
    await ctx.sleep(timedelta(minutes=5))
    values += [ctx.random(), str(ctx.uuid4()), ctx.now().isoformat()]
    return values


async def test_random_uuid_and_now_are_recorded_and_replayed() -> None:
    async with TestEnv(side_app) as env:
        run = await side_app.start(draws)
        await env.idle()
        first = [e.data["value"] for e in await run.journal() if e.kind == "side_effect"]
        await env.crash()
        await env.advance(timedelta(minutes=5))
        values = await run.result()
    assert values[:2] == first[:2]
    assert values[2] == "2026-01-01T00:00:00+00:00"
    assert values[5] == "2026-01-01T00:05:00+00:00"


many_app = replay.App("many", store="memory://")
ran: list[int] = []


@many_app.step()
async def inc(i: int) -> int:
    ran.append(i)
    return i + 1


@many_app.workflow()
async def chain(ctx: replay.Context, n: int) -> int:
    x = 0
    for _ in range(n):
        x = await inc(x)
    await ctx.sleep(timedelta(days=1))
    return x


async def test_a_woken_run_replays_its_journal_without_rerunning_steps() -> None:
    ran.clear()
    async with TestEnv(many_app) as env:
        run = await many_app.start(chain, 200)
        await env.idle()
        assert await run.status() == "suspended"  # evicted from memory
        assert len(ran) == 200
        await env.advance(timedelta(days=1))
        assert await run.result() == 200
    assert len(ran) == 200


async def test_an_unknown_workflow_is_left_untouched_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    async with TestEnv(many_app, store=store) as env:
        await many_app.start(chain, 1, run_id="orphan")
        await env.idle()
    before = await store.read_journal("orphan")
    other = replay.App("other", store="memory://")

    @other.workflow()
    async def unrelated(ctx: replay.Context) -> None:
        return None

    async with TestEnv(other, store=store) as env:
        await env.advance(timedelta(days=2))
        info = await store.get_run("orphan")
        assert info is not None and info.status == "suspended"
        assert await store.read_journal("orphan") == before
    assert any("orphan" in r.message and "not registered" in r.message for r in caplog.records)


async def test_a_parked_run_resumes_with_retry_once_the_code_is_fixed() -> None:
    store = MemoryStore()
    app1, order1 = make_app(1)
    async with TestEnv(app1, store=store) as env:
        await app1.start(order1, run_id="r")
        await env.idle()
    app2, _ = make_app(2)
    async with TestEnv(app2, store=store) as env:
        await env.advance(timedelta(hours=1))
        assert await app2.get_run("r").status() == "failed"
    fixed, _ = make_app(1)
    async with TestEnv(fixed, store=store) as env:
        await fixed.retry("r")
        await env.advance(timedelta(hours=1))
        assert await fixed.get_run("r").result() == "reserved book"
        with pytest.raises(ValueError, match="only a failed run can be retried"):
            await fixed.retry("r")
        with pytest.raises(replay.RunNotFound):
            await fixed.retry("nope")


log_app = replay.App("logs", store="memory://")


@log_app.workflow()
async def logs(ctx: replay.Context) -> list[bool]:
    seen = [ctx.is_replaying]
    await ctx.sleep(timedelta(minutes=1))
    seen.append(ctx.is_replaying)
    return seen


async def test_is_replaying_is_false_for_new_code_paths_only() -> None:
    async with TestEnv(log_app, keep_hot=0) as env:
        run = await log_app.start(logs)
        await env.idle()
        await env.advance(timedelta(minutes=1))  # woken: the first part replays, the rest is new
        assert await run.result() == [True, False]
        fresh = await log_app.start(first_thing)
        await env.idle()
        assert await fresh.result() is False  # a new run is not replaying, even before its first command


@log_app.step()
async def nothing() -> None:
    return None


@log_app.workflow()
async def first_thing(ctx: replay.Context) -> bool:
    before = ctx.is_replaying
    await nothing()
    return before


def make_waiter(version: int) -> tuple[replay.App, replay.WorkflowDef[str]]:
    app = replay.App("waiter", store="memory://")

    @app.workflow(name="w")
    async def w(ctx: replay.Context) -> str:
        if version == 2:
            await ctx.sleep(1)  # a changed first command
        event = await ctx.wait_for_event("go")
        return "went" if event else "no"

    return app, w


async def test_a_retried_run_still_gets_the_event_it_waited_for() -> None:
    store = MemoryStore()
    v1, w1 = make_waiter(1)
    async with TestEnv(v1, store=store) as env:
        await v1.start(w1, run_id="r")
        await env.idle()
    v2, _ = make_waiter(2)
    async with TestEnv(v2, store=store) as env:
        await v2.send_event("go")  # wakes the run: v2 cannot replay it, it is parked
        await env.idle()
        assert await v2.get_run("r").status() == "failed"
    v1_again, _ = make_waiter(1)
    async with TestEnv(v1_again, store=store) as env:
        await v1_again.retry("r")
        await env.idle()
        assert await v1_again.get_run("r").result(timeout=5) == "went"


async def test_sequential_steps_replay_on_the_inline_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # W4's speed rests on this path: a replayed step whose completion follows it in
    # the journal resolves inline, without an op, a match scan or a delivery.
    from replay._instance import Instance

    slow: list[str] = []
    original = Instance._fast_result

    def counting(self: Instance, entry: Any, op: Any) -> bool:
        slow.append(entry.kind)
        return original(self, entry, op)

    async with TestEnv(many_app) as env:
        run = await many_app.start(chain, 50)
        await env.idle()
        monkeypatch.setattr(Instance, "_fast_result", counting)
        await env.advance(timedelta(days=1))  # wakes: a full replay
        assert await run.result() == 50
    assert slow == ["timer_started"]  # only the sleep took the general path


async def test_a_command_awaited_after_other_work_replays_as_it_ran_live() -> None:
    # Live, the workflow blocks on each command and the task it just scheduled runs
    # before the completion arrives. Replay must not hand back an already-resolved
    # future there (its fast path), or the workflow would run on before that task.
    app = replay.App("awaited-later", store="memory://")

    @app.step()
    async def one() -> int:
        return 1

    @app.workflow()
    async def interleaved(ctx: replay.Context) -> list[str]:
        log: list[str] = []

        async def note(what: str) -> None:
            log.append(what)

        f = one()
        asyncio.get_running_loop().create_task(note("bg-step"))
        log.append(f"step {await f}")
        timer = ctx.sleep(timedelta(seconds=5))
        asyncio.get_running_loop().create_task(note("bg-timer"))
        await timer
        log.append("slept")
        log.append(f"direct {await one()}")
        return log

    async with TestEnv(app) as env:
        run = await app.start(interleaved, run_id="i-1")
        await env.advance(timedelta(seconds=5))
        assert await run.result() == ["bg-step", "step 1", "bg-timer", "slept", "direct 1"]
        journal = await env.store.read_journal("i-1")
    assert replay_entries(app, "i-1", journal) is None
