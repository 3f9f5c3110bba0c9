"""``App``: the registry of workflows and steps, and the client that starts runs."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, TypeVarTuple, overload

from replay import _forks as forks
from replay._ids import new_id
from replay._triggers import event_value
from replay.clock import Clock, SystemClock
from replay.definitions import Event, FlowOptions, StepDef, WorkflowDef
from replay.errors import RunNotFound
from replay.handle import RunHandle
from replay.journal import round_trip
from replay.policies import CancelOn, Concurrency, Debounce, RateLimit, RetryPolicy, Throttle
from replay.schedules import Cron
from replay.stores import open_store
from replay.stores.base import TERMINAL_STATUSES, EventRecord, Notice, RunInfo, Store

if TYPE_CHECKING:
    from replay.context import Context
    from replay.worker import Worker

__all__ = ("App", "Event", "RunHandle", "StepDef", "WorkflowDef")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")

log = logging.getLogger("replay.app")

DEFAULT_STORE = "sqlite:///replay.db"


class App:
    """Registry of workflows and steps, and the client for their runs.

    Args:
        name: the application's name.
        store: a store URL (``memory://`` or ``sqlite:///path``) or a ``Store``;
            default: the ``REPLAY_STORE`` environment variable, else
            ``sqlite:///replay.db``.
        clock: where time comes from (tests use a virtual clock).
    """

    def __init__(self, name: str, store: str | Store | None = None, *, clock: Clock | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"an app needs a non-empty name, got {name!r}")
        self.name = name
        self.clock: Clock = clock or SystemClock()
        self.workflows: dict[str, WorkflowDef[*tuple[Any, ...], Any]] = {}
        self.steps: dict[str, StepDef[Any, Any]] = {}
        self._store_spec: str | Store = store or os.environ.get("REPLAY_STORE") or DEFAULT_STORE
        self._store: Store | None = store if isinstance(store, Store) else None
        self._opened = False
        self._open_lock: asyncio.Lock | None = None
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._unsubscribe: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<App {self.name!r}>"

    # -- registration ------------------------------------------------------------------

    @overload
    def workflow(self, fn: Callable[[Context, *Ts], Awaitable[R]], /) -> WorkflowDef[*Ts, R]: ...

    @overload
    def workflow(
        self,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        concurrency: Concurrency | None = None,
        throttle: Throttle | None = None,
        rate_limit: RateLimit | None = None,
        debounce: Debounce | None = None,
        priority: int | Callable[..., int] = 0,
        trigger: str | Cron | None = None,
        cancel_on: CancelOn | Sequence[CancelOn] = (),
        on_failure: WorkflowDef[str, dict[str, Any], Any] | None = None,
    ) -> Callable[[Callable[[Context, *Ts], Awaitable[R]]], WorkflowDef[*Ts, R]]: ...

    def workflow(  # type: ignore[misc]
        self,
        fn: Callable[..., Awaitable[Any]] | None = None,
        /,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        concurrency: Concurrency | None = None,
        throttle: Throttle | None = None,
        rate_limit: RateLimit | None = None,
        debounce: Debounce | None = None,
        priority: int | Callable[..., int] = 0,
        trigger: str | Cron | None = None,
        cancel_on: CancelOn | Sequence[CancelOn] = (),
        on_failure: WorkflowDef[str, dict[str, Any], Any] | None = None,
    ) -> Any:
        """Register an ``async def (ctx, *args)`` as a workflow.

        Use it bare (``@app.workflow``) or with options (``@app.workflow(timeout=...)``).
        Functions given as keys, matches or priority take the workflow's arguments.

        Args:
            fn: the workflow function, when used bare.
            name: the name runs are stored under (default: the function's name).
            retry: the retry policy of the steps it calls that set none of their
                own (default: ``RetryPolicy()``).
            timeout: fail a run with ``WorkflowTimeout`` this long after it starts.
            concurrency: at most ``limit`` runs (per key) execute at once.
            throttle: at most ``limit`` runs (per key) begin per period; the rest wait.
            rate_limit: at most ``limit`` starts (per key) are accepted per period;
                the rest are dropped (stored as ``cancelled``).
            debounce: starts close together (per key) make one run, with the last arguments.
            priority: an int, or a function of the arguments returning one; when
                runs wait for a worker or a concurrency slot, higher goes first.
            trigger: an event name (each such event starts a run, which receives
                the ``Event``) or ``replay.cron(...)`` (a run per tick, no arguments).
            cancel_on: a ``CancelOn`` (or several): an event that cancels the run.
            on_failure: a workflow taking ``(ctx, run_id, error)``, started when a
                run fails for good (``error`` has ``type``, ``message``, ``traceback``).

        Raises:
            TypeError: an option has the wrong type.
            ValueError: an option has a bad value, or the name is taken.
        """
        if timeout is not None and (not isinstance(timeout, timedelta) or timeout <= timedelta(0)):
            raise ValueError(f"timeout must be a positive timedelta, got {timeout!r}")
        _option("retry", retry, RetryPolicy)
        cancels = (cancel_on,) if isinstance(cancel_on, CancelOn) else tuple(cancel_on)
        options = FlowOptions(
            concurrency=_option("concurrency", concurrency, Concurrency),
            throttle=_option("throttle", throttle, Throttle),
            rate_limit=_option("rate_limit", rate_limit, RateLimit),
            debounce=_option("debounce", debounce, Debounce),
            priority=_priority(priority),
            cancel_on=tuple(_option("cancel_on", c, CancelOn) for c in cancels),  # type: ignore[misc]
        )
        if (
            trigger is not None
            and not isinstance(trigger, Cron)
            and not (isinstance(trigger, str) and trigger)
        ):
            raise TypeError(f"trigger must be an event name or replay.cron(...), got {trigger!r}")
        if on_failure is not None and (
            not isinstance(on_failure, WorkflowDef) or self.workflows.get(on_failure.name) is not on_failure
        ):
            raise ValueError(
                f"on_failure must be a workflow registered on {self!r} first, got {on_failure!r}"
            )

        def register(func: Callable[..., Awaitable[Any]]) -> WorkflowDef[*tuple[Any, ...], Any]:
            if not inspect.iscoroutinefunction(func):
                raise TypeError(f"@app.workflow needs an async def, got {func!r}")
            wf_name = name or func.__name__
            if wf_name in self.workflows:
                raise ValueError(f"a workflow named {wf_name!r} is already registered on {self!r}")
            wf: WorkflowDef[*tuple[Any, ...], Any] = WorkflowDef(
                self, func, wf_name, timeout, options, trigger, on_failure, retry
            )
            wf.check_context()
            if isinstance(trigger, Cron):
                wf.check_call([], "the no arguments a cron start passes")
            elif trigger is not None:
                wf.check_call([None], "the one Event an event start passes")
            if on_failure is not None:
                on_failure.check_call(["run-id", {}], "the run id and error an on_failure handler gets")
            self.workflows[wf_name] = wf
            return wf

        return register(fn) if fn is not None else register

    @overload
    def step(self, fn: Callable[P, R], /) -> StepDef[P, R]: ...

    @overload
    def step(
        self,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
    ) -> Callable[[Callable[P, R]], StepDef[P, R]]: ...

    def step(  # type: ignore[misc]
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
    ) -> Any:
        """Register a sync or async function as a step.

        Use it bare (``@app.step``) or with options (``@app.step(retry=...)``).

        Args:
            fn: the step function, when used bare.
            name: the name results are journaled under (default: the function's name).
            retry: how failures are retried (default: the calling workflow's
                ``retry``, else ``RetryPolicy()``).
            timeout: the longest one attempt may take.
        """
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {retry!r}")
        if timeout is not None and (not isinstance(timeout, timedelta) or timeout <= timedelta(0)):
            raise ValueError(f"timeout must be a positive timedelta, got {timeout!r}")

        def register(func: Callable[..., Any]) -> StepDef[Any, Any]:
            if not callable(func):
                raise TypeError(f"@app.step needs a function, got {func!r}")
            step_name = name or func.__name__
            if step_name in self.steps:
                raise ValueError(f"a step named {step_name!r} is already registered on {self!r}")
            step = StepDef(func, step_name, retry, timeout)
            self.steps[step_name] = step
            return step

        return register(fn) if fn is not None else register

    # -- the store ---------------------------------------------------------------------

    async def store(self) -> Store:
        """The app's store, opened on first use."""
        if self._store is not None and self._opened:
            return self._store
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._store is None:
                assert isinstance(self._store_spec, str)
                self._store = open_store(self._store_spec)
            if not self._opened:
                await self._store.open()
                self._opened = True
                self._unsubscribe = self._store.subscribe(self._on_notice)
        return self._store

    def set_store(self, store: Store | str) -> None:
        """Point the app at another store (a ``Store`` or a URL), opened on first use.

        Call it before the app is used, not while a worker runs.
        """
        if self._opened:
            raise RuntimeError(f"{self!r} already uses an open store; close it first")
        self._store_spec = store
        self._store = store if isinstance(store, Store) else None

    def use_store(self, store: Store, clock: Clock | None = None) -> tuple[Store | None, bool, Clock]:
        """Point the app at another (open) store; returns what to restore. For ``TestEnv``."""
        previous = (self._store, self._opened, self.clock)
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._store, self._opened = store, True
        self._unsubscribe = store.subscribe(self._on_notice)
        if clock is not None:
            self.clock = clock
        return previous

    def restore_store(self, previous: tuple[Store | None, bool, Clock]) -> None:
        """Undo ``use_store``."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._store, self._opened, self.clock = previous
        if self._store is not None and self._opened:
            self._unsubscribe = self._store.subscribe(self._on_notice)

    async def close(self) -> None:
        """Close the store, if the app opened it."""
        if self._store is not None and self._opened:
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            await self._store.close()
            self._opened = False

    def _on_notice(self, notice: Notice) -> None:
        if notice.kind == "finished":
            for fut in self._waiters.pop(notice.run_id, ()):
                if not fut.done():
                    fut.set_result(None)

    async def _wait_finished(self, run_id: str, timeout: float | None) -> RunInfo:
        store = await self.store()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        # Notices cover this process. A store whose notices span processes tells of
        # every run's end, so a read every half minute only guards against a lost
        # one; with any other store, workers in other processes are seen by polling.
        poll, most = (30.0, 30.0) if store.notices_span_processes else (0.05, 1.0)
        while True:
            # Listen before looking: an end between the read and the wait is not missed.
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(run_id, []).append(fut)
            try:
                info = await store.get_run(run_id)
                if info is None:
                    raise RunNotFound(f"no run with id {run_id!r}")
                if info.status in TERMINAL_STATUSES:
                    return info
                wait = poll if deadline is None else min(poll, deadline - loop.time())
                if wait <= 0:
                    raise TimeoutError(f"run {run_id!r} did not finish in {timeout:g} s{_why_not(info)}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fut, wait)
            finally:
                waiting = self._waiters.get(run_id, [])
                if fut in waiting:
                    waiting.remove(fut)
                    if not waiting:
                        del self._waiters[run_id]
            poll = min(poll * 2, most)

    # -- the client ----------------------------------------------------------------------

    def _registered(self, workflow: object) -> WorkflowDef[*tuple[Any, ...], Any]:
        name = getattr(workflow, "name", None)
        if not isinstance(workflow, WorkflowDef) or self.workflows.get(name or "") is not workflow:
            raise ValueError(f"{workflow!r} is not a workflow registered on {self!r}")
        return workflow

    async def start(
        self, workflow: WorkflowDef[*Ts, R], *args: *Ts, run_id: str | None = None
    ) -> RunHandle[R]:
        """Start a run of ``workflow``; idempotent on ``run_id``.

        Args:
            workflow: a workflow registered on this app.
            *args: its arguments, JSON values.
            run_id: the run's id (default: a random one that sorts by time). If a
                run with this id exists, it is returned and nothing new starts.

        Under ``debounce``, a start may join a run still waiting to begin: the
        handle returned is then that run's. Under ``rate_limit``, a start beyond
        the limit is stored as a ``cancelled`` run.

        Raises:
            SerializationError: an argument is not a JSON value; nothing is stored.
            ValueError: the workflow is not registered here, or ``run_id`` names a
                run of another workflow.
            TypeError: the workflow's parameters do not take ``args``, or a flow-control
                key function returned a non-str; nothing is stored.
        """
        wf = self._registered(workflow)
        if run_id is not None and (not isinstance(run_id, str) or not run_id):
            raise ValueError(f"run_id must be a non-empty str, got {run_id!r}")
        plain_args = round_trip(list(args), f"an argument of workflow {wf.name!r}")
        wf.check_args(plain_args)
        new = wf.new_run(run_id or new_id(), plain_args, self.clock.now())
        store = await self.store()
        info, _ = await store.create_run(new)
        if info.workflow != wf.name:
            raise ValueError(
                f"run {new.run_id!r} already exists as a run of {info.workflow!r}, not {wf.name!r}"
            )
        return RunHandle(self, info.run_id)

    def get_run(self, run_id: str) -> RunHandle[Any]:
        """A handle on a run, without I/O; its methods raise ``RunNotFound`` for an unknown id."""
        return RunHandle(self, run_id)

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[RunInfo]:
        """Runs, newest first, optionally filtered.

        Args:
            workflow: only runs of the workflow with this name.
            status: only runs in this status.
            since: only runs created at or after this time (epoch seconds).
            until: only runs created at or before this time (epoch seconds).
            limit: the most runs to return.
        """
        store = await self.store()
        return await store.list_runs(workflow=workflow, status=status, since=since, until=until, limit=limit)

    async def send_event(
        self, name: str, data: dict[str, Any] | None = None, *, id: str | None = None
    ) -> str:
        """Send an event durably: every run waiting for it wakes, every workflow it triggers starts.

        A workflow with ``trigger=name`` gets one run per event, with the id
        ``"<workflow>:<event id>"``, created in the same transaction as the
        event; resending an event id starts nothing more. A workflow whose
        flow-control function fails on the event's data starts nothing (the
        error is logged); the event is stored all the same. Runs with a
        matching ``CancelOn`` are cancelled.

        Args:
            name: the event's name.
            data: a JSON object.
            id: the event's id (default: a random one that sorts by time); resending an id does nothing.

        Returns:
            The event's id.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"an event name must be a non-empty str, got {name!r}")
        plain = round_trip(data or {}, f"the data of event {name!r}")
        if not isinstance(plain, dict):
            raise TypeError(f"event data must be a dict, got {data!r}")
        if id is not None and (not isinstance(id, str) or not id):
            raise ValueError(f"an event id must be a non-empty str, got {id!r}")
        event = EventRecord(id or new_id(), name, plain, self.clock.now())
        starts = []
        for wf in self.workflows.values():
            if wf.trigger == name:
                try:
                    starts.append(wf.new_run(f"{wf.name}:{event.id}", [event_value(event)], event.at))
                except Exception:
                    # A flow-control function that fails on this event's data: it starts
                    # nothing, as a worker's trigger pass skips it, and the event is still
                    # stored, waking the runs that wait for it and starting the others.
                    log.exception("event %s cannot start a run of %s; skipped", event.id, wf.name)
        store = await self.store()
        stored, _ = await store.send_event(event, starts)
        return stored.id

    async def cancel(self, run_id: str) -> None:
        """Ask a run to stop; a finished run is left as it is.

        Raises:
            RunNotFound: no run has this id.
        """
        store = await self.store()
        if await store.request_cancel(run_id, self.clock.now()) is None:
            raise RunNotFound(f"no run with id {run_id!r}")

    async def retry(self, run_id: str) -> RunHandle[Any]:
        """Run a failed run again, on the current code.

        - A run parked by a ``NonDeterminismError`` (its journal has no end) goes
          back to ``pending`` with its journal untouched, and a worker replays it:
          the handle returned is the same run's.
        - A run that failed because a step failed for good has a final journal, so
          a new run, ``"<run_id>-retry-<n>"``, takes over: it reuses the journal up
          to the failed step (the steps before it are not run again) and runs that
          step and the rest on the current code. The handle returned is the new
          run's (see ``fork``).

        Raises:
            RunNotFound: no run has this id.
            ValueError: the run did not fail, or failed in the workflow's own code
                rather than in a step (fork it from a step instead).
        """
        return await forks.retry(self, run_id)

    async def fork(self, source_id: str, /, from_step: int, *, run_id: str | None = None) -> RunHandle[Any]:
        """Start a new run that reuses a run's journal up to its ``from_step``-th step.

        The new run's journal is the old one's cut just before its
        ``from_step``-th ``step_scheduled`` entry, as if the process had died
        there: a worker replays that prefix (steps before the cut return their
        recorded results) and runs the rest on the current code. The old run is
        left as it is. The workflow need not be registered on this app.

        The new run starts ``pending``, with no parent; its ``workflow_started``
        entry records ``forked_from`` (``{"run_id", "step"}``), and a workflow
        timeout counts again from the fork. Waits, timers and child runs the
        prefix started carry over: an open wait sees events sent from the fork
        on, and child runs the prefix started are shared with the old run.

        Args:
            source_id: the run to fork, in any status.
            from_step: which step to run again, counting ``step_scheduled``
                entries from 1; it and every command after it run anew.
            run_id: the new run's id (default: a random one that sorts by time).

        Returns:
            A handle on the new run.

        Raises:
            RunNotFound: no run has ``source_id``.
            ValueError: ``from_step`` is not between 1 and the run's number of
                steps, or a run with ``run_id`` exists.
        """
        return await forks.fork(self, source_id, from_step, run_id)

    def worker(self, **options: Any) -> contextlib.AbstractAsyncContextManager[Worker]:
        """Run a worker in the background of this process while the block runs.

        Keyword arguments go to ``replay.worker.Worker``.
        """
        from replay.worker import Worker

        @contextlib.asynccontextmanager
        async def running() -> AsyncIterator[Worker]:
            store = await self.store()
            worker = Worker(self, store, self.clock, **options)
            async with worker:
                yield worker

        return running()


def _why_not(info: RunInfo) -> str:
    """What a run that did not finish in time is doing, for the timeout's message."""
    if info.status == "pending":
        return (
            f" (it is pending: no worker has begun it; is a worker running "
            f"workflow {info.workflow!r} on this store?)"
        )
    return f" (it is {info.status})"


def _option(what: str, value: Any, kind: type[T]) -> T | None:
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"{what} must be a replay.{kind.__name__}, got {value!r}")
    return value


def _priority(value: int | Callable[..., int]) -> int | Callable[..., int]:
    if callable(value) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise TypeError(f"priority must be an int or a function of the arguments, got {value!r}")
