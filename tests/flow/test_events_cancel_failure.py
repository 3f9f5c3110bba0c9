"""Event triggers, CancelOn, cancellation and on_failure handlers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import replay
from replay.stores.base import Claim
from replay.testing import TestEnv


async def test_an_event_starts_every_listening_workflow_once(env_for: Callable[..., TestEnv]) -> None:
    app = replay.App("triggers", store="memory://")
    seen: list[tuple[str, str]] = []

    @app.step()
    def record(who: str, order_id: str) -> None:
        seen.append((who, order_id))

    @app.workflow(trigger="order.created")
    async def bill(ctx: replay.Context, event: replay.Event) -> str:
        assert isinstance(event, replay.Event) and event.name == "order.created"
        await record("bill", event.data["order_id"])
        return event.id

    @app.workflow(trigger="order.created")
    async def pack(ctx: replay.Context, event: replay.Event) -> None:
        await record("pack", event.data["order_id"])

    @app.workflow(trigger="order.shipped")
    async def unrelated(ctx: replay.Context, event: replay.Event) -> None:
        await record("unrelated", event.data["order_id"])

    async with env_for(app) as env:
        event_id = await app.send_event("order.created", {"order_id": "o-1"}, id="evt-1")
        await app.send_event("order.created", {"order_id": "o-1"}, id="evt-1")  # resent: nothing new
        await env.idle()
        assert await app.get_run("bill:evt-1").result() == "evt-1"
        assert event_id == "evt-1"
        assert sorted(r.run_id for r in await app.list_runs()) == ["bill:evt-1", "pack:evt-1"]
        await env.crash()
        await app.send_event("order.created", {"order_id": "o-1"}, id="evt-1")
        await env.idle()
    assert sorted(seen) == [("bill", "o-1"), ("pack", "o-1")]


async def test_a_trigger_whose_key_fails_on_an_event_does_not_lose_the_event(
    env_for: Callable[..., TestEnv], caplog: pytest.LogCaptureFixture
) -> None:
    app = replay.App("trigger-bad-key", store="memory://")

    @app.workflow(trigger="order.created", concurrency=replay.Concurrency(1, key=lambda e: e.data["tenant"]))
    async def per_tenant(ctx: replay.Context, event: replay.Event) -> None:
        return None

    @app.workflow(trigger="order.created")
    async def bill(ctx: replay.Context, event: replay.Event) -> str:
        return str(event.data["order_id"])

    @app.workflow()
    async def waits(ctx: replay.Context) -> bool:
        return await ctx.wait_for_event("order.created") is not None

    async with env_for(app) as env:
        waiting = await app.start(waits)
        await env.idle()
        await app.send_event(
            "order.created", {"order_id": "o-1"}, id="e1"
        )  # no "tenant": per_tenant's key fails
        await env.idle()
        assert await waiting.result() is True  # the event was stored, and woke the waiting run
        assert await app.get_run("bill:e1").result() == "o-1"  # the other workflow started
        assert await app.list_runs(workflow="per_tenant") == []
    assert "event e1 cannot start a run of per_tenant" in caplog.text


async def test_triggered_runs_obey_their_flow_control(env_for: Callable[..., TestEnv]) -> None:
    app = replay.App("trigger-flow", store="memory://")

    @app.workflow(trigger="ping", rate_limit=replay.RateLimit(2, timedelta(minutes=1)))
    async def pong(ctx: replay.Context, event: replay.Event) -> int:
        return int(event.data["n"])

    async with env_for(app) as env:
        for n in range(5):
            await app.send_event("ping", {"n": n}, id=f"p{n}")
        await env.idle()
        runs = await app.list_runs(workflow="pong")
        assert sorted(r.status for r in runs) == ["cancelled"] * 3 + ["completed"] * 2


async def test_cancel_on_event_cancels_matching_runs_which_may_clean_up(
    env_for: Callable[..., TestEnv],
) -> None:
    app = replay.App("cancel-on", store="memory://")
    cleaned: list[str] = []

    @app.step()
    def clean_up(order_id: str) -> None:
        cleaned.append(order_id)

    @app.workflow(cancel_on=replay.CancelOn("order.cancelled", match=lambda order_id: {"order_id": order_id}))
    async def fulfil(ctx: replay.Context, order_id: str) -> str:
        try:
            await ctx.sleep(timedelta(days=1))
        except asyncio.CancelledError:
            await clean_up(order_id)
            raise
        return "shipped"

    async with env_for(app) as env:
        await app.send_event("order.cancelled", {"order_id": "o-1"})  # before it started: ignored
        one = await app.start(fulfil, "o-1")
        two = await app.start(fulfil, "o-2")
        await env.idle()
        await app.send_event("order.cancelled", {"order_id": "o-1", "reason": "customer"})
        await env.idle()
        assert await one.status() == "cancelled"
        with pytest.raises(replay.Cancelled):
            await one.result()
        assert await two.status() == "suspended"
        await env.advance(timedelta(days=1))
        assert await two.result() == "shipped"
    assert cleaned == ["o-1"]


async def test_cancel_reaches_a_running_workflow_at_its_next_await(env_for: Callable[..., TestEnv]) -> None:
    app = replay.App("cancel-api", store="memory://")
    gate = asyncio.Event()
    after: list[str] = []

    @app.step()
    async def slow() -> None:
        await gate.wait()

    @app.step()
    def note(what: str) -> None:
        after.append(what)

    @app.workflow()
    async def job(ctx: replay.Context) -> None:
        try:
            await slow()
            await note("not reached")
        except asyncio.CancelledError:
            await note("cleanup")
            raise

    async with env_for(app) as env:
        run = await app.start(job)
        while not env.worker.drivers:
            await asyncio.sleep(0)
        await run.cancel()
        await env.idle()
        assert await run.status() == "cancelled"
        gate.set()
    assert after == ["cleanup"]


def _napping(name: str) -> tuple[replay.App, Any]:
    """An app whose workflow sleeps 100 ms and stays hot: no suspension to notice a cancel."""
    app = replay.App(name, store="memory://")

    @app.workflow()
    async def nap(ctx: replay.Context) -> str:
        await ctx.sleep(timedelta(milliseconds=100))
        return "slept"

    return app, nap


def _cancel_right_after_claims(env: TestEnv, which: Callable[[Claim], bool]) -> list[str]:
    """Request a cancel of each run ``which`` picks as soon as a claim took it; returns their ids."""
    store = env.worker.store
    claim = store.claim
    cancelled: list[str] = []

    async def claim_then_cancel(*args: Any) -> Any:
        claims = await claim(*args)
        for c in claims:
            if which(c):
                assert not c.cancel_requested
                await store.request_cancel(c.run_id, env.now())
                cancelled.append(c.run_id)
        return claims

    store.claim = claim_then_cancel  # type: ignore[method-assign]
    return cancelled


async def test_a_cancel_between_the_claim_and_its_driver_is_not_lost(env_for: Callable[..., TestEnv]) -> None:
    """The claim read the run's row before the request, and no driver existed to hear it."""
    app, nap = _napping("cancel-in-claim")
    async with env_for(app) as env:
        cancelled = _cancel_right_after_claims(env, lambda c: True)
        run = await app.start(nap)
        await env.idle()
        assert cancelled == [run.run_id]
        await env.advance(timedelta(seconds=1))
        with pytest.raises(replay.Cancelled):
            await run.result()


async def test_a_cancel_during_a_reclaim_of_a_hot_run_is_not_lost(env_for: Callable[..., TestEnv]) -> None:
    """The run is claimed again while its old driver is still here: the news goes to the old one."""
    app, nap = _napping("cancel-in-reclaim")
    async with env_for(app) as env:
        worker = env.worker
        run = await app.start(nap)
        await env.idle()
        old = worker.drivers[run.run_id]
        cancelled = _cancel_right_after_claims(env, lambda c: worker.drivers.get(c.run_id) is old)
        # The store forgets the worker, as it does a worker past its lease: the hot run is claimable.
        await worker.store.unregister_worker(worker.worker_id)
        await worker.store.register_worker(worker.worker_id)
        worker._wake()
        await env.idle()
        assert cancelled == [run.run_id]
        assert old.closed  # the old driver, its lease void, is not left waiting
        await env.advance(timedelta(seconds=1))
        with pytest.raises(replay.Cancelled):
            await run.result()


async def test_on_failure_runs_a_handler_with_the_run_id_and_error(env_for: Callable[..., TestEnv]) -> None:
    app = replay.App("on-failure", store="memory://")
    alerts: list[tuple[str, str, str]] = []

    @app.step()
    def page(run_id: str, kind: str, message: str) -> None:
        alerts.append((run_id, kind, message))

    @app.workflow()
    async def alert(ctx: replay.Context, run_id: str, error: dict[str, Any]) -> None:
        await page(run_id, error["type"], error["message"])

    @app.step(retry=replay.RetryPolicy(max_attempts=1))
    def charge() -> None:
        raise RuntimeError("card declined")

    @app.workflow(on_failure=alert)
    async def checkout(ctx: replay.Context) -> None:
        await charge()

    @app.workflow(on_failure=alert, timeout=timedelta(minutes=5))
    async def slowpoke(ctx: replay.Context) -> None:
        await ctx.sleep(timedelta(hours=1))

    @app.workflow(on_failure=alert)
    async def fine(ctx: replay.Context) -> str:
        return "ok"

    async with env_for(app) as env:
        await app.start(checkout, run_id="c-1")
        await app.start(slowpoke, run_id="s-1")
        await app.start(fine, run_id="f-1")
        await env.advance(timedelta(minutes=10))
        await app.get_run("c-1:on_failure").result()
        await app.get_run("s-1:on_failure").result()
        assert len(await app.list_runs(workflow="alert")) == 2  # none for the run that completed
    assert sorted(alerts) == [
        ("c-1", "StepFailed", "card declined"),
        ("s-1", "WorkflowTimeout", "run 's-1' passed its workflow timeout"),
    ]


def test_on_failure_must_be_a_registered_workflow() -> None:
    app = replay.App("on-failure-bad", store="memory://")
    with pytest.raises(ValueError, match="on_failure must be a workflow registered"):

        @app.workflow(on_failure=print)  # type: ignore[call-overload]
        async def wf(ctx: replay.Context) -> None: ...


async def test_events_stored_by_anything_start_their_triggered_runs(env_for: Callable[..., TestEnv]) -> None:
    from replay.stores.base import EventRecord

    app = replay.App("trigger-any-sender", store="memory://")

    @app.workflow(trigger="invoice.paid", debounce=replay.Debounce(timedelta(seconds=5)))
    async def reconcile(ctx: replay.Context, event: replay.Event) -> int:
        return int(event.data["n"])

    @app.workflow(trigger="invoice.paid")
    async def thank(ctx: replay.Context, event: replay.Event) -> str:
        return event.id

    async with env_for(app) as env:
        store = env.store
        # Sent straight to the store, as `replay events send` without --app or another service does.
        await store.send_event(EventRecord("i1", "invoice.paid", {"n": 1}, env.now()))
        await env.idle()
        assert await app.get_run("thank:i1").result() == "i1"
        await env.crash()  # a fresh worker must not start them again
        await store.send_event(EventRecord("i2", "invoice.paid", {"n": 2}, env.now()))
        await app.send_event("invoice.paid", {"n": 3}, id="i3")  # through the app: started at once
        await env.idle()
        await env.crash(down_for=timedelta(seconds=1))
        await store.send_event(EventRecord("i4", "invoice.paid", {"n": 4}, env.now()))
        await env.advance(timedelta(seconds=5))
        thanks = await app.list_runs(workflow="thank")
        assert sorted(r.run_id for r in thanks) == ["thank:i1", "thank:i2", "thank:i3", "thank:i4"]
        reconciled = await app.list_runs(workflow="reconcile")
        assert len(reconciled) == 1 and reconciled[0].result == 4  # one debounced run, the last event


async def test_a_hot_run_claimed_again_ends_its_old_driver(env_for: Callable[..., TestEnv]) -> None:
    """Its step cut off, the old driver, whose lease is void, must not wait for ever."""
    app = replay.App("reclaim-step", store="memory://")
    starts: list[asyncio.Event] = [asyncio.Event(), asyncio.Event()]
    gate = asyncio.Event()

    @app.step()
    async def blocked() -> str:
        starts[0 if not starts[0].is_set() else 1].set()
        await gate.wait()
        return "through"

    @app.workflow()
    async def held(ctx: replay.Context) -> str:
        return await blocked()

    async with env_for(app) as env:
        worker = env.worker
        run = await app.start(held)
        await starts[0].wait()
        old = worker.drivers[run.run_id]
        # The store forgets the worker, as it does a worker past its lease: the hot run is claimable.
        await worker.store.unregister_worker(worker.worker_id)
        await worker.store.register_worker(worker.worker_id)
        worker._wake()
        await starts[1].wait()  # the new driver runs the step again
        for _ in range(20):  # the old one's cancellation takes a few loop turns
            if old.closed:
                break
            await asyncio.sleep(0)
        assert old.closed
        gate.set()
        assert await run.result() == "through"
