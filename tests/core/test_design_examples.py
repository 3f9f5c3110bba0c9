"""Every example of DESIGN.md §1, run as written on the memory store."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import replay
from replay.testing import TestEnv

app = replay.App("shop", store="memory://")
charges: list[str] = []


@app.step(retry=replay.RetryPolicy(max_attempts=5), timeout=timedelta(seconds=30))
async def charge(order_id: str, cents: int) -> str:
    charges.append(order_id)
    return f"receipt-{order_id}"  # real I/O lives in steps


@app.step()
def notify(who: str) -> str:  # sync steps run in a worker thread
    return f"told {who}"


@app.workflow()
async def checkout(ctx: replay.Context, order_id: str, cents: int) -> dict[str, object]:
    receipt = await charge(order_id, cents)  # a step: runs once, result journaled
    await ctx.sleep(timedelta(days=1))  # a durable timer
    shipped = await ctx.wait_for_event(
        "order.shipped", match={"order_id": order_id}, timeout=timedelta(days=7)
    )
    a, b = await asyncio.gather(ctx.step(notify, "a"), ctx.step(notify, "b"))  # noqa: RUF059
    return {"receipt": receipt, "shipped": shipped is not None}


async def test_checkout() -> None:
    async with TestEnv(app) as env:
        run = await app.start(checkout, "o-1", 500, run_id="checkout-o-1")
        await env.advance(timedelta(days=1))
        await app.send_event("order.shipped", {"order_id": "o-1"})
        assert await run.result() == {"receipt": "receipt-o-1", "shipped": True}


async def test_main_runs_in_the_background_of_a_worker() -> None:
    production = replay.App("shop-prod", store="memory://")
    production.step()(charge.fn)
    wf = production.workflow(name="checkout")(checkout.fn)
    async with production.worker() as worker:
        run = await production.start(wf, "o-1", 500, run_id="checkout-o-1")
        await worker.wait_idle()
        assert await run.status() == "suspended"  # for a day
        journal = await run.journal()
        assert [e.kind for e in journal][-1] == "timer_started"
    await production.close()


async def test_checkout_survives_a_crash_while_sleeping() -> None:
    charges.clear()
    async with TestEnv(app) as env:
        run = await app.start(checkout, "o-2", 700, run_id="checkout-o-2")
        await env.idle()
        await env.crash()
        await env.advance(timedelta(days=1))
        await env.crash()
        await app.send_event("order.shipped", {"order_id": "o-2"})
        assert await run.result() == {"receipt": "receipt-o-2", "shipped": True}
    assert charges == ["o-2"]  # the completed step never ran again


async def test_the_wait_times_out_after_seven_days() -> None:
    async with TestEnv(app) as env:
        run = await app.start(checkout, "o-3", 100)
        await env.advance(timedelta(days=8))
        assert await run.result() == {"receipt": "receipt-o-3", "shipped": False}


async def test_starts_are_idempotent_on_run_id() -> None:
    async with TestEnv(app) as env:
        first = await app.start(checkout, "o-4", 100, run_id="same")
        second = await app.start(checkout, "o-5", 999, run_id="same")
        await env.idle()
        assert first.run_id == second.run_id == "same"
        (info,) = await app.list_runs()
        assert info.args == ["o-4", 100]
