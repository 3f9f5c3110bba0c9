"""``check_replay``: replay stored journals against the current code, before a deploy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from replay import journal as j
from replay._instance import Instance
from replay.errors import NonDeterminismError, ReplayError
from replay.journal import Entry
from replay.stores.base import Store

if TYPE_CHECKING:
    from replay.app import App

__all__ = ("ReplayProblem", "check_replay", "replay_entries")


@attrs.frozen
class ReplayProblem:
    """A stored run the current code cannot replay.

    Attributes:
        run_id: the run.
        workflow: its workflow's name.
        kind: "nondeterminism", "unknown-workflow" or "different-outcome".
        message: the details, such as the side-by-side diff.
    """

    run_id: str
    workflow: str
    kind: str
    message: str


def replay_entries(app: App, run_id: str, entries: list[Entry]) -> ReplayProblem | None:
    """Replay one journal in memory against ``app``'s code; nothing is executed or stored.

    Returns:
        What went wrong, or None if the code matches the journal.
    """
    name = entries[0].data.get("workflow", "?")
    workflow = app.workflows.get(name)
    if workflow is None:
        return ReplayProblem(
            run_id, name, "unknown-workflow", f"workflow {name!r} is not registered on {app!r}"
        )
    last = entries[-1].at
    instance = Instance(run_id, workflow, entries, lambda: last, app.steps.get)
    try:
        instance.replay()
    except NonDeterminismError as exc:
        return ReplayProblem(run_id, name, "nondeterminism", str(exc))
    finally:
        instance.close()
    end = instance.journaled_end
    if end is not None:
        got = instance.outcome
        if (
            got is None
            or got.kind != end.kind
            or (end.kind == j.WORKFLOW_COMPLETED and got.data.get("result") != end.data.get("result"))
        ):
            shown = "still running" if got is None else f"{got.kind} {got.data.get('result')!r}"
            return ReplayProblem(
                run_id,
                name,
                "different-outcome",
                f"journal ends in {end.kind} {end.data.get('result')!r}; the current code gives {shown}",
            )
    return None


async def check_replay(
    app: App, store: Store | None = None, *, limit: int = 1_000_000
) -> list[ReplayProblem]:
    """Replay every stored run, in flight or finished, against ``app``'s current code.

    Nothing runs and nothing is written: the store is left exactly as it was.

    Args:
        app: the app with the code about to be deployed.
        store: the store to read (default: the app's).
        limit: the most runs to check, newest first.

    Returns:
        One ``ReplayProblem`` per run that the current code cannot replay; empty
        when a deploy is safe for every stored run.
    """
    if store is None:
        store = await app.store()
    problems: list[ReplayProblem] = []
    for info in await store.list_runs(limit=limit):
        entries = await store.read_journal(info.run_id)
        if not entries:
            continue
        try:
            problem = replay_entries(app, info.run_id, entries)
        except ReplayError as exc:
            problem = ReplayProblem(info.run_id, info.workflow, "nondeterminism", str(exc))
        if problem is not None:
            problems.append(problem)
    return problems
