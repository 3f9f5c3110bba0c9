"""W1: start 200 workflows at once, each 10 sequential steps; steps/s until all complete.

    python benchmarks/steps_throughput.py [--store URL] [--workers N] [--runs 200] [--steps 10] [--repeat 3]
                                          [--aged K]

Default store: a fresh SQLite file in a temporary directory, synchronous=FULL.
A PostgreSQL URL gets a fresh schema per run, dropped afterwards. With
``--workers N`` the steps run in N worker processes and this process is only
the client (it starts the runs and waits for their results); without it, one
worker runs in this process. With ``--aged K`` the measured round runs on a
store that already holds K rounds of the workload (K x 200 finished runs, made
by the same worker just before): a store in use, not a new file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from _apps import app, chain
from _common import report
from _postgres import scratch, worker_processes

from replay.stores import open_store


async def once(url: str, runs: int, steps: int, workers: int = 0, aged: int = 0) -> float:
    store = open_store(url)
    await store.open()
    previous = app.use_store(store)
    try:
        with worker_processes(url, workers):
            async with contextlib.AsyncExitStack() as stack:
                if not workers:
                    await stack.enter_async_context(app.worker())
                for _ in range(aged):
                    await round_of(runs, steps)
                started = time.perf_counter()
                await round_of(runs, steps)
                elapsed = time.perf_counter() - started
    finally:
        app.restore_store(previous)
        await store.close()
    return runs * steps / elapsed


async def round_of(runs: int, steps: int) -> None:
    """Start ``runs`` runs of ``steps`` steps at once and wait until all completed."""
    handles = await asyncio.gather(*(app.start(chain, steps) for _ in range(runs)))
    for handle in handles:
        assert await handle.result(timeout=120) == steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default=None)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: one in this process)")
    parser.add_argument("--aged", type=int, default=0, help="rounds run on the store before the measured one")
    args = parser.parse_args()
    rates = []
    for i in range(args.repeat):
        with (
            tempfile.TemporaryDirectory() as tmp,
            scratch(args.store or f"sqlite:///{Path(tmp) / f'w1-{i}.db'}") as url,
        ):
            rates.append(round(asyncio.run(once(url, args.runs, args.steps, args.workers, args.aged))))
    kind = (args.store or "sqlite://").split("://")[0]
    figures = {"workflows": args.runs, "steps": args.steps, "steps_per_s": sorted(rates)[len(rates) // 2]}
    if args.workers:
        figures["worker_processes"] = args.workers
    if args.aged:
        figures["runs_already_in_store"] = args.aged * args.runs
    report("W1 steps/s", kind, figures, runs=[float(r) for r in rates])


if __name__ == "__main__":
    main()
