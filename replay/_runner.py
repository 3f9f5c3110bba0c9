"""Drives one claimed run: replay its journal, then execute, journal and deliver.

The order in ``_process`` is the invariant everything rests on: outcomes become
journal entries, the entries are appended (fenced by the lease token), and only
after the append returns are they delivered to the workflow.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs

from replay import journal as j
from replay._eager import start_task
from replay._instance import ChildOp, Instance, Op, StepOp, TimerOp, WaitOp
from replay.errors import LeaseLost, NonDeterminismError, SerializationError, WorkflowTimeout
from replay.journal import Entry, round_trip
from replay.stores.base import TERMINAL_STATUSES, Claim, NewRun, RunUpdate

if TYPE_CHECKING:
    from replay.clock import TimerHandle
    from replay.worker import Worker

__all__ = ("RunDriver",)

log = logging.getLogger("replay.worker")


# Named tuples, not frozen attrs classes: one of these is built per step attempt,
# and a tuple costs a fraction of a frozen instance.
class StepDone(NamedTuple):
    """A step attempt returned."""

    seq: int
    attempt: int
    result: Any


class StepError(NamedTuple):
    """A step attempt raised."""

    seq: int
    attempt: int
    error: dict[str, Any]
    retryable: bool


@attrs.frozen
class Tick:
    """A timer, a retry, a wait timeout or the deadline may be due."""


@attrs.frozen
class News:
    """An event, a child's end or a cancellation may be waiting for this run."""


Item = StepDone | StepError | Tick | News
_OUTCOMES = (StepDone, StepError)


class RunDriver:
    """Owns one run while it is hot. Created by the worker per claim."""

    def __init__(self, worker: Worker, claim: Claim, heard: bool) -> None:
        self.worker = worker
        self.token = claim.token  # the lease's fencing token: every append carries it
        self.workflow = claim.workflow
        self._journal = claim.journal  # read by the claim, if the store did; dropped once replayed
        # Whether the run may have been asked to cancel since the claim read its row
        # (news arrived while the claim was in flight, or the caller cannot tell).
        self._maybe_cancelled = heard or claim.cancel_requested
        self.run_id = claim.run_id
        self.store = worker.store
        self.clock = worker.clock
        self.inbox: collections.deque[Item] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None  # set while the driver waits for its inbox
        self._loop: asyncio.AbstractEventLoop  # the loop ``run`` runs on
        self.running: dict[int, asyncio.Task[None]] = {}
        self.instance: Instance | None = None
        self._timer: TimerHandle | None = None
        self._timer_at: float | None = None
        self.finished = False
        self.closed = False
        self.task: asyncio.Task[None] | None = None  # the task running ``run``, set by the worker

    def post(self, item: Item) -> None:
        """Hand the driver something to journal; safe from any task or callback."""
        if self.closed:
            return  # a step that outlived its driver: its outcome is not journaled here
        self.worker.activity.inc()
        self.inbox.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run(self) -> None:
        """Drive the run until it finishes, suspends or is lost. Never raises."""
        # Kept: asking asyncio for the running loop costs a getpid() system call each time.
        self._loop = asyncio.get_running_loop()
        try:
            await self._drive()
        except LeaseLost:
            log.info("run %s was taken over by another worker; dropping it here", self.run_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("run %s: the worker failed while driving it; it will be retried", self.run_id)
            await self._retry_later()
        finally:
            self._cleanup()

    async def _retry_later(self) -> None:
        """Hand back a run dropped after an error, due again in a second.

        Left as it was, the run would stay "running" under this live worker and
        no worker would claim it until this one stops. The delay keeps a run that
        fails every time from spinning. If the store cannot take even this (the
        disk is full, say), the hand-back is tried again, backing off up to a
        minute, until it lands, the run is lost to another worker, or the worker
        stops; meanwhile the run stays this driver's.
        """
        pause = 1.0
        while True:
            update = RunUpdate(status="suspended", wake_at=self.clock.now() + 1.0, release=True)
            try:
                await self.store.append(self.run_id, self.token, [], update)
                return
            except LeaseLost:
                return  # another worker owns it now
            except Exception as exc:  # noqa: BLE001 - already failing; tried again below
                log.warning(
                    "run %s could not be handed back (%s); trying again in %g s", self.run_id, exc, pause
                )
            await self.worker.activity.pause(self.clock, pause)
            pause = min(pause * 2, 60.0)

    def _cleanup(self) -> None:
        self.closed = True
        self.worker.dropped(self)  # before the instance closes: its attempts not journaled yet
        for task in self.running.values():
            task.cancel()
        self.running.clear()
        if self._timer is not None:
            self._timer.cancel()
        if self.instance is not None:
            self.instance.close()
        pending = len(self.inbox)
        self.inbox.clear()
        self.worker.activity.dec(pending + 1)
        self.worker.forget(self)

    # -- the loop ------------------------------------------------------------------------

    async def _drive(self) -> None:
        worker = self.worker
        entries = self._journal
        self._journal = None
        if entries is None:
            entries = await self.store.read_journal(self.run_id)
        if entries and entries[-1].kind in j.TERMINAL_KINDS:
            await self._repair_finished(entries[-1])
            return
        workflow = worker.app.workflows[self.workflow]
        inst = Instance(self.run_id, workflow, entries, self.clock.now, worker.app.steps.get)
        self.instance = inst
        try:
            inst.replay()
        except NonDeterminismError as exc:
            await self._park(exc)
            return
        # Whatever happened while no worker watched: events, children, cancellation, timers.
        # A cancellation requested before the claim is in the claim; one after it is
        # news, heard by this driver, or by the worker while the claim was in flight.
        await self._process([News(), Tick()], cancel=self._maybe_cancelled)
        while True:
            if self.finished:
                return
            if inst.error is not None:
                await self._park(inst.error)
                return
            if inst.outcome is not None:
                await self._finish()
                return
            if self._dispatch():
                entries, update = self._take_buffer()
                await self.store.append(self.run_id, self.token, entries, update)
            if not self.inbox:
                wake = inst.wake_at()
                now = self.clock.now()
                if not self.running and (wake is None or wake - now > worker.keep_hot):
                    await self._suspend(wake)
                    return
                self._arm(wake)
                await self._wait_for_inbox()
            items = list(self.inbox)
            self.inbox.clear()
            try:
                await self._process(items)
            finally:
                worker.activity.dec(len(items))

    async def _wait_for_inbox(self) -> None:
        # Awaited only when the inbox is empty: most steps finish as they start (see
        # ``_start_step``), and a coroutine per step would cost more than this check.
        activity = self.worker.activity
        while not self.inbox:
            activity.dec()
            self._waiter = waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
                activity.inc()

    def _arm(self, wake: float | None) -> None:
        if wake == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = wake
        if wake is not None:
            self._timer = self.clock.call_at(wake, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.post(Tick())

    # -- turning outcomes into entries ---------------------------------------------

    async def _process(self, items: list[Item], *, cancel: bool = True) -> None:
        """Journal the outcomes in ``items``, then deliver them.

        ``cancel``: on news, also ask the store whether the run was asked to cancel.
        """
        inst = self.instance
        assert inst is not None
        completions: list[Entry] = []
        restart: list[StepOp] = []
        done: set[int] = set()  # ops given a completion in this batch: one each
        tick = news = False
        outcomes: list[StepDone | StepError] = []
        for item in items:
            if isinstance(item, _OUTCOMES):
                self.running.pop(item.seq, None)  # its outcome is being journaled: it may run again
                outcomes.append(item)
            elif isinstance(item, Tick):
                tick = True
            else:
                news = True
        if tick and inst.deadline is not None and inst.deadline <= self.clock.now():
            # Before any entry is allocated: the run ends here, and its journal must not skip a seq.
            await self._timed_out()
            return
        for item in outcomes:
            if item.seq not in done:
                entry = self._step_entry(inst, item)
                if entry is not None:
                    completions.append(entry)
                    if "retry_at" not in entry.data:
                        done.add(item.seq)
        if tick:
            completions.extend(await self._due(inst, restart, done))
        if news:
            completions.extend(await self._news(inst, done, cancel))
        if completions:
            buffered, update = self._take_buffer()
            await self.store.append(self.run_id, self.token, buffered + completions, update)
        # Journal before deliver: every completion is durable from here on.
        for entry in completions:
            if inst.outcome is not None or inst.error is not None:
                break
            inst.deliver(entry)
        if inst.outcome is None and inst.error is None:
            for op in restart:  # not once the run has ended: that attempt would never be journaled
                self._start_step(op)

    def _step_entry(self, inst: Instance, item: StepDone | StepError) -> Entry | None:
        op = inst.ops.get(item.seq)
        if not isinstance(op, StepOp):
            return None  # the run no longer waits for it
        if isinstance(item, StepDone):
            return inst.alloc(
                j.STEP_COMPLETED, {"op": item.seq, "attempt": item.attempt, "result": item.result}
            )
        data: dict[str, Any] = {"op": item.seq, "attempt": item.attempt, "error": item.error}
        if item.retryable and item.attempt < op.retry.max_attempts:
            data["retry_at"] = self.clock.now() + op.retry.delay(item.attempt, self.worker.rng.random())
        return inst.alloc(j.STEP_FAILED, data)

    async def _news(self, inst: Instance, done: set[int], cancel: bool) -> list[Entry]:
        found: list[Entry] = []
        if any(isinstance(op, WaitOp) and op.seq not in done for op in inst.ops.values()):
            for seq, event in await self.store.poll_waits(self.run_id):
                if isinstance(inst.ops.get(seq), WaitOp) and seq not in done:
                    done.add(seq)
                    ev = {"id": event.id, "name": event.name, "data": event.data, "at": event.at}
                    found.append(inst.alloc(j.EVENT_RECEIVED, {"op": seq, "event": ev}))
        for op in list(inst.ops.values()):
            if isinstance(op, ChildOp) and op.seq not in done:
                child = await self.store.get_run(op.run_id)
                if child is not None and child.status in TERMINAL_STATUSES:
                    done.add(op.seq)
                    data: dict[str, Any] = {"op": op.seq, "run_id": op.run_id, "status": child.status}
                    if child.status == "completed":
                        data["result"] = child.result
                    else:
                        data["error"] = child.error or {
                            "type": "Cancelled",
                            "message": "the child run was cancelled",
                        }
                    found.append(inst.alloc(j.CHILD_COMPLETED, data))
        if cancel and not inst.cancel_requested:
            info = await self.store.get_run(self.run_id)
            if info is not None and info.cancel_requested:
                found.append(inst.alloc(j.CANCEL_REQUESTED, {}))
        return found

    async def _due(self, inst: Instance, restart: list[StepOp], done: set[int]) -> list[Entry]:
        now = self.clock.now()
        found: list[Entry] = []
        timed_out: list[WaitOp] = []
        for op in list(inst.ops.values()):
            if op.seq in done:
                continue
            if isinstance(op, TimerOp) and op.due <= now:
                done.add(op.seq)
                found.append(inst.alloc(j.TIMER_FIRED, {"op": op.seq}))
            elif isinstance(op, StepOp) and op.retry_at is not None and op.retry_at <= now:
                if op.seq not in self.running:
                    op.retry_at = None
                    restart.append(op)
            elif isinstance(op, WaitOp) and op.timeout_at is not None and op.timeout_at <= now:
                timed_out.append(op)
        if timed_out:
            # An event that arrived in time wins over the timeout.
            arrived = {seq: event for seq, event in await self.store.poll_waits(self.run_id)}
            for op in timed_out:
                done.add(op.seq)
                event = arrived.get(op.seq)
                if event is not None:
                    ev = {"id": event.id, "name": event.name, "data": event.data, "at": event.at}
                    found.append(inst.alloc(j.EVENT_RECEIVED, {"op": op.seq, "event": ev}))
                else:
                    found.append(inst.alloc(j.WAIT_TIMED_OUT, {"op": op.seq}))
        return found

    # -- executing new commands --------------------------------------------------------

    def _dispatch(self) -> bool:
        """Start the new steps; whether the buffer must be appended now (a wait or a child began)."""
        inst = self.instance
        assert inst is not None
        ops: list[Op] = inst.take_new_ops()
        if not ops:
            return False
        flush = False
        now: float | None = None
        for op in ops:
            if type(op) is StepOp:
                if op.retry_at is not None:
                    now = self.clock.now() if now is None else now
                    if op.retry_at > now:
                        continue
                    op.retry_at = None
                self._start_step(op)
            elif not flush and isinstance(op, WaitOp | ChildOp):
                # A wait begins once it is journaled; a child run starts with its entry.
                flush = any(e.seq == op.seq for e in inst.buffer)
        return flush

    def _take_buffer(self, update: RunUpdate | None = None) -> tuple[list[Entry], RunUpdate | None]:
        """The buffered entries to append, and ``update`` with the child runs they start.

        Every append that carries a ``child_started`` entry creates its child run
        in the same transaction, whichever path flushes the buffer (a child
        started just before the run suspends, finishes or journals a completion).
        """
        inst = self.instance
        assert inst is not None
        entries = inst.take_buffer()
        kids: list[NewRun] = []
        now: float | None = None
        for e in entries:  # a plain loop: this runs for every append, and rarely finds a child
            if e.kind == j.CHILD_STARTED and isinstance(op := inst.ops.get(e.seq), ChildOp):
                now = self.clock.now() if now is None else now
                kids.append(self._child_run(op, now))
        if not kids:
            return entries, update
        if update is None:
            return entries, RunUpdate(children=tuple(kids))
        return entries, attrs.evolve(update, children=(*kids, *update.children))

    def _child_run(self, op: ChildOp, now: float) -> NewRun:
        workflow = self.worker.app.workflows.get(op.workflow)
        if workflow is not None:
            return workflow.new_run(op.run_id, op.args, now, parent_id=self.run_id)
        data: dict[str, Any] = {
            "workflow": op.workflow,
            "args": op.args,
            "journal": j.FORMAT_VERSION,
            "parent": self.run_id,
        }
        first = Entry(1, j.WORKFLOW_STARTED, now, data)
        return NewRun(op.run_id, op.workflow, op.args, first, parent_id=self.run_id)

    def _failed(self, error: dict[str, Any], now: float) -> RunUpdate:
        """The update that ends the run as failed, starting its ``on_failure`` handler with it."""
        handler = self.worker.app.workflows[self.workflow].on_failure
        starts: tuple[NewRun, ...] = ()
        if handler is not None:
            starts = (handler.new_run(f"{self.run_id}:on_failure", [self.run_id, error], now),)
        return RunUpdate(status="failed", error=error, release=True, children=starts)

    def _start_step(self, op: StepOp) -> None:
        if op.seq in self.running:
            return
        self.worker.activity.inc()
        # Started eagerly (see ``_eager``): a step that returns without waiting is done
        # here, its outcome already in the inbox, with no loop turn for it nor for
        # waking the driver. It still runs in a task of its own. The task is kept
        # until its outcome is journaled (``_process``), even if it is done already.
        self.running[op.seq] = start_task(self._execute(op), self._loop, f"{self.run_id}:{op.seq}:{op.name}")

    async def _execute(self, op: StepOp) -> None:
        attempt = op.attempts + 1
        try:
            try:
                result = await self.worker.execute_step(self.run_id, op, attempt)
                item: Item = StepDone(op.seq, attempt, round_trip(result, "the result of step %r", op.name))
            except SerializationError as exc:
                item = StepError(op.seq, attempt, j.error_data(exc), retryable=False)
            except Exception as exc:  # noqa: BLE001 - a step's failure is journaled, whatever it is
                item = StepError(op.seq, attempt, j.error_data(exc), self.worker.retryable(op, exc))
            except (asyncio.CancelledError, SystemExit) as exc:
                task = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                    raise  # this attempt was cut off: its run was dropped, or the worker stops
                # Raised by the step's own code (a library's inner cancellation, sys.exit in
                # an argument parser): this attempt failed, as with any other error. Left to
                # asyncio, the one would leave the run waiting for ever, the other end the worker.
                item = StepError(op.seq, attempt, j.error_data(exc), self.worker.retryable(op, exc))
            self.post(item)
        finally:
            self.worker.activity.dec()

    # -- ends ----------------------------------------------------------------------------

    async def _suspend(self, wake: float | None) -> None:
        inst = self.instance
        assert inst is not None
        entries, update = self._take_buffer(RunUpdate(status="suspended", wake_at=wake, release=True))
        await self.store.append(self.run_id, self.token, entries, update)

    async def _finish(self) -> None:
        inst = self.instance
        assert inst is not None and inst.outcome is not None
        kind, data = inst.outcome.kind, dict(inst.outcome.data)
        update: RunUpdate
        if kind == j.WORKFLOW_COMPLETED:
            try:
                data["result"] = round_trip(data["result"], "the workflow's result")
                update = RunUpdate(status="completed", result=data["result"], release=True)
            except SerializationError as exc:
                kind, data = j.WORKFLOW_FAILED, {"error": j.error_data(exc)}
        if kind == j.WORKFLOW_FAILED:
            update = self._failed(data["error"], self.clock.now())
        elif kind == j.WORKFLOW_CANCELLED:
            update = RunUpdate(status="cancelled", release=True)
        entries, full = self._take_buffer(update)
        await self.store.append(self.run_id, self.token, [*entries, inst.alloc(kind, data)], full)

    async def _timed_out(self) -> None:
        inst = self.instance
        assert inst is not None
        error = j.error_data(WorkflowTimeout(f"run {self.run_id!r} passed its workflow timeout"))
        entries, update = self._take_buffer(self._failed(error, self.clock.now()))
        entries.append(inst.alloc(j.WORKFLOW_FAILED, {"error": error}))
        self.finished = True
        await self.store.append(self.run_id, self.token, entries, update)

    async def _park(self, exc: NonDeterminismError) -> None:
        # The journal stays as it was: a fixed deploy can replay the run again.
        log.error("%s", exc)
        update = RunUpdate(status="failed", error=j.error_data(exc), release=True)
        await self.store.append(self.run_id, self.token, [], update)

    async def _repair_finished(self, last: Entry) -> None:
        status = {j.WORKFLOW_COMPLETED: "completed", j.WORKFLOW_FAILED: "failed"}.get(last.kind, "cancelled")
        update = RunUpdate(
            status=status,  # type: ignore[arg-type]
            result=last.data.get("result"),
            error=last.data.get("error"),
            release=True,
        )
        await self.store.append(self.run_id, self.token, [], update)
