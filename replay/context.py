"""``Context``: what a workflow uses to reach the outside world, durably."""

from __future__ import annotations

import asyncio
import logging
import random as random_module
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, overload

from replay.journal import round_trip
from replay.policies import DEFAULT_RETRY, RetryPolicy

if TYPE_CHECKING:
    from replay._instance import Instance
    from replay.app import Event, WorkflowDef

__all__ = ("Context",)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_logger = logging.getLogger("replay.workflow")


class _ReplayAwareLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger that says nothing while its run is replaying."""

    def __init__(self, instance: Instance) -> None:
        super().__init__(_logger, {"run_id": instance.run_id})
        self._instance = instance

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's name
        return not self._instance.replaying and super().isEnabledFor(level)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[{self._instance.run_id}] {msg}", kwargs


def _seconds(value: timedelta | float, what: str) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{what} must be a timedelta or a number of seconds, got {value!r}")


def step_name(fn: Callable[..., Any]) -> str:
    """The name a step is journaled under: its registered name, else its qualified name."""
    name = getattr(fn, "step_name", None)
    if isinstance(name, str):
        return name
    return f"{fn.__module__}.{fn.__qualname__}"


class Context:
    """The workflow's handle on durable operations; passed as its first argument.

    Every method that waits returns an awaitable whose outcome is journaled: on
    replay it is read back instead of being done again.
    """

    def __init__(self, instance: Instance) -> None:
        self._instance = instance
        self.log: logging.LoggerAdapter[logging.Logger] = _ReplayAwareLogger(instance)
        """A logger that stays silent while the run replays its journal."""

    @property
    def run_id(self) -> str:
        """This run's id."""
        return self._instance.run_id

    @property
    def attempt(self) -> int:
        """Which attempt of the whole run this is, from 1."""
        return int(self._instance.started.data.get("attempt", 1))

    @property
    def is_replaying(self) -> bool:
        """Whether the workflow is re-running code whose outcome is already journaled."""
        return self._instance.replaying

    @overload
    def step(
        self,
        fn: Callable[[*Ts], Awaitable[T]],
        *args: *Ts,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
    ) -> asyncio.Future[T]: ...

    @overload
    def step(
        self,
        fn: Callable[[*Ts], T],
        *args: *Ts,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
    ) -> asyncio.Future[T]: ...

    def step(  # type: ignore[misc]
        self,
        fn: Callable[..., Any],
        *args: Any,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
    ) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` once and journal its result (or its final error).

        ``fn`` may be sync (it runs in a worker thread) or async, registered with
        ``@app.step`` or not. Its arguments and result must be JSON values; the
        workflow receives the result as it reads back from JSON.

        Args:
            fn: the function.
            *args: its arguments.
            name: the name to journal it under (default: the step's name).
            retry: overrides the step's retry policy.
            timeout: overrides the step's timeout, per attempt.

        Returns:
            A future of the result. It raises ``StepFailed`` if the step fails for good.

        Raises:
            SerializationError: an argument is not a JSON value (nothing is journaled).
        """
        return self._step(fn, args, {}, name, retry, timeout)

    def _step(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None,
        retry: RetryPolicy | None,
        timeout: timedelta | None,
    ) -> asyncio.Future[Any]:
        policy = retry or getattr(fn, "retry", None) or self._instance.workflow.retry or DEFAULT_RETRY
        if timeout is None:
            timeout = getattr(fn, "timeout", None)
        return self._instance.issue_step(name or step_name(fn), fn, args, kwargs, policy, timeout)

    def sleep(self, delta: timedelta | float) -> asyncio.Future[None]:
        """A durable timer: wait ``delta`` (a timedelta or seconds), surviving restarts."""
        seconds = _seconds(delta, "sleep's delta")
        op = self._instance.issue_timer(self._instance.loop.time() + max(0.0, seconds))
        assert op.future is not None
        return op.future

    def sleep_until(self, when: datetime) -> asyncio.Future[None]:
        """A durable timer until ``when`` (an aware datetime; naive means UTC)."""
        if not isinstance(when, datetime):
            raise TypeError(f"sleep_until takes a datetime, got {when!r}")
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        op = self._instance.issue_timer(max(when.timestamp(), self._instance.loop.time()))
        assert op.future is not None
        return op.future

    def wait_for_event(
        self,
        name: str,
        match: dict[str, Any] | None = None,
        timeout: timedelta | float | None = None,
    ) -> asyncio.Future[Event | None]:
        """Wait for the first event called ``name`` whose data contains ``match``.

        Only events sent after the wait began count. The wait begins once it is
        journaled, which the worker does before the run waits.

        Args:
            name: the event's name.
            match: key/value pairs the event's data must contain (nested dicts
                match by containment too).
            timeout: give up after this long (a timedelta or seconds).

        Returns:
            A future of the ``Event``, or of ``None`` on timeout.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"an event name must be a non-empty str, got {name!r}")
        plain_match = round_trip(match or {}, "an event match")
        if not isinstance(plain_match, dict):
            raise TypeError(f"match must be a dict, got {match!r}")
        timeout_at = None
        if timeout is not None:
            timeout_at = self._instance.loop.time() + _seconds(timeout, "timeout")
        return self._instance.issue_wait(name, plain_match, timeout_at)

    def child(
        self, workflow: WorkflowDef[Any, T], *args: Any, run_id: str | None = None
    ) -> asyncio.Future[T]:
        """Start a child run of ``workflow`` and wait for its result.

        Args:
            workflow: a workflow registered on the same app.
            *args: its arguments.
            run_id: the child's run id; by default derived from this run's id, so
                the start is idempotent.

        Returns:
            A future of the child's result; it raises the child's error if it fails.

        Raises:
            TypeError: ``workflow`` is not a workflow, or its parameters do not take ``args``.
            SerializationError: an argument is not a JSON value.
        """
        name = getattr(workflow, "name", None)
        if not isinstance(name, str):
            raise TypeError(f"ctx.child takes a workflow registered with @app.workflow, got {workflow!r}")
        plain_args = round_trip(list(args), f"an argument of child workflow {name!r}")
        check_args = getattr(workflow, "check_args", None)
        if check_args is not None:
            check_args(plain_args)  # raised here, in the workflow, rather than in the worker
        return self._instance.issue_child(name, plain_args, run_id)

    def now(self) -> datetime:
        """The current time, deterministically: when the latest journaled event happened."""
        return datetime.fromtimestamp(self._instance.loop.time(), UTC)

    def random(self) -> float:
        """A random float in [0, 1), recorded on first run and replayed after."""
        return float(self._instance.side_effect("random", random_module.random))

    def uuid4(self) -> uuid.UUID:
        """A random UUID, recorded on first run and replayed after."""
        return uuid.UUID(self._instance.side_effect("uuid4", lambda: str(uuid.uuid4())))

    def patched(self, patch_id: str) -> bool:
        """Whether to take the new code path of a change guarded by ``patch_id``.

        True for runs that reach this point on code that has the patch; False while
        replaying a run that passed this point before the patch existed. Keep both
        paths until no run from before the patch is left.
        """
        if not isinstance(patch_id, str) or not patch_id:
            raise TypeError(f"a patch id must be a non-empty str, got {patch_id!r}")
        return self._instance.patched(patch_id)
