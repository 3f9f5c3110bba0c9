"""The benchmark workloads' workflows: each step is a no-op returning its input + 1."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import replay

app = replay.App("bench")

#: When each add_one started (W2 measures the gaps).
starts: list[float] = []


@app.step()
async def add_one(x: int) -> int:
    starts.append(time.perf_counter())
    return x + 1


@app.step()
async def add_one_slowly(x: int) -> int:
    await asyncio.sleep(0.05)
    return x + 1


async def _steps(n: int) -> int:
    x = 0
    for _ in range(n):
        x = await add_one(x)
    return x


@app.workflow()
async def chain(ctx: replay.Context, n: int) -> int:
    return await _steps(n)


@app.workflow()
async def chain_then_sleep(ctx: replay.Context, n: int) -> int:
    x = await _steps(n)
    await ctx.sleep(timedelta(days=1))  # suspended, and so evicted from memory
    return x
