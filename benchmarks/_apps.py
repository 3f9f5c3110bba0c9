"""The benchmark workloads' workflows: each step is a no-op returning its input + 1."""

from __future__ import annotations

import asyncio

import replay

app = replay.App("bench")


@app.step()
async def add_one(x: int) -> int:
    return x + 1


@app.step()
async def add_one_slowly(x: int) -> int:
    await asyncio.sleep(0.05)
    return x + 1


@app.workflow()
async def chain(ctx: replay.Context, n: int) -> int:
    x = 0
    for _ in range(n):
        x = await add_one(x)
    return x


@app.workflow()
async def slow_chain(ctx: replay.Context, n: int) -> int:
    x = 0
    for _ in range(n):
        x = await add_one_slowly(x)
    return x
