"""Peak RSS while N workflows sleep (evicted from memory): it should not grow with N.

Each count runs in a fresh process on a fresh SQLite file; the figure is the
process's peak resident set size once every run is suspended.

    python benchmarks/suspended_rss.py [--counts 1000 10000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import report

CHILD = """
import asyncio, resource, sys
from datetime import timedelta
import replay
from replay.stores.sqlite import SqliteStore

app = replay.App("bench-rss", store=SqliteStore({url!r}, durability="normal"))

@app.step()
async def add_one(x: int) -> int:
    return x + 1

@app.workflow()
async def nap(ctx: replay.Context) -> int:
    x = await add_one(0)
    await ctx.sleep(timedelta(days=1))
    return x

async def main():
    async with app.worker() as worker:
        for i in range(0, {n}, 500):
            await asyncio.gather(*(app.start(nap, run_id=f"r{{j}}") for j in range(i, min({n}, i + 500))))
            await worker.wait_idle()
        await worker.wait_idle()
        assert len(worker.drivers) == 0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the check below loads every run
        suspended = len(await app.list_runs(status="suspended", limit={n} + 1))
        assert suspended == {n}, suspended
    print(peak)

asyncio.run(main())
"""


def peak_kib(n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        code = CHILD.format(url=f"sqlite:///{Path(tmp) / 'rss.db'}", n=n)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    peaks = {str(n): round(peak_kib(n) / 1024, 1) for n in args.counts}
    report("RSS suspended", "sqlite", {"peak_rss_mib": peaks})


if __name__ == "__main__":
    main()
