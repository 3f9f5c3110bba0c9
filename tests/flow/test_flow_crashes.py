"""Flow control survives a crash at every journal append (and every schedule move), on every store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import replay
from replay.stores.base import Store
from replay.testing import explore_crashes


async def test_on_failure_handlers_survive_crashes(store_factory: Callable[[], Store]) -> None:
    app = replay.App("crash-on-failure", store="memory://")

    @app.step()
    def page(run_id: str, message: str) -> str:
        return f"paged about {run_id}: {message}"

    @app.workflow()
    async def alert(ctx: replay.Context, run_id: str, error: dict[str, Any]) -> str:
        return await page(run_id, error["message"])

    @app.step(retry=replay.RetryPolicy(max_attempts=2, jitter=False))
    def charge(cents: int) -> None:
        raise RuntimeError(f"declined {cents}")

    @app.workflow(on_failure=alert)
    async def checkout(ctx: replay.Context, cents: int) -> None:
        await ctx.sleep(timedelta(seconds=30))
        await charge(cents)

    report = await explore_crashes(app, checkout, 500, store_factory=store_factory)
    assert report.appends >= 4
    assert all(p.ok for p in report.points)
    started = [data for kind, data in report.journal if kind == "workflow_started"]
    assert sum(b'"workflow":"alert"' in data for data in started) == 1  # the handler, once


async def test_cancel_on_survives_crashes(store_factory: Callable[[], Store]) -> None:
    app = replay.App("crash-cancel-on", store="memory://")

    @app.step()
    def release(order_id: str) -> str:
        return f"released {order_id}"

    @app.workflow(
        cancel_on=replay.CancelOn("order.cancelled", match=lambda order_id: {"order_id": order_id}),
        concurrency=replay.Concurrency(1),
        priority=5,
    )
    async def fulfil(ctx: replay.Context, order_id: str) -> str:
        try:
            # The event that answers this wait also cancels the run.
            await ctx.wait_for_event("order.cancelled", match={"order_id": order_id}, timeout=60)
            await ctx.sleep(timedelta(hours=1))
        except asyncio.CancelledError:
            await release(order_id)
            raise
        return "shipped"

    report = await explore_crashes(
        app, fulfil, "o-1", events={"order.cancelled": {"order_id": "o-1"}}, store_factory=store_factory
    )
    assert report.outcome[0] == "error" and report.outcome[1] == "Cancelled"
    assert all(p.ok for p in report.points)


async def test_cron_ticks_survive_crashes(store_factory: Callable[[], Store]) -> None:
    app = replay.App("crash-cron", store="memory://")

    @app.step()
    def tick() -> str:
        return "tock"

    @app.workflow(trigger=replay.cron("*/5 * * * *"))
    async def every_five(ctx: replay.Context) -> str:
        return await tick()

    @app.workflow()
    async def watcher(ctx: replay.Context) -> str:
        await ctx.sleep(timedelta(minutes=12))
        return "done"

    report = await explore_crashes(app, watcher, store_factory=store_factory)
    started = [data for kind, data in report.journal if kind == "workflow_started"]
    assert sum(b'"workflow":"every_five"' in data for data in started) == 2  # ticks at 5 and 10 min
    assert all(p.ok for p in report.points)
