"""A store that fails for a while (a full disk, a lock held too long) loses no run."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

import replay
from replay.stores import _sqlite_writer as writer_module
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
