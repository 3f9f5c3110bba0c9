"""A worker process for test_postgres_processes: one of several on one PostgreSQL schema.

    python -m tests.recovery.postgres_worker URL LOG

It works on the runs of ``steps`` (started by the test process, which is the
client) until all RUNS runs are complete, then exits 0. Each step attempt
appends ``start run_id seq attempt pid time`` to LOG before it sleeps for real,
and ``end run_id seq attempt pid time`` after, so the logs of all processes
tell which process ran which step when. A process killed mid-step leaves a
start with no end.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import replay

RUNS = 24
STEPS = 8
STEP_SECONDS = 0.1


def run_ids() -> list[str]:
    return [f"run-{i:02d}" for i in range(RUNS)]


def expected_result(run_id: str) -> list[str]:
    return [f"{run_id}/{k}" for k in range(STEPS)]


def build(url: str, log: str) -> tuple[replay.App, Any]:
    app = replay.App("pg-processes", store=url)

    def note(what: str, info: replay.StepInfo) -> None:
        with open(log, "a") as f:
            f.write(f"{what} {info.run_id} {info.seq} {info.attempt} {os.getpid()} {time.time():.6f}\n")

    @app.step()
    async def work(run_id: str, k: int) -> str:
        info = replay.current_step()
        assert info is not None
        note("start", info)
        await asyncio.sleep(STEP_SECONDS)  # mid-step: a kill or a restart now leaves it in flight
        note("end", info)
        return f"{run_id}/{k}"

    @app.workflow()
    async def steps(ctx: replay.Context) -> list[str]:
        return [await work(ctx.run_id, k) for k in range(STEPS)]

    return app, steps


async def main(url: str, log: str) -> None:
    app, _ = build(url, log)
    try:
        async with app.worker():
            print("ready", flush=True)
            for run_id in run_ids():
                await app.get_run(run_id).result()
    finally:
        await app.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
