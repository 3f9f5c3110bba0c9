"""DESIGN.md's checkout example, end to end on the SQLite store, through TestEnv."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import replay
from replay.stores.sqlite import SqliteStore
from replay.testing import TestEnv


def shop() -> tuple[replay.App, Any]:
    app = replay.App("shop", store="memory://")

    @app.step(retry=replay.RetryPolicy(max_attempts=5), timeout=timedelta(seconds=30))
    async def charge(order_id: str, cents: int) -> str:
        return f"receipt-{order_id}"

    @app.step()
    def notify(who: str) -> str:
        return f"told {who}"

    @app.workflow()
    async def checkout(ctx: replay.Context, order_id: str, cents: int) -> dict[str, Any]:
        receipt = await charge(order_id, cents)
        await ctx.sleep(timedelta(days=1))
        shipped = await ctx.wait_for_event(
            "order.shipped", match={"order_id": order_id}, timeout=timedelta(days=7)
        )
        _a, _b = await asyncio.gather(ctx.step(notify, "a"), ctx.step(notify, "b"))
        return {"receipt": receipt, "shipped": shipped is not None}

    return app, checkout


EXPECTED = {"receipt": "receipt-o-1", "shipped": True}


async def test_checkout_on_sqlite(tmp_path: Path) -> None:
    app, checkout = shop()
    url = f"sqlite:///{tmp_path}/shop.db"
    async with TestEnv(app, store=SqliteStore(url)) as env:
        run = await app.start(checkout, "o-1", 500, run_id="checkout-o-1")
        await env.idle()
        assert await run.status() == "suspended"
        await env.advance(timedelta(days=1))
        await app.send_event("order.shipped", {"order_id": "o-1"})
        assert await run.result() == EXPECTED

    # Durable: a fresh store on the same file reads the finished run and its journal.
    store = SqliteStore(url)
    await store.open()
    try:
        info = await store.get_run("checkout-o-1")
        assert info is not None and (info.status, info.result) == ("completed", EXPECTED)
        kinds = [e.kind for e in await store.read_journal("checkout-o-1")]
        assert kinds[0] == "workflow_started" and kinds[-1] == "workflow_completed"
        assert kinds.count("step_completed") == 3 and "event_received" in kinds
    finally:
        await store.close()


async def test_checkout_on_sqlite_survives_a_crash(tmp_path: Path) -> None:
    app, checkout = shop()
    async with TestEnv(app, store=SqliteStore(f"sqlite:///{tmp_path}/shop.db")) as env:
        run = await app.start(checkout, "o-1", 500, run_id="checkout-o-1")
        await env.idle()
        await env.crash()
        await env.advance(timedelta(days=1))
        await env.crash()
        await app.send_event("order.shipped", {"order_id": "o-1"})
        assert await run.result() == EXPECTED
        journal = await run.journal()
        assert [e.kind for e in journal].count("step_scheduled") == 3
