"""Golden journals pin the wire format: a change to it breaks these tests.

`tests/golden/*.jsonl` were written by this release. The tests check that the
same workflow still writes them byte for byte (tracebacks aside, which name
local paths) and that the current code still replays them.
To accept a deliberate format change: REPLAY_UPDATE_GOLDEN=1 pytest tests/core/test_golden.py,
then bump journal.FORMAT_VERSION and describe the change in docs/journal-format.md.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

import replay
from replay.errors import SchemaError
from replay.journal import FORMAT_VERSION, Entry, dump_journal, load_journal
from replay.testing import TestEnv, check_replay
from replay.testing.checks import replay_entries

GOLDEN = Path(__file__).parent.parent / "golden"

app = replay.App("golden", store="memory://")


@app.step(retry=replay.RetryPolicy(max_attempts=2, initial_interval=timedelta(seconds=3), jitter=False))
def reserve(sku: str, fail: bool) -> dict[str, object]:
    info = replay.current_step()
    if fail and info is not None and info.attempt == 1:
        raise LookupError(f"{sku} is out of stock")
    return {"sku": sku, "held": True}


@app.workflow()
async def golden_child(ctx: replay.Context, n: int) -> int:
    return n * 2


@app.workflow()
async def fulfil(ctx: replay.Context, order: str) -> dict[str, object]:
    ctx.patched("v2-audit")
    held = await reserve(f"{order}-sku", True)
    pick = ctx.random()
    await ctx.sleep(timedelta(hours=1))
    paid = await ctx.wait_for_event("paid", match={"order": order}, timeout=timedelta(days=1))
    late = await ctx.wait_for_event("refund", match={"order": order}, timeout=timedelta(minutes=5))
    a, b = await asyncio.gather(ctx.child(golden_child, 1), ctx.child(golden_child, 2))
    try:
        await ctx.step(reserve, "never", False, name="refused", retry=replay.RetryPolicy(max_attempts=1))
        await asyncio.wait_for(ctx.sleep(timedelta(days=9)), timeout=60)
    except TimeoutError:
        pass
    return {"held": held, "pick": round(pick, 6), "paid": paid is not None, "late": late, "kids": [a, b]}


async def _produce() -> dict[str, list[Entry]]:
    random.seed(7)
    async with TestEnv(app) as env:
        run = await app.start(fulfil, "o-9", run_id="golden-1")
        await env.advance(timedelta(hours=1, seconds=3))  # the retry after 3 s, then the hour
        await app.send_event("paid", {"order": "o-9", "cents": 500}, id="evt-paid")
        await env.advance(timedelta(minutes=5))
        await env.advance(timedelta(minutes=1))
        await run.result(timeout=5)
        return {r.run_id: await env.store.read_journal(r.run_id) for r in await app.list_runs()}


def _text(run_id: str, entries: list[Entry]) -> bytes:
    raw = dump_journal(run_id, entries)
    return re.sub(rb'"traceback":"(?:[^"\\]|\\.)*"', b'"traceback":"<traceback>"', raw)


async def test_the_wire_format_is_unchanged() -> None:
    journals = await _produce()
    assert set(journals) == {"golden-1", "golden-1/13", "golden-1/14"}
    for run_id, entries in journals.items():
        path = GOLDEN / f"{run_id.replace('/', '_')}.jsonl"
        text = _text(run_id, entries)
        if os.environ.get("REPLAY_UPDATE_GOLDEN") == "1":
            path.write_bytes(text)
        assert path.read_bytes() == text, f"the journal format changed: see the docstring of {__name__}"


def test_the_golden_journals_still_replay_on_the_current_code() -> None:
    for path in sorted(GOLDEN.glob("*.jsonl")):
        run_id, entries = load_journal(path.read_bytes())
        assert replay_entries(app, run_id, entries) is None, path.name
    kinds = {e.kind for path in GOLDEN.glob("*.jsonl") for e in load_journal(path.read_bytes())[1]}
    assert kinds >= {
        "workflow_started", "patch", "step_scheduled", "step_failed", "step_completed", "side_effect",
        "timer_started", "timer_fired", "wait_started", "event_received", "wait_timed_out",
        "child_started", "child_completed", "workflow_completed",
    }  # fmt: skip


async def test_check_replay_reads_without_writing() -> None:
    async with TestEnv(app) as env:
        await app.start(fulfil, "o-1")
        await env.idle()
        before = {r.run_id: await env.store.read_journal(r.run_id) for r in await app.list_runs()}
        assert await check_replay(app) == []
        after = {r.run_id: await env.store.read_journal(r.run_id) for r in await app.list_runs()}
        assert before == after


def test_a_journal_from_a_newer_release_is_refused() -> None:
    header = orjson.dumps({"format": "replay-journal", "version": FORMAT_VERSION + 1, "run_id": "x"})
    with pytest.raises(SchemaError, match="newer"):
        load_journal(header + b"\n")
    first = orjson.dumps(
        {"seq": 1, "kind": "workflow_started", "at": 0.0, "data": {"journal": FORMAT_VERSION + 1}}
    )
    header = orjson.dumps({"format": "replay-journal", "version": FORMAT_VERSION, "run_id": "x"})
    with pytest.raises(SchemaError, match="upgrade replay"):
        load_journal(header + b"\n" + first + b"\n")
    with pytest.raises(SchemaError, match="not a replay journal"):
        load_journal(b"hello\n")
