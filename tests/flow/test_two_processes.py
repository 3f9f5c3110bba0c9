"""Flow control holds across processes: two stores on one database stand in for two processes."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import replay
from replay.stores import open_store
from replay.worker import Worker


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One database for two stores."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shared.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def test_a_concurrency_limit_holds_across_two_worker_processes(shared_url: str) -> None:
    app = replay.App("two-procs", store="memory://")
    active = 0
    peak = 0
    by_worker: dict[str, int] = {}

    two_at_once = asyncio.Event()

    @app.step()
    async def work(i: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        if active == 2:
            two_at_once.set()
        # Hold the slot until a second run has one too (or give up after a while: if
        # only one ever ran, the peak below says so); then let the other process try.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(two_at_once.wait(), 5)
        for _ in range(20):
            await asyncio.sleep(0)
        active -= 1
        return i

    @app.workflow(concurrency=replay.Concurrency(2))
    async def limited(ctx: replay.Context, i: int) -> int:
        return await work(i) + await work(i)

    a, b = open_store(shared_url), open_store(shared_url)
    await a.open()
    await b.open()
    app.set_store(a)
    try:
        workers = [
            Worker(app, store, app.clock, worker_id=name, poll_interval=0.005)
            for name, store in (("wa", a), ("wb", b))
        ]
        for w in workers:
            w.on_step = lambda info, name=w.worker_id: by_worker.__setitem__(name, by_worker.get(name, 0) + 1)
            await w.start()
        runs = [await app.start(limited, i) for i in range(30)]
        assert [await r.result(timeout=60) for r in runs] == [2 * i for i in range(30)]
        for w in workers:
            await w.stop()
    finally:
        await app.close()
        await b.close()
    assert peak == 2
    assert set(by_worker) == {"wa", "wb"}  # both took part


async def test_a_cancel_from_another_process_reaches_a_run_kept_in_memory(shared_url: str) -> None:
    """The worker's store sends it no notice of the other's request: its poll finds the news."""
    app = replay.App("two-procs-cancel", store="memory://")
    started = asyncio.Event()

    @app.step()
    async def hold() -> None:
        started.set()
        await asyncio.Event().wait()  # runs until the cancellation ends the run

    @app.workflow()
    async def busy(ctx: replay.Context) -> str:
        await hold()
        return "not cancelled"

    here, other = open_store(shared_url), open_store(shared_url)
    await here.open()
    await other.open()
    app.set_store(here)
    worker = Worker(app, here, app.clock, worker_id="here", poll_interval=0.005)
    try:
        await worker.start()
        run = await app.start(busy)
        await started.wait()
        info = await other.request_cancel(run.run_id, app.clock.now())
        assert info is not None and info.cancel_requested
        with pytest.raises(replay.Cancelled):
            await run.result(timeout=10)
    finally:
        await worker.stop()
        await app.close()
        await other.close()
