"""W4: journal events replayed per second when an evicted run is woken.

A run of N sequential no-op steps (each returns its input + 1) then sleeps a
day, so its instance is evicted. The figure is the time to read its journal
from the store, decode it and replay it into a fresh coroutine, up to the
point where the run is live again: entries / seconds. Memory store by default.

    python benchmarks/replay_throughput.py [--steps 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import timedelta

from _apps import app, chain_then_sleep
from _common import report

from replay._instance import Instance
from replay.testing import TestEnv


async def measure(steps: int, repeat: int) -> None:
    async with TestEnv(app) as env:
        run = await app.start(chain_then_sleep, steps, run_id="w4")
        await env.idle()
        assert await run.status() == "suspended"
        rates: list[float] = []
        events = 0
        for i in range(repeat + 1):  # the first round warms up and is not counted
            started = time.perf_counter()
            entries = await env.store.read_journal("w4")
            instance = Instance("w4", chain_then_sleep, entries, env.clock.now, app.steps.get)  # type: ignore[arg-type]
            instance.replay()
            elapsed = time.perf_counter() - started
            assert not instance.replaying and instance.next_seq == len(entries) + 1
            instance.close()
            events = len(entries)
            if i:
                rates.append(round(events / elapsed))
            del instance, entries
        # And once end to end through the worker: wake, replay, finish.
        started = time.perf_counter()
        await env.advance(timedelta(days=1))
        assert await run.result() == steps
        end_to_end = time.perf_counter() - started
    figures = {
        "steps": steps,
        "events": events,
        "events_per_s": sorted(rates)[len(rates) // 2],
        "wake_to_complete_s": round(end_to_end, 4),
    }
    report("W4 replay", "memory", figures, runs=[float(r) for r in rates])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(measure(args.steps, args.repeat))


if __name__ == "__main__":
    main()
