"""A run's journal as a timeline: one span per command, plus instant marks.

The page draws what this returns; keeping the pairing of entries here (rather
than in JavaScript) lets the tests check it without a browser. A span is a
command (step, timer, wait, child) from the entry that issued it to the entry
that ended it; a step's span lists its attempts, so failed attempts and the
retry delays between them are visible. Instants (side effects, patches, the
run's start and end, a cancellation) are marks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from replay import journal as j
from replay.journal import Entry

__all__ = ("timeline",)

_MARK_KINDS = frozenset({j.WORKFLOW_STARTED, j.SIDE_EFFECT, j.PATCH, j.CANCEL_REQUESTED, *j.TERMINAL_KINDS})


def _open_span(entry: Entry) -> dict[str, Any] | None:
    data = entry.data
    base: dict[str, Any] = {"op": entry.seq, "start": entry.at, "end": None}
    if entry.kind == j.STEP_SCHEDULED:
        detail = {"args": data.get("args", [])}
        if "kwargs" in data:
            detail["kwargs"] = data["kwargs"]
        first = {"attempt": 1, "start": entry.at, "end": None, "outcome": "running"}
        return base | {
            "kind": "step",
            "name": data.get("name", "?"),
            "state": "running",
            "detail": detail,
            "attempts": [first],
        }
    if entry.kind == j.TIMER_STARTED:
        return base | {"kind": "timer", "name": "sleep", "state": "waiting", "due": data.get("due")}
    if entry.kind == j.WAIT_STARTED:
        return base | {
            "kind": "wait",
            "name": data.get("name", "?"),
            "state": "waiting",
            "due": data.get("timeout_at"),
            "detail": {"match": data.get("match", {})},
        }
    if entry.kind == j.CHILD_STARTED:
        return base | {
            "kind": "child",
            "name": data.get("name", "?"),
            "state": "running",
            "run_id": data.get("run_id"),
            "detail": {"args": data.get("args", [])},
        }
    return None


def _close_step(span: dict[str, Any], entry: Entry) -> None:
    data = entry.data
    attempts: list[dict[str, Any]] = span["attempts"]
    number = data.get("attempt", len(attempts))
    attempt = next((a for a in attempts if a["attempt"] == number), attempts[-1])
    attempt["end"] = entry.at
    if entry.kind == j.STEP_COMPLETED:
        attempt["outcome"] = "completed"
        span.update(state="completed", end=entry.at)
        span["detail"]["result"] = data.get("result")
        return
    attempt["outcome"] = "failed"
    attempt["error"] = data.get("error")
    if "retry_at" in data:
        attempt["retry_at"] = data["retry_at"]
        attempts.append({"attempt": number + 1, "start": data["retry_at"], "end": None, "outcome": "running"})
    else:
        span.update(state="failed", end=entry.at)
        span["detail"]["error"] = data.get("error")


def _close(span: dict[str, Any], entry: Entry) -> None:
    data = entry.data
    if entry.kind in (j.STEP_COMPLETED, j.STEP_FAILED):
        _close_step(span, entry)
    elif entry.kind == j.TIMER_FIRED:
        span.update(state="fired", end=entry.at)
    elif entry.kind == j.EVENT_RECEIVED:
        span.update(state="received", end=entry.at)
        span["detail"]["event"] = data.get("event")
    elif entry.kind == j.WAIT_TIMED_OUT:
        span.update(state="timed_out", end=entry.at)
    elif entry.kind == j.CHILD_COMPLETED:
        status = data.get("status", "completed")
        span.update(state=status, end=entry.at)
        span["detail"]["result" if status == "completed" else "error"] = data.get(
            "result" if status == "completed" else "error"
        )


def _mark(entry: Entry) -> dict[str, Any]:
    data = entry.data
    label = entry.kind.replace("_", " ")
    if entry.kind == j.SIDE_EFFECT:
        label = f"{data.get('name', 'side effect')} = {data.get('value')!r}"
    elif entry.kind == j.PATCH:
        label = f"patch {data.get('name', '?')}"
    return {"seq": entry.seq, "kind": entry.kind, "at": entry.at, "label": label}


def timeline(entries: Sequence[Entry]) -> dict[str, Any]:
    """Pair a journal's entries into spans and marks for drawing.

    Args:
        entries: a run's journal, in order.

    Returns:
        A dict with ``start`` and ``end`` (the first and last entry's time, or
        None for an empty journal), ``finished`` (whether the journal has a
        terminal entry), ``spans`` (one per step, timer, wait and child, in the
        order issued: ``op``, ``kind``, ``name``, ``start``, ``end`` (None while
        still open), ``state``, and per kind ``step`` (a step's number, from 1),
        ``attempts``, ``due``, ``run_id``, ``detail``) and ``marks`` (instants:
        ``seq``, ``kind``, ``at``, ``label``).
    """
    spans: dict[int, dict[str, Any]] = {}
    steps = 0
    marks: list[dict[str, Any]] = []
    finished = False
    for entry in entries:
        span = _open_span(entry)
        if span is not None:
            if span["kind"] == "step":
                steps += 1
                span["step"] = steps  # what App.fork's from_step counts
            spans[entry.seq] = span
        elif "op" in entry.data and entry.data["op"] in spans:
            _close(spans[entry.data["op"]], entry)
        if entry.kind in _MARK_KINDS:
            marks.append(_mark(entry))
        finished = finished or entry.kind in j.TERMINAL_KINDS
    if finished:
        # A span still open when the run ended was abandoned (a timer a
        # wait_for outran, a step cut off by a cancellation): it ends there.
        for span in spans.values():
            if span["end"] is None:
                span.update(state="abandoned", end=entries[-1].at)
                for attempt in span.get("attempts", ()):
                    if attempt["end"] is None:
                        attempt.update(end=entries[-1].at, outcome="abandoned")
    return {
        "start": entries[0].at if entries else None,
        "end": entries[-1].at if entries else None,
        "finished": finished,
        "spans": list(spans.values()),
        "marks": marks,
    }
