"""W2: one workflow of 100 sequential steps; median and p99 latency per step.

A step's latency is the time from one step starting to the next one starting:
its result journaled durably (SQLite, synchronous=FULL by default), delivered
to the workflow, and the next step issued and started.

    python benchmarks/step_latency.py [--store URL] [--steps 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
from pathlib import Path

from _apps import app, chain, starts
from _common import report

from replay.stores import open_store


async def once(url: str, steps: int) -> list[float]:
    store = open_store(url)
    await store.open()
    previous = app.use_store(store)
    starts.clear()
    try:
        async with app.worker():
            run = await app.start(chain, steps)
            assert await run.result(timeout=60) == steps
    finally:
        app.restore_store(previous)
        await store.close()
    return [(b - a) * 1000 for a, b in itertools.pairwise(starts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default=None)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    medians, p99s = [], []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            url = args.store or f"sqlite:///{Path(tmp) / f'w2-{i}.db'}"
            gaps = sorted(asyncio.run(once(url, args.steps)))
            medians.append(round(statistics.median(gaps), 4))
            p99s.append(round(gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))], 4))
    kind = (args.store or "sqlite://").split("://")[0]
    figures = {
        "steps": args.steps,
        "median_ms": statistics.median(medians),
        "p99_ms": statistics.median(p99s),
        "medians_ms": medians,
        "p99s_ms": p99s,
    }
    report("W2 step latency", kind, figures)


if __name__ == "__main__":
    main()
