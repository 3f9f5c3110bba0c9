"""What ``@app.workflow`` and ``@app.step`` return, and the ``Event`` a wait receives."""

from __future__ import annotations

import inspect
from asyncio.events import _get_running_loop
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, TypeVarTuple

import attrs

from replay import journal as j
from replay._loop import WorkflowLoop
from replay.journal import Entry
from replay.policies import DEFAULT_RETRY, CancelOn, Concurrency, Debounce, RateLimit, RetryPolicy, Throttle
from replay.schedules import Cron
from replay.stores.base import NO_FLOW, DebounceRule, Flow, Gate, NewRun

if TYPE_CHECKING:
    from replay.app import App
    from replay.context import Context

__all__ = ("Event", "FlowOptions", "StepDef", "WorkflowDef")

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


@attrs.frozen
class FlowOptions:
    """The flow-control options given to ``@app.workflow`` (see ``App.workflow``)."""

    concurrency: Concurrency | None = None
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    debounce: Debounce | None = None
    priority: int | Callable[..., int] = 0
    cancel_on: tuple[CancelOn, ...] = ()


_PLAIN = FlowOptions()


class WorkflowDef(Generic[*Ts, R]):
    """A workflow registered with ``@app.workflow``; pass it to ``app.start``.

    Attributes:
        name: the name runs are stored under.
        fn: the ``async def (ctx, *args)`` itself.
        timeout: the longest a run may take, from its start, before it fails.
        options: its flow control.
        trigger: the event name or ``Cron`` that starts it, if any.
        on_failure: the workflow started when a run fails for good, if any.
        retry: the retry policy of the steps it calls that set none of their own.
    """

    def __init__(
        self,
        app: App,
        fn: Callable[[Context, *Ts], Awaitable[R]],
        name: str,
        timeout: timedelta | None,
        options: FlowOptions = _PLAIN,
        trigger: str | Cron | None = None,
        on_failure: WorkflowDef[str, dict[str, Any], Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.app = app
        self.retry = retry
        self.fn = fn
        self.name = name
        self.timeout = timeout
        self.options = options
        self.trigger = trigger
        self.on_failure = on_failure
        self._plain = options == _PLAIN  # runs then skip every flow computation
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            self._signature = None  # no signature to read (a C function, say): not checked
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<workflow {self.name!r}>"

    def check_args(self, args: Sequence[Any]) -> None:
        """Refuse stored ``args`` the function cannot be called with (after its context).

        A run whose arguments do not fit would fail on every attempt, so a start
        is refused before anything is stored.

        Raises:
            TypeError: the function's parameters do not take ``args``.
        """
        self.check_call(self.call_args(list(args)), "these arguments")

    def check_context(self) -> None:
        """Refuse a function that takes no positional parameter for the run's context.

        Raises:
            TypeError: it has none.
        """
        if self._signature is None:
            return
        try:
            self._signature.bind_partial(None)
        except TypeError:
            raise TypeError(
                f"workflow {self.name!r} must take the run's context first: "
                f"async def {self.fn.__name__}(ctx: replay.Context, ...)"
            ) from None

    def check_call(self, call: Sequence[Any], what: str) -> None:
        """Refuse ``call`` (the arguments after the context) if the function cannot take it.

        Raises:
            TypeError: naming ``what`` was passed.
        """
        if self._signature is None:
            return
        try:
            self._signature.bind(None, *call)
        except TypeError as exc:
            raise TypeError(
                f"workflow {self.name!r} cannot take {what}: {exc} "
                f"(a run calls it as {self.fn.__name__}(ctx, *args))"
            ) from None

    def call_args(self, args: list[Any]) -> list[Any]:
        """The arguments the function receives for stored ``args``: an event trigger's is an ``Event``."""
        if isinstance(self.trigger, str) and len(args) == 1 and isinstance(args[0], dict):
            return [Event(**args[0])]
        return args

    def flow(self, args: Sequence[Any], *, child: bool = False) -> Flow:
        """The run's flow control, its keys computed from ``args``.

        Raises:
            TypeError: a key function returned something other than a str (a
                priority function, other than an int).
        """
        if self._plain:
            return NO_FLOW
        opts = self.options
        call = self.call_args(list(args))
        priority = opts.priority(*call) if callable(opts.priority) else opts.priority
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"the priority of workflow {self.name!r} must be an int, got {priority!r}")
        cancel_on = []
        for rule in opts.cancel_on:
            match = {} if rule.match is None else rule.match(*call)
            if not isinstance(match, dict):
                raise TypeError(
                    f"a CancelOn match of workflow {self.name!r} must return a dict, got {match!r}"
                )
            cancel_on.append((rule.event, j.round_trip(match, f"a CancelOn match of workflow {self.name!r}")))
        debounce = None
        if opts.debounce is not None and not child:
            d = opts.debounce
            debounce = DebounceRule(
                self._key("debounce", d.key, call),
                d.period.total_seconds(),
                None if d.timeout is None else d.timeout.total_seconds(),
            )
        return Flow(
            priority=priority,
            concurrency=self._gate("concurrency", opts.concurrency, call),
            throttle=self._gate("throttle", opts.throttle, call),
            rate_limit=self._gate("rate_limit", opts.rate_limit, call),
            debounce=debounce,
            cancel_on=tuple(cancel_on),
        )

    def _gate(
        self, what: str, rule: Concurrency | Throttle | RateLimit | None, call: list[Any]
    ) -> Gate | None:
        if rule is None:
            return None
        period = 0.0 if isinstance(rule, Concurrency) else rule.period.total_seconds()
        return Gate(self._key(what, rule.key, call), rule.limit, period)

    def _key(self, what: str, key: Callable[..., str] | None, call: list[Any]) -> str:
        if key is None:
            return self.name
        value = key(*call)
        if not isinstance(value, str):
            raise TypeError(f"the {what} key of workflow {self.name!r} must return a str, got {value!r}")
        return f"{self.name}:{value}"

    def new_run(
        self,
        run_id: str,
        args: list[Any],
        now: float,
        *,
        parent_id: str | None = None,
        created_at: float | None = None,
    ) -> NewRun:
        """The ``NewRun`` that starts a run of this workflow with plain (JSON) ``args``.

        Raises:
            TypeError: a flow-control function returned a value of the wrong type.
        """
        data: dict[str, Any] = {"workflow": self.name, "args": args, "journal": j.FORMAT_VERSION}
        if parent_id is not None:
            data["parent"] = parent_id
        if self.timeout is not None:
            data["deadline"] = now + self.timeout.total_seconds()
        first = Entry(1, j.WORKFLOW_STARTED, now, data)
        flow = self.flow(args, child=parent_id is not None)
        return NewRun(run_id, self.name, args, first, parent_id=parent_id, created_at=created_at, flow=flow)


class StepDef(Generic[P, R]):
    """A step registered with ``@app.step``.

    Called inside a running workflow it is ``ctx.step(fn, ...)``: it runs once and
    its result is journaled. Called anywhere else it is a plain call.

    Attributes:
        step_name: the name its results are journaled under.
        fn: the function itself.
        retry: its retry policy; None: the calling workflow's ``retry``, else
            ``RetryPolicy()``.
        timeout: the longest one attempt may take.
    """

    def __init__(
        self, fn: Callable[P, R], name: str, retry: RetryPolicy | None, timeout: timedelta | None
    ) -> None:
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
        inst = loop.instance
        policy = self.retry or inst.workflow.retry or DEFAULT_RETRY
        return inst.issue_step(self.step_name, self, args, kwargs, policy, self.timeout)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"<step {self.step_name!r}>"
