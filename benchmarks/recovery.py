"""W3: 200 workflows of 20 steps, each step sleeping 50 ms; kill -9 the worker
process ~1 s in; start a fresh one; seconds from its start until all complete.

Also counted: steps whose completion was journaled before the kill and that
ran again (must be 0), and steps in flight at the kill that ran again.

    python benchmarks/recovery.py [--store URL] [--workers N] [--runs 200] [--steps 20]
                                  [--kill-after 1.0] [--repeat 3]

Default store: a fresh SQLite file. A PostgreSQL URL gets a fresh schema per run,
dropped afterwards; there, ``--workers N`` runs N worker processes from the
start and kills the first one, so N - 1 survivors and the fresh process finish
the work. The killed worker's runs wait out its lease (``?lease=``, 5 s by
default) before anyone may take them over.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import report
from _postgres import is_postgres, scratch

from replay.journal import decode_entries

HERE = Path(__file__).parent

WORKER = """
import asyncio, os, sys, time
sys.path.insert(0, {here!r})
import replay

app = replay.App("bench-recovery", store={url!r})
log = open({log!r}, "a", buffering=1)

@app.step()
async def add_one_slowly(x: int) -> int:
    info = replay.current_step()
    log.write(f"{{info.run_id}} {{info.seq}} {{info.attempt}}\\n")
    await asyncio.sleep(0.05)
    return x + 1

@app.workflow()
async def slow_chain(ctx: replay.Context, n: int) -> int:
    x = 0
    for _ in range(n):
        x = await add_one_slowly(x)
    return x

async def main():
    async with app.worker():
        if {start!r}:
            await asyncio.gather(*(app.start(slow_chain, {steps}, run_id=f"r{{i}}") for i in range({runs})))
        print("ready", time.time(), flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def spawn(url: str, log: Path, runs: int, steps: int, start: bool) -> tuple[subprocess.Popen[str], float]:
    code = WORKER.format(here=str(HERE), url=url, log=str(log), start=start, runs=runs, steps=steps)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line and line[0] == "ready", line
    return proc, time.time()


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    """The rows of a read of the store at ``url``, without going through replay."""
    if not is_postgres(url):
        with sqlite3.connect(f"file:{url.split(':///', 1)[1]}?mode=ro", uri=True) as conn:
            return conn.execute(sql).fetchall()
    import asyncpg

    from replay.stores.postgres import parse_url

    async def fetch() -> list[tuple[object, ...]]:
        dsn, options = parse_url(url)
        conn = await asyncpg.connect(dsn, server_settings={"search_path": options["schema"]})
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def completed(url: str) -> set[tuple[str, int]]:
    done = set()
    for run_id, entry in _rows(url, "SELECT run_id, entry FROM journal"):
        # A SQLite row may hold several entries, joined by commas (one append's).
        for e in decode_entries([bytes(entry)]):  # type: ignore[arg-type]
            if e.kind == "step_completed":
                done.add((str(run_id), e.data["op"]))
    return done


def finished(url: str) -> int:
    [(n,)] = _rows(url, "SELECT COUNT(*) FROM runs WHERE status = 'completed'")
    return int(n)  # type: ignore[call-overload]


def once(store: str | None, workers: int, runs: int, steps: int, kill_after: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, scratch(store or f"sqlite:///{Path(tmp) / 'w3.db'}") as url:
        log = Path(tmp) / "steps.log"
        first, _ = spawn(url, log, runs, steps, start=True)
        others = [spawn(url, log, runs, steps, start=False)[0] for _ in range(workers - 1)]
        time.sleep(kill_after)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        before = log.read_text().splitlines()
        done = completed(url)
        second, ready = spawn(url, log, runs, steps, start=False)
        while finished(url) < runs:
            time.sleep(0.005)
        recovery = time.time() - ready
        for proc in (second, *others):
            proc.kill()
            proc.wait()
        after = log.read_text().splitlines()[len(before) :]
    rerun_completed = sum(1 for line in after if (line.split()[0], int(line.split()[1])) in done)
    in_flight = {(x.split()[0], int(x.split()[1])) for x in before} - done
    rerun_in_flight = sum(1 for line in after if (line.split()[0], int(line.split()[1])) in in_flight)
    return {
        "recovery_s": round(recovery, 3),
        "completed_before_kill": len(done),
        "completed_steps_rerun": rerun_completed,
        "in_flight_steps_rerun": rerun_in_flight,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--kill-after", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--store", default=None)
    parser.add_argument("--workers", type=int, default=1, help="worker processes before the kill")
    args = parser.parse_args()
    results = [
        once(args.store, args.workers, args.runs, args.steps, args.kill_after) for _ in range(args.repeat)
    ]
    figures = {
        "workflows": args.runs,
        "steps": args.steps,
        "recovery_s": statistics.median(r["recovery_s"] for r in results),
        "completed_steps_rerun": max(r["completed_steps_rerun"] for r in results),
        "in_flight_steps_rerun": [r["in_flight_steps_rerun"] for r in results],
        "completed_before_kill": [r["completed_before_kill"] for r in results],
        "recoveries_s": [r["recovery_s"] for r in results],
    }
    if args.workers > 1:
        figures["worker_processes"] = args.workers
    report("W3 recovery", (args.store or "sqlite://").split("://")[0], figures)


if __name__ == "__main__":
    main()
