"""The app the CLI tests run: ``tests.cli.flows:app``, in-process and in a worker process.

Steps record each execution in ``ran`` and, when ``REPLAY_TEST_DIR`` is set,
as a line of ``ran.txt`` there, so a test can count executions across processes.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from datetime import timedelta

import replay

app = replay.App("cli-flows")  # REPLAY_STORE, as a worker process would use it
ran: list[str] = []
broken: set[str] = set()
not_an_app = object()


def _record(what: str) -> pathlib.Path | None:
    ran.append(what)
    folder = os.environ.get("REPLAY_TEST_DIR")
    if folder is None:
        return None
    path = pathlib.Path(folder)
    with open(path / "ran.txt", "a") as f:
        f.write(what + "\n")
    return path


@app.step(retry=replay.RetryPolicy(max_attempts=1))
def letter(name: str) -> str:
    _record(name)
    if name in broken:
        raise ValueError(f"{name} is broken")
    return name.upper()


@app.workflow()
async def letters(ctx: replay.Context) -> list[str]:
    return [await letter(n) for n in "abcd"]


@app.workflow()
async def napper(ctx: replay.Context) -> str:
    await ctx.sleep(timedelta(days=1))
    return "rested"


@app.workflow()
async def shipper(ctx: replay.Context, order_id: str) -> bool:
    event = await ctx.wait_for_event("order.shipped", match={"order_id": order_id})
    return event is not None


@app.step()
async def gate(name: str) -> str:
    """Touch ``started``, then wait for ``release`` to exist (the test's go-ahead)."""
    folder = _record(f"gate {name}")
    assert folder is not None
    (folder / "started").touch()
    while not (folder / "release").exists():
        await asyncio.sleep(0.01)
    _record(f"gate {name} done")
    return name


@app.workflow()
async def gated(ctx: replay.Context) -> list[str]:
    return [await gate("one"), await letter("after")]


empty = replay.App("cli-empty")  # registers nothing

misplaced = replay.App("cli-misplaced", store="sqlite:relative.db")  # a typo: one slash, no path
misplaced.workflow(name="noop")(letters.fn)
