"""The arithmetic of flow control that every store shares (see ``replay.stores.base``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from replay import journal as j
from replay.journal import Entry
from replay.stores.base import DebounceRule, Gate

__all__ = ("debounce_wake", "dropped", "not_begun", "throttle_begin")


def throttle_begin(at: float, begins: Sequence[float], gate: Gate) -> float:
    """When a run started at ``at`` may begin under ``gate``.

    Args:
        at: the start's time.
        begins: the begin times already given under the gate's key, latest first
            (at least the ``limit`` latest).
        gate: the throttle.
    """
    if len(begins) < gate.limit:
        return at
    return max(at, begins[gate.limit - 1] + gate.period)


def debounce_wake(at: float, rule: DebounceRule, first_at: float) -> float:
    """When a debounced run begins after a start at ``at``; its first start was at ``first_at``."""
    wake = at + rule.period
    if rule.timeout is not None:
        wake = min(wake, first_at + rule.timeout)
    return wake


def dropped(run_id: str, first: Entry, gate: Gate) -> tuple[Entry, dict[str, Any]]:
    """The ``workflow_cancelled`` entry and the error of a start dropped by a rate limit."""
    message = (
        f"run {run_id!r} was not started: rate limit of {gate.limit} per {gate.period:g} s "
        f"reached for key {gate.key!r}"
    )
    entry = Entry(first.seq + 1, j.WORKFLOW_CANCELLED, first.at, {"reason": "rate_limit", "message": message})
    return entry, {"type": "Cancelled", "message": message}


def not_begun(run_id: str, at: float) -> Entry:
    """The ``workflow_cancelled`` entry (seq 2) of a run cancelled before any worker began it."""
    return Entry(2, j.WORKFLOW_CANCELLED, at, {"reason": "cancelled before it began"})
