"""``App.retry`` and ``App.fork``: new life for failed runs, from their journals."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from replay import journal as j
from replay._ids import new_id
from replay.errors import RunNotFound
from replay.handle import RunHandle
from replay.journal import Entry
from replay.stores.base import NO_FLOW, NewRun

if TYPE_CHECKING:
    from replay.app import App

__all__ = ("fork", "retry")


async def retry(app: App, run_id: str) -> RunHandle[Any]:
    """See ``App.retry``."""
    store = await app.store()
    info = await store.get_run(run_id)
    if info is None:
        raise RunNotFound(f"no run with id {run_id!r}")
    if info.status != "failed":
        raise ValueError(f"run {run_id!r} is {info.status}: only a failed run can be retried")
    journal = await store.read_journal(run_id)
    if not (journal and journal[-1].kind in j.TERMINAL_KINDS):
        await store.requeue(run_id, app.clock.now())  # parked
        return RunHandle(app, run_id)
    failed = {e.data["op"] for e in journal if e.kind == j.STEP_FAILED and "retry_at" not in e.data}
    scheduled = [e.seq for e in journal if e.kind == j.STEP_SCHEDULED]
    step = next((n for n, seq in enumerate(scheduled, 1) if seq in failed), None)
    if step is None:
        raise ValueError(
            f"run {run_id!r} failed in the workflow's own code, not in a step: "
            "fix it, then fork the run from a step or start it again"
        )
    n = 1
    while await store.get_run(f"{run_id}-retry-{n}") is not None:
        n += 1
    return await fork(app, run_id, step, f"{run_id}-retry-{n}")


async def fork(app: App, source_id: str, from_step: int, run_id: str | None) -> RunHandle[Any]:
    """See ``App.fork``."""
    if isinstance(from_step, bool) or not isinstance(from_step, int) or from_step < 1:
        raise ValueError(f"from_step counts steps from 1, got {from_step!r}")
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise ValueError(f"run_id must be a non-empty str, got {run_id!r}")
    store = await app.store()
    info = await store.get_run(source_id)
    if info is None:
        raise RunNotFound(f"no run with id {source_id!r}")
    journal = await store.read_journal(source_id)
    steps = [i for i, e in enumerate(journal) if e.kind == j.STEP_SCHEDULED]
    if from_step > len(steps):
        raise ValueError(
            f"run {source_id!r} has {len(steps)} step(s) in its journal; "
            f"from_step must be between 1 and {len(steps)}, got {from_step}"
        )
    prefix = journal[: steps[from_step - 1]]
    started = prefix[0]
    now = app.clock.now()
    data = {k: v for k, v in started.data.items() if k != "parent"}
    data["forked_from"] = {"run_id": source_id, "step": from_step}
    if "deadline" in data:
        data["deadline"] = now + (data["deadline"] - started.at)
    first = Entry(started.seq, started.kind, started.at, data)
    fork_id = run_id or new_id()
    # The new run queues like any other run of its workflow (concurrency, priority,
    # throttle, cancel_on); it is neither debounced nor dropped by a rate limit.
    workflow = app.workflows.get(info.workflow)
    flow = (
        NO_FLOW if workflow is None else attrs.evolve(workflow.flow(info.args, child=True), rate_limit=None)
    )
    new = NewRun(
        fork_id, info.workflow, info.args, first, journal=tuple(prefix[1:]), created_at=now, flow=flow
    )
    _, created = await store.create_run(new)
    if not created:
        raise ValueError(f"a run with id {fork_id!r} already exists; pick another run_id")
    return RunHandle(app, fork_id)
