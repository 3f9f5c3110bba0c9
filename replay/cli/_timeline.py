"""A run's journal as a timeline: one row per entry, with offsets, step durations, inputs and outputs."""

from __future__ import annotations

from typing import Any

import attrs

from replay import journal as j
from replay.journal import Entry

__all__ = ("Row", "timeline")


@attrs.frozen
class Row:
    """One journal entry, explained.

    Attributes:
        seq: the entry's seq.
        kind: its kind.
        at: when it was journaled (epoch seconds).
        offset: seconds since the run's ``workflow_started``.
        name: the step, event, child workflow or side effect it concerns.
        step: for a step's entries, which step it is, counting ``step_scheduled``
            entries from 1 (the N of ``replay runs fork --from-step N``).
        op: the seq of the command an outcome completes.
        attempt: which attempt of a step.
        duration: for a step's outcome, seconds since its ``step_scheduled``;
            for a timer's or a wait's, since it started.
        input: what went in (workflow or step arguments, a wait's match).
        output: what came out (a result, an event, a drawn value).
        error: an error object, with its traceback.
        note: more, such as when a retry or a timer is due.
    """

    seq: int
    kind: str
    at: float
    offset: float
    name: str | None = None
    step: int | None = None
    op: int | None = None
    attempt: int | None = None
    duration: float | None = None
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON object, without empty fields."""
        return {k: v for k, v in attrs.asdict(self).items() if v is not None}


def _call(data: dict[str, Any]) -> Any:
    args = data.get("args", [])
    return {"args": args, "kwargs": data["kwargs"]} if data.get("kwargs") else args


def timeline(entries: list[Entry]) -> list[Row]:
    """Explain every entry of a journal, in order."""
    if not entries:
        return []
    start = entries[0].at
    commands: dict[int, Entry] = {}
    steps: dict[int, int] = {}  # step_scheduled seq -> step number
    rows: list[Row] = []
    for e in entries:
        d = e.data
        base: dict[str, Any] = {"seq": e.seq, "kind": e.kind, "at": e.at, "offset": e.at - start}
        extra: dict[str, Any] = {}
        if e.kind in j.COMMAND_KINDS:
            commands[e.seq] = e
        if e.kind == j.WORKFLOW_STARTED:
            extra = {"name": d.get("workflow"), "input": d.get("args")}
            notes = []
            if "parent" in d:
                notes.append(f"child of {d['parent']}")
            if "forked_from" in d:
                notes.append(f"forked from {d['forked_from']['run_id']} at step {d['forked_from']['step']}")
            if "deadline" in d:
                notes.append(f"deadline +{d['deadline'] - start:.1f} s")
            extra["note"] = "; ".join(notes) or None
        elif e.kind == j.STEP_SCHEDULED:
            steps[e.seq] = len(steps) + 1
            extra = {"name": d.get("name"), "step": steps[e.seq], "input": _call(d)}
        elif e.kind == j.TIMER_STARTED:
            extra = {"note": f"due +{d['due'] - start:.1f} s" if "due" in d else None}
        elif e.kind == j.WAIT_STARTED:
            timeout = f"; times out +{d['timeout_at'] - start:.1f} s" if "timeout_at" in d else ""
            extra = {"name": d.get("name"), "input": d.get("match"), "note": f"waits for an event{timeout}"}
        elif e.kind == j.CHILD_STARTED:
            extra = {"name": d.get("name"), "input": d.get("args"), "note": f"child run {d.get('run_id')}"}
        elif e.kind in (j.SIDE_EFFECT, j.PATCH):
            extra = {"name": d.get("name"), "output": d.get("value")}
        elif "op" in d:
            cmd = commands.get(d["op"])
            extra = {"op": d["op"], "name": None if cmd is None else cmd.data.get("name")}
            if cmd is not None:
                extra["duration"] = e.at - cmd.at
            if e.kind in (j.STEP_COMPLETED, j.STEP_FAILED):
                extra["attempt"] = d.get("attempt")
                extra["step"] = steps.get(d["op"])
            if e.kind in (j.STEP_COMPLETED, j.CHILD_COMPLETED):
                extra["output"] = d.get("result")
            if e.kind == j.EVENT_RECEIVED:
                extra["output"] = d.get("event")
            if "error" in d:
                extra["error"] = d["error"]
            if "retry_at" in d:
                extra["note"] = f"retry at +{d['retry_at'] - start:.1f} s"
            elif e.kind == j.STEP_FAILED:
                extra["note"] = "failed for good"
        elif e.kind == j.WORKFLOW_COMPLETED:
            extra = {"output": d.get("result"), "duration": e.at - start}
        elif e.kind == j.WORKFLOW_FAILED:
            extra = {"error": d.get("error"), "duration": e.at - start}
        elif e.kind == j.WORKFLOW_CANCELLED:
            extra = {"duration": e.at - start}
        rows.append(Row(**base, **extra))
    return rows
