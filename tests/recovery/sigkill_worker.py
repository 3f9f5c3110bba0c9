"""A worker process for test_sigkill, to be killed with SIGKILL and started again.

    python -m tests.recovery.sigkill_worker DB LOG [--kill-in-group N REPORT] [--hang]

It starts RUNS runs of a STEPS-step workflow on the SQLite file DB (starts are
idempotent: a second process finds the runs the first one made), works on them
with a worker that keeps MAX_HOT runs in memory at once, and exits 0 once all are
complete. Each step attempt first appends ``run_id:seq:attempt`` to LOG (fsynced),
then sleeps 20 ms for real, so a kill mostly lands while steps are in flight.
With ``--hang``, step HANG_AT of the first run sleeps for an hour instead: a kill
after it is logged certainly finds it in flight, however slow the machine.

With ``--kill-in-group N`` the process kills itself with SIGKILL inside the SQLite
writer, right before the COMMIT of the first group from the Nth on whose journal
rows span at least two runs. Before dying it writes REPORT, a JSON object with the
journal rows, as ``[run_id, seq, kind]``, that were committed before that group
("before") and those the group's transaction saw ("inside").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
from collections.abc import Callable
from typing import Any

import replay
from replay.journal import decode_entries
from replay.stores import _sqlite_writer

RUNS = 30
STEPS = 5
MAX_HOT = 10
STEP_SECONDS = 0.02
#: With ``--hang``: the run and step (its seq, as logged) that never finishes.
HANG_AT = ("run-00", 6)


def run_ids() -> list[str]:
    return [f"run-{i:02d}" for i in range(RUNS)]


def expected_result(run_id: str) -> list[str]:
    return [f"{run_id}/{k}" for k in range(STEPS)]


def build(db: str, log: str, hang: bool = False) -> tuple[replay.App, Any]:
    app = replay.App("sigkill", store=f"sqlite:///{db}")

    @app.step()
    async def work(run_id: str, k: int) -> str:
        info = replay.current_step()
        assert info is not None
        with open(log, "a") as f:
            f.write(f"{info.run_id}:{info.seq}:{info.attempt}\n")
            f.flush()
            os.fsync(f.fileno())
        if hang and (info.run_id, info.seq) == HANG_AT:
            await asyncio.sleep(3600)  # until the kill
        await asyncio.sleep(STEP_SECONDS)  # mid-step: a kill now leaves the step in flight
        return f"{run_id}/{k}"

    @app.workflow()
    async def steps(ctx: replay.Context) -> list[str]:
        return [await work(ctx.run_id, k) for k in range(STEPS)]

    return app, steps


def journal_rows(conn: sqlite3.Connection) -> list[list[Any]]:
    rows = conn.execute("SELECT run_id, entry FROM journal ORDER BY run_id, seq").fetchall()
    return [[run_id, e.seq, e.kind] for run_id, blob in rows for e in decode_entries([blob])]


def kill_in_group(db: str, first: int, report: str) -> Callable[[sqlite3.Connection, int], None]:
    groups = 0

    def hook(conn: sqlite3.Connection, jobs: int) -> None:
        nonlocal groups
        groups += 1
        if groups < first:
            return
        inside = journal_rows(conn)  # the writer's transaction: committed rows and the group's
        other = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            before = journal_rows(other)  # another connection: committed rows only
        finally:
            other.close()
        added = {tuple(row) for row in inside} - {tuple(row) for row in before}
        if len({run_id for run_id, _, _ in added}) < 2:
            return
        with open(report, "w") as f:
            json.dump({"group": groups, "jobs": jobs, "before": before, "inside": inside}, f)
            f.flush()
            os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    return hook


async def main(db: str, log: str, hang: bool) -> None:
    app, steps = build(db, log, hang)
    try:
        async with app.worker(max_runs=MAX_HOT):
            handles = await asyncio.gather(*(app.start(steps, run_id=run_id) for run_id in run_ids()))
            for handle in handles:
                assert await handle.result() == expected_result(handle.run_id)
    finally:
        await app.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("log")
    parser.add_argument("--kill-in-group", nargs=2, metavar=("N", "REPORT"))
    parser.add_argument("--hang", action="store_true")
    args = parser.parse_args()
    if args.kill_in_group is not None:
        _sqlite_writer.before_commit = kill_in_group(
            args.db, int(args.kill_in_group[0]), args.kill_in_group[1]
        )
    asyncio.run(main(args.db, args.log, args.hang))
