"""W1: start 200 workflows at once, each 10 sequential steps; steps/s until all complete.

    python benchmarks/steps_throughput.py [--store sqlite:///PATH] [--runs 200] [--steps 10] [--repeat 3]

Default store: a fresh SQLite file in a temporary directory, synchronous=FULL.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from _apps import app, chain
from _common import report

from replay.stores import open_store


async def once(url: str, runs: int, steps: int) -> float:
    store = open_store(url)
    await store.open()
    previous = app.use_store(store)
    try:
        async with app.worker():
            started = time.perf_counter()
            handles = await asyncio.gather(*(app.start(chain, steps) for _ in range(runs)))
            for handle in handles:
                assert await handle.result(timeout=120) == steps
            elapsed = time.perf_counter() - started
    finally:
        app.restore_store(previous)
        await store.close()
    return runs * steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default=None)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rates = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            url = args.store or f"sqlite:///{Path(tmp) / f'w1-{i}.db'}"
            rates.append(round(asyncio.run(once(url, args.runs, args.steps))))
    kind = (args.store or "sqlite://").split("://")[0]
    figures = {"workflows": args.runs, "steps": args.steps, "steps_per_s": sorted(rates)[len(rates) // 2]}
    report("W1 steps/s", kind, figures, runs=[float(r) for r in rates])


if __name__ == "__main__":
    main()
