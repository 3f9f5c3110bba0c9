"""The operations a workflow instance waits on: steps, timers, event waits, children."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import attrs

from replay.policies import RetryPolicy

__all__ = ("ChildOp", "InstanceClosed", "Op", "StepOp", "TimerOp", "WaitOp")


@attrs.define(eq=False)
class StepOp:
    """A step the workflow is waiting on."""

    seq: int
    name: str
    step: Callable[..., Any] | None
    args: list[Any]
    kwargs: dict[str, Any]
    retry: RetryPolicy
    timeout: float | None
    future: asyncio.Future[Any]
    attempts: int = 0  # attempts journaled
    retry_at: float | None = None
    started: int = 0  # the latest attempt begun in this process


@attrs.define(eq=False)
class TimerOp:
    """A durable timer: from ``ctx.sleep`` (a future) or the loop's ``call_at`` (a handle)."""

    seq: int
    due: float
    future: asyncio.Future[None] | None = None
    handle: asyncio.TimerHandle | None = None


@attrs.define(eq=False)
class WaitOp:
    """A wait for an event."""

    seq: int
    name: str
    match: dict[str, Any]
    timeout_at: float | None
    future: asyncio.Future[Any]


@attrs.define(eq=False)
class ChildOp:
    """A child run the workflow is waiting on."""

    seq: int
    workflow: str
    run_id: str
    args: list[Any]
    future: asyncio.Future[Any]


Op = StepOp | TimerOp | WaitOp | ChildOp


class InstanceClosed(BaseException):
    """Raised into workflow code that runs while its instance is being closed."""
