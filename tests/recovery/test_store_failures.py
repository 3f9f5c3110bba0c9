"""A store that fails for a while (a full disk, a lock held too long) loses no run."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest

import replay
from replay import worker as worker_module
from replay.stores import _sqlite_writer as writer_module
from replay.stores.base import Claim
from replay.stores.memory import MemoryStore
from replay.stores.sqlite import SqliteStore
from replay.testing import TestEnv


async def test_a_run_whose_writes_fail_is_handed_back_once_the_disk_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = replay.App("full-disk", store="memory://")
    disk_full = False
    runs_of_step = 0

    def commit(conn: sqlite3.Connection, size: int) -> None:
        if disk_full:
            raise sqlite3.OperationalError("database or disk is full")

    @app.step()
    async def work() -> int:
        nonlocal disk_full, runs_of_step
        runs_of_step += 1
        disk_full = runs_of_step == 1  # the disk fills as the first attempt ends
        return 7

    @app.workflow()
    async def job(ctx: replay.Context) -> int:
        return await work()

    monkeypatch.setattr(writer_module, "before_commit", commit)
    async with TestEnv(app, store=SqliteStore(f"sqlite:///{tmp_path}/r.db")) as env:
        run = await app.start(job, run_id="j-1")
        await env.idle()  # its completion failed, and so did handing the run back
        assert await run.status() == "running"
        disk_full = False
        async with asyncio.timeout(20):  # a bound for a hang (the bug's form), not a timing
            await env.advance(timedelta(seconds=5))
            assert await run.result() == 7
    assert runs_of_step == 2  # the first attempt's outcome was never journaled


class FlakyClaims(MemoryStore):
    """A memory store whose claims fail (``fail`` more times) or block (until ``gate`` is set)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = 0
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.blocked = asyncio.Event()  # set while a claim waits at the gate

    async def claim(self, worker_id: str, workflows: Sequence[str], now: float, limit: int) -> list[Claim]:
        self.calls += 1
        if self.fail:
            self.fail -= 1
            raise OSError("the store is unreachable")
        if self.gate is not None:
            self.blocked.set()
            await self.gate.wait()
        return await super().claim(worker_id, workflows, now, limit)


def _app(name: str) -> tuple[replay.App, replay.WorkflowDef[[], int]]:
    app = replay.App(name, store="memory://")

    @app.workflow()
    async def job(ctx: replay.Context) -> int:
        return 7

    return app, job


async def test_a_failed_claim_is_tried_again_on_the_worker_clock_backing_off() -> None:
    app, job = _app("claims-fail")
    store = FlakyClaims()
    async with TestEnv(app, store=store) as env:
        await env.idle()  # the worker's first pass, which finds nothing
        store.fail = 2
        run = await app.start(job)
        await env.idle()  # the failed pass waits for its retry without counting as busy
        assert (store.calls, await run.status()) == (2, "pending")
        other = await app.start(job)  # news while backing off: the retry will see it
        await env.idle()
        assert store.calls == 2
        await env.advance(worker_module.CLAIM_RETRY)  # the retry fails too: it waits twice as long
        assert (store.calls, await run.status()) == (3, "pending")
        await env.advance(worker_module.CLAIM_RETRY * 1.5)
        assert store.calls == 3
        await env.advance(worker_module.CLAIM_RETRY * 0.5)
        assert await run.result(timeout=5) == 7
        assert await other.result(timeout=5) == 7


async def test_a_worker_stopped_with_a_wake_up_pending_is_left_idle() -> None:
    app, job = _app("stop-pending")
    async with TestEnv(app) as env:
        worker = env.worker
        await app.start(job)  # its notice wakes the claim loop, which has not run yet
        await worker.stop()
        async with asyncio.timeout(20):  # a bound for a hang (the bug's form), not a timing
            await worker.wait_idle()
        assert worker.activity.count == 0


async def test_a_worker_stopped_in_the_middle_of_a_claim_is_left_idle() -> None:
    app, job = _app("stop-claiming")
    store = FlakyClaims()
    async with TestEnv(app, store=store) as env:
        await env.idle()
        store.gate = asyncio.Event()
        await app.start(job)
        await store.blocked.wait()
        await env.worker.stop()
        async with asyncio.timeout(20):  # a bound for a hang (the bug's form), not a timing
            await env.worker.wait_idle()
        assert env.worker.activity.count == 0


async def test_a_worker_stopped_with_runs_hot_is_left_idle() -> None:
    app = replay.App("stop-hot", store="memory://")
    release = asyncio.Event()

    @app.step()
    async def slow() -> int:
        await release.wait()
        return 1

    @app.workflow()
    async def job(ctx: replay.Context) -> int:
        return await slow()

    async with TestEnv(app) as env:
        await app.start(job)
        started = env.worker.activity.progressed()
        while not env.worker.in_flight():
            await started
            started = env.worker.activity.progressed()
        await env.worker.stop()  # the dropped run's driver frees its slot as the worker stops
        async with asyncio.timeout(20):  # a bound for a hang (the bug's form), not a timing
            await env.worker.wait_idle()
        env.worker._wake()  # as a late driver's end would: a stopped worker claims nothing
        assert env.worker.activity.count == 0
