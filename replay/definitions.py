"""What ``@app.workflow`` and ``@app.step`` return, and the ``Event`` a wait receives."""

from __future__ import annotations

import inspect
from asyncio.events import _get_running_loop
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, TypeVarTuple

import attrs

from replay._loop import WorkflowLoop
from replay.policies import RetryPolicy

if TYPE_CHECKING:
    from replay.app import App
    from replay.context import Context

__all__ = ("Event", "StepDef", "WorkflowDef")

P = ParamSpec("P")
R = TypeVar("R")
Ts = TypeVarTuple("Ts")


@attrs.frozen
class Event:
    """An event, as ``wait_for_event`` returns it and a trigger receives it.

    Attributes:
        id: unique id; sending an event with an id already stored does nothing.
        name: what happened, such as ``"order.shipped"``.
        data: a JSON object.
        at: when it was sent (epoch seconds).
    """

    id: str
    name: str
    data: dict[str, Any]
    at: float


class WorkflowDef(Generic[*Ts, R]):
    """A workflow registered with ``@app.workflow``; pass it to ``app.start``.

    Attributes:
        name: the name runs are stored under.
        fn: the ``async def (ctx, *args)`` itself.
        timeout: the longest a run may take, from its start, before it fails.
    """

    def __init__(
        self,
        app: App,
        fn: Callable[[Context, *Ts], Awaitable[R]],
        name: str,
        timeout: timedelta | None,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.timeout = timeout
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<workflow {self.name!r}>"


class StepDef(Generic[P, R]):
    """A step registered with ``@app.step``.

    Called inside a running workflow it is ``ctx.step(fn, ...)``: it runs once and
    its result is journaled. Called anywhere else it is a plain call.

    Attributes:
        step_name: the name its results are journaled under.
        fn: the function itself.
        retry: its retry policy.
        timeout: the longest one attempt may take.
    """

    def __init__(self, fn: Callable[P, R], name: str, retry: RetryPolicy, timeout: timedelta | None) -> None:
        self.fn = fn
        self.step_name = name
        self.retry = retry
        self.timeout = timeout
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self.__name__ = getattr(fn, "__name__", name)
        self.__qualname__ = getattr(fn, "__qualname__", name)
        self.__module__ = getattr(fn, "__module__", __name__)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        loop = _get_running_loop()
        if type(loop) is not WorkflowLoop:
            return self.fn(*args, **kwargs)
        return loop.instance.issue_step(self.step_name, self, args, kwargs, self.retry, self.timeout)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"<step {self.step_name!r}>"
