"""Cron triggers: one run per tick, none missed and none doubled across restarts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

import replay
from replay.testing import TestEnv


def _ticks(app_runs: list[replay.RunInfo]) -> list[str]:
    return sorted(r.run_id.rsplit(":cron:", 1)[1] for r in app_runs)


async def test_cron_starts_one_run_per_tick_across_crashes_and_downtime(
    env_for: Callable[..., TestEnv],
) -> None:
    app = replay.App("cron", store="memory://")
    fired: list[float] = []

    @app.step()
    def report() -> None:
        fired.append(app.clock.now())

    @app.workflow(trigger=replay.cron("*/5 * * * *"))
    async def every_five(ctx: replay.Context) -> None:
        await report()

    async with env_for(app) as env:
        start = datetime.fromtimestamp(env.now(), UTC)
        assert start.minute % 5 == 0 and start.second == 0  # the virtual clock starts on a tick
        await env.advance(timedelta(minutes=12))
        assert len(await app.list_runs(workflow="every_five")) == 2
        await env.crash()
        await env.crash()  # two restarts in a row start nothing twice
        await env.advance(timedelta(minutes=3))
        assert len(await app.list_runs(workflow="every_five")) == 3  # the 15-minute tick
        await env.crash(down_for=timedelta(minutes=21))  # ticks at 20, 25, 30, 35 fall while down
        await env.idle()
        runs = await app.list_runs(workflow="every_five", limit=100)
        assert all(r.status == "completed" for r in runs)
    stamps = _ticks(runs)
    expected = [(start + timedelta(minutes=5 * k)).strftime("%Y-%m-%dT%H:%M:%SZ") for k in range(1, 8)]
    assert stamps == expected
    assert len(fired) == 7


async def test_two_workers_fire_each_tick_once(env_for: Callable[..., TestEnv]) -> None:
    app = replay.App("cron-two", store="memory://")

    @app.workflow(trigger=replay.cron("* * * * *"))
    async def minutely(ctx: replay.Context) -> None:
        return None

    async with env_for(app) as env, app.worker(worker_id="second"):
        await env.advance(timedelta(minutes=10))
        runs = await app.list_runs(workflow="minutely", limit=100)
    assert len(runs) == len({r.run_id for r in runs}) == 10


def test_bad_cron_expressions_and_zones_are_refused() -> None:
    with pytest.raises(ValueError, match="not a valid cron expression"):
        replay.cron("every five minutes")
    with pytest.raises(ValueError, match="unknown time zone"):
        replay.cron("0 9 * * *", timezone="Mars/Olympus")
    assert replay.cron("0 9 * * *", timezone="Europe/Paris").next_after(0) == 8 * 3600.0
