"""``StepRecord``: a step's story, read from a journal, for assertions in tests."""

from __future__ import annotations

from typing import Any

import attrs

from replay import journal as j
from replay.journal import Entry

__all__ = ("StepRecord", "step_records")


@attrs.frozen
class StepRecord:
    """One step of a run, as its journal tells it.

    Attributes:
        name: the step's name.
        args: its arguments.
        attempts: how many attempts are journaled (failed ones and the last).
        status: "completed", "failed" (for good), "retrying" or "running".
        result: its result, once completed.
        error: the last error's type and message (``"ValueError: boom"``), if any.
    """

    name: str
    args: list[Any]
    attempts: int
    status: str
    result: Any = None
    error: str | None = None


def step_records(entries: list[Entry]) -> list[StepRecord]:
    """The steps of a journal, in the order they were scheduled."""
    records: dict[int, dict[str, Any]] = {}
    for e in entries:
        if e.kind == j.STEP_SCHEDULED:
            records[e.seq] = {
                "name": e.data["name"],
                "args": e.data["args"],
                "attempts": 0,
                "status": "running",
            }
        elif e.kind in (j.STEP_COMPLETED, j.STEP_FAILED) and e.data["op"] in records:
            rec = records[e.data["op"]]
            rec["attempts"] = e.data["attempt"]
            if e.kind == j.STEP_COMPLETED:
                rec["status"], rec["result"] = "completed", e.data["result"]
            else:
                err = e.data["error"]
                rec["error"] = f"{err['type']}: {err['message']}"
                rec["status"] = "retrying" if "retry_at" in e.data else "failed"
    return [StepRecord(**rec) for rec in records.values()]
