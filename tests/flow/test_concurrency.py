"""Concurrency and priority: never more than ``limit`` runs of a key executing; waiting runs go in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import replay
from replay.testing import TestEnv


async def test_200_starts_never_show_a_fourth_running(env_for: Callable[..., TestEnv]) -> None:
    app = replay.App("conc", store="memory://")
    in_steps = 0
    peak_steps = 0
    peak_running = 0
    store_holder: list[replay.App] = [app]
    full = asyncio.Event()  # set once three steps run at once: the first steps wait for it

    @app.step()
    async def work(i: int) -> int:
        nonlocal in_steps, peak_steps, peak_running
        in_steps += 1
        peak_steps = max(peak_steps, in_steps)
        if in_steps == 3:
            full.set()
        store = await store_holder[0].store()
        running = await store.list_runs(workflow="limited", status="running", limit=1000)
        peak_running = max(peak_running, len(running))
        await full.wait()  # a limit of 3 lets three in; a lower one never would (the bound below)
        for _ in range(3):
            await asyncio.sleep(0)  # give other runs every chance to overlap
        in_steps -= 1
        return i

    @app.workflow(name="limited", concurrency=replay.Concurrency(3))
    async def limited(ctx: replay.Context, i: int) -> int:
        a = await work(i)
        b = await work(i + 1)
        return a + b

    async with env_for(app) as env:
        runs = [await app.start(limited, i, run_id=f"r{i:03}") for i in range(200)]
        async with asyncio.timeout(60):  # a bound for a hang (a limit below 3), not a timing
            await env.idle()
            assert [await r.result() for r in runs] == [2 * i + 1 for i in range(200)]
    assert peak_running == 3
    assert peak_steps == 3


async def test_per_key_limits_are_independent(env_for: Callable[..., TestEnv]) -> None:
    app = replay.App("conc-key", store="memory://")
    active: dict[str, int] = {}
    peak: dict[str, int] = {}
    peak_total = 0

    both = asyncio.Event()  # set once the two customers' steps run at the same time

    @app.step()
    async def call(customer: str) -> None:
        nonlocal peak_total
        active[customer] = active.get(customer, 0) + 1
        peak[customer] = max(peak.get(customer, 0), active[customer])
        peak_total = max(peak_total, sum(active.values()))
        if peak_total == 2:
            both.set()
        # With one limit for all, the other customer never comes: give up after a while.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(both.wait(), 5)
        active[customer] -= 1

    @app.workflow(concurrency=replay.Concurrency(1, key=lambda customer, n: customer))
    async def per_customer(ctx: replay.Context, customer: str, n: int) -> None:
        await call(customer)
        await call(customer)

    async with env_for(app) as env:
        runs = [await app.start(per_customer, c, n) for n in range(10) for c in ("acme", "globex")]
        await env.idle()
        for r in runs:
            await r.result()
    assert peak == {"acme": 1, "globex": 1}
    assert peak_total == 2  # one limit per key, not one for all


async def test_a_sleeping_run_gives_its_slot_up(env_for: Callable[..., TestEnv]) -> None:
    app = replay.App("conc-sleep", store="memory://")
    order: list[str] = []

    @app.step()
    def mark(what: str) -> None:
        order.append(what)

    @app.workflow(concurrency=replay.Concurrency(1))
    async def napper(ctx: replay.Context, name: str) -> None:
        await mark(f"{name}:start")
        await ctx.sleep(60)
        await mark(f"{name}:end")

    async with env_for(app) as env:
        a = await app.start(napper, "a")
        b = await app.start(napper, "b")
        await env.idle()
        assert order == ["a:start", "b:start"]  # a sleeps, so b may run
        await env.advance(60)
        await a.result()
        await b.result()
    assert sorted(order[2:]) == ["a:end", "b:end"]


async def test_waiting_runs_go_by_priority_then_start_order(env_for: Callable[..., TestEnv]) -> None:
    app = replay.App("prio", store="memory://")
    order: list[str] = []
    gate = asyncio.Event()

    @app.step()
    async def job(name: str) -> None:
        if name == "first":
            await gate.wait()
        order.append(name)

    @app.workflow(concurrency=replay.Concurrency(1), priority=lambda name, urgent: 10 if urgent else 0)
    async def queued(ctx: replay.Context, name: str, urgent: bool) -> None:
        await job(name)

    async with env_for(app) as env:
        first = await app.start(queued, "first", False)
        while not env.worker.drivers:  # the first run holds the only slot
            await asyncio.sleep(0)
        for name, urgent in [("low1", False), ("high1", True), ("low2", False), ("high2", True)]:
            await app.start(queued, name, urgent)
        gate.set()
        await first.result()
        await env.idle()
    assert order == ["first", "high1", "high2", "low1", "low2"]


async def test_bad_key_fails_the_start_and_stores_nothing(env_for: Callable[..., TestEnv]) -> None:
    app = replay.App("conc-bad", store="memory://")

    @app.workflow(concurrency=replay.Concurrency(2, key=lambda n: n))  # an int, not a str
    async def bad(ctx: replay.Context, n: int) -> None:
        return None

    async with env_for(app):
        try:
            await app.start(bad, 7, run_id="bad-7")
        except TypeError as exc:
            assert "concurrency key" in str(exc) and "must return a str" in str(exc)
        else:
            raise AssertionError("a non-str key must be refused")
        assert await app.list_runs() == []
