"""Generated workflow programs: a small language that the `prog` workflow interprets.

A program is a JSON tree:

    ["step", label, fail_times]        a step failing its first `fail_times` attempts (3 = for good)
    ["sleep", label, seconds, how]     ctx.sleep or asyncio.sleep
    ["wait", label, send, timeout]     wait for event "ev" {"label": label}; the harness sends it iff `send`
    ["random", label]                  ctx.random(), a recorded side effect
    ["seq", [node, ...]]               one after another
    ["gather", [node, ...]]            asyncio.gather of the branches, interleaving
    ["timeout", label, node]           asyncio.wait_for(node, 1 day)
    ["child", label, node]             ctx.child(prog, node)
    ["limited", label, node]           ctx.child(limited, node): one at a time, throttled, prioritised
    ["doomed", label]                  ctx.child(doomed): fails, and its on_failure handler runs a step

The output is a list of strings that does not depend on how branches interleave.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from hypothesis import strategies as st

import replay

app = replay.App("programs", store="memory://")

RETRY = replay.RetryPolicy(max_attempts=3, initial_interval=timedelta(seconds=5), jitter=False)


@app.step()
def prog_step(label: str, fail_times: int) -> str:
    info = replay.current_step()
    assert info is not None
    if info.attempt <= fail_times:
        raise ValueError(f"{label} fails attempt {info.attempt}")
    return f"{label}@{info.attempt}"


async def interpret(ctx: replay.Context, node: list[Any], out: list[Any]) -> None:
    kind = node[0]
    if kind == "step":
        try:
            out.append(await ctx.step(prog_step, node[1], node[2], retry=RETRY))
        except replay.StepFailed as exc:
            out.append(f"{node[1]} failed after {exc.attempts}")
    elif kind == "sleep":
        if node[3] == "ctx":
            await ctx.sleep(node[2])
        else:
            await asyncio.sleep(node[2])
        out.append(f"{node[1]} slept")
    elif kind == "wait":
        event = await ctx.wait_for_event("ev", match={"label": node[1]}, timeout=node[3])
        out.append(f"{node[1]} {'got' if event else 'timed out'}")
    elif kind == "random":
        assert 0 <= ctx.random() < 1
        out.append(f"{node[1]} random")
    elif kind == "seq":
        for child in node[1]:
            await interpret(ctx, child, out)
    elif kind == "gather":
        branches: list[list[Any]] = [[] for _ in node[1]]
        await asyncio.gather(*(interpret(ctx, c, b) for c, b in zip(node[1], branches, strict=True)))
        for branch in branches:
            out.extend(branch)
    elif kind == "timeout":
        inner: list[Any] = []
        await asyncio.wait_for(interpret(ctx, node[2], inner), timeout=86400)
        out.append([node[1], inner])
    elif kind == "child":
        out.append([node[1], await ctx.child(prog, node[2])])
    elif kind == "limited":
        out.append([node[1], await ctx.child(limited, node[2])])
    elif kind == "doomed":
        try:
            # Its id, which its on_failure handler receives, must not depend on how
            # branches interleave: labels are unique in a program.
            await ctx.child(doomed, node[1], run_id=f"doomed-{node[1]}")
        except replay.WorkflowFailed as exc:
            out.append(f"{node[1]} doomed: {exc}")
    else:
        raise AssertionError(f"unknown node {node!r}")


@app.workflow()
async def prog(ctx: replay.Context, program: list[Any]) -> list[Any]:
    out: list[Any] = []
    await interpret(ctx, program, out)
    return out


@app.workflow(
    concurrency=replay.Concurrency(1),
    throttle=replay.Throttle(2, timedelta(minutes=1)),
    priority=lambda program: len(program),
    cancel_on=replay.CancelOn("never-sent"),
)
async def limited(ctx: replay.Context, program: list[Any]) -> list[Any]:
    out: list[Any] = []
    await interpret(ctx, program, out)
    return out


@app.step()
def mourn(run_id: str, message: str) -> str:
    return f"mourned {run_id}: {message}"


@app.workflow()
async def mourner(ctx: replay.Context, run_id: str, error: dict[str, Any]) -> str:
    return await mourn(run_id, error["message"])


@app.workflow(on_failure=mourner)
async def doomed(ctx: replay.Context, label: str) -> None:
    raise ValueError(f"{label} was doomed")


_leaf = st.one_of(
    st.tuples(st.just("step"), st.sampled_from([0, 0, 0, 1, 2, 3])),
    st.tuples(st.just("sleep"), st.sampled_from([1, 30, 3600]), st.sampled_from(["ctx", "asyncio"])),
    st.tuples(st.just("wait"), st.booleans(), st.sampled_from([None, 60])),
    st.tuples(st.just("random")),
    st.tuples(st.just("doomed")),
)


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.tuples(st.just("seq"), st.lists(children, min_size=1, max_size=3)),
        st.tuples(st.just("gather"), st.lists(children, min_size=2, max_size=3)),
        st.tuples(st.just("timeout"), children),
        st.tuples(st.just("child"), children),
        st.tuples(st.just("limited"), children),
    )


def _label(raw: Any, counter: list[int]) -> list[Any]:
    """Give every node a unique label; a wait that nobody answers gets a timeout."""
    kind = raw[0]
    counter[0] += 1
    label = f"n{counter[0]}"
    if kind == "step":
        return ["step", label, raw[1]]
    if kind == "sleep":
        return ["sleep", label, raw[1], raw[2]]
    if kind == "wait":
        send, timeout = raw[1], raw[2]
        return ["wait", label, send, timeout if (timeout is not None or send) else 60]
    if kind in ("random", "doomed"):
        return [kind, label]
    if kind in ("seq", "gather"):
        return [kind, [_label(c, counter) for c in raw[1]]]
    return [kind, label, _label(raw[1], counter)]


programs = st.recursive(_leaf, _extend, max_leaves=8).map(lambda raw: _label(raw, [0]))


def sent_labels(node: list[Any]) -> set[str]:
    """Labels of the waits the harness answers."""
    kind = node[0]
    if kind == "wait":
        return {node[1]} if node[2] else set()
    if kind in ("seq", "gather"):
        return set().union(*(sent_labels(c) for c in node[1]))
    if kind in ("timeout", "child", "limited"):
        return sent_labels(node[2])
    return set()


def responder(program: list[Any]) -> Any:
    """What explore_crashes should send for this program's waits."""
    answer = sent_labels(program)

    def respond(name: str, match: dict[str, Any]) -> dict[str, Any] | None:
        return dict(match) if match.get("label") in answer else None

    return respond
