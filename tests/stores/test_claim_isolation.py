"""A claim carries the journals of many runs: one it cannot read must fail that run alone.

A journal written by a newer replay (a rolling deploy) or a damaged row used to
fail the whole claim, and so every later claim that met the run first: the
worker stopped starting runs. Now that run's claim carries no journal, its driver
reads the journal itself, fails, and hands the run back; the others go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import replay
from replay import journal as j
from replay.errors import SchemaError
from replay.journal import Entry
from replay.stores.base import NewRun
from replay.testing import TestEnv


def newer_run(run_id: str, workflow: str) -> NewRun:
    """A run as a newer replay, with a newer journal format, would have created it."""
    data = {"workflow": workflow, "args": [], "journal": j.FORMAT_VERSION + 1}
    return NewRun(run_id, workflow, [], Entry(1, j.WORKFLOW_STARTED, 0.0, data))


async def test_a_journal_from_a_newer_replay_does_not_stop_the_others(
    env_for: Callable[..., TestEnv],
) -> None:
    app = replay.App("claims", store="memory://")

    @app.step()
    async def add_one(x: int) -> int:
        return x + 1

    @app.workflow()
    async def chain(ctx: replay.Context) -> int:
        return await add_one(await add_one(0))

    async with env_for(app) as env:
        store = await app.store()
        await store.create_run(newer_run("from-the-future", "chain"))  # claimed first: created first
        handles = [await app.start(chain, run_id=f"r{i}") for i in range(3)]
        async with asyncio.timeout(20):  # a bound for a hang (the bug's form), not a timing
            await env.idle()
            assert [await h.result() for h in handles] == [2, 2, 2]
        stuck = await store.get_run("from-the-future")
        assert stuck is not None
        # Handed back to be tried again later (by a newer worker, say): not lost, not left "running".
        assert stuck.status == "suspended" and stuck.wake_at is not None
        with pytest.raises(SchemaError, match="newer replay"):
            await store.read_journal("from-the-future")
