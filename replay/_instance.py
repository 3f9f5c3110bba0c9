"""One workflow run in memory: its loop, its coroutine and its place in the journal.

The instance replays a journal into a fresh coroutine, then keeps going live. It
never does I/O: the worker feeds it journal entries (``deliver``) after they are
durable and executes the commands it issues (``take_new_ops``).

Replay. Commands are matched eagerly: when the workflow issues one, it must equal
the next command entry of the journal (``_cmd`` is that cursor), by kind and name.
Completions are delivered in journal order (``_deliver`` is that cursor), each
followed by running the loop until nothing is ready, exactly as happened live. A
command entry that the delivery cursor reaches before the workflow issued it means
the code changed: ``NonDeterminismError``.

Fast path. If a command matches the very next journal entry, nothing else is ready
to run, the entry after it is that command's completion, and the workflow awaits
the command at once (``await step(x)``, see ``_awaited_at_once``), then live
execution went: issue, block, complete, resume. The instance returns an already-resolved
future, and ``await`` on it continues without a trip through the loop. This is what
makes replay cost microseconds per step.
"""

from __future__ import annotations

import asyncio
import contextlib
import dis
import itertools
import sys
from asyncio import events
from collections.abc import Callable, Coroutine
from datetime import timedelta
from types import CodeType
from typing import TYPE_CHECKING, Any, NoReturn, cast

from replay import journal as j
from replay._loop import WorkflowLoop
from replay._ops import ChildOp, InstanceClosed, Op, StepOp, TimerOp, WaitOp
from replay.errors import NonDeterminismError, ReplayInternalError, StepFailed, error_from_data
from replay.journal import Entry, round_trip
from replay.policies import RetryPolicy

if TYPE_CHECKING:
    from replay.app import StepDef, WorkflowDef
    from replay.context import Context

__all__ = ("ChildOp", "Instance", "InstanceClosed", "Op", "StepOp", "TimerOp", "WaitOp")


def _caller() -> str:
    """file:line of the innermost frame outside replay: where the workflow issued a command."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not (name == "replay" or name.startswith("replay.") or name.startswith("asyncio")):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return "<unknown>"


#: Per code object: the offsets of its calls whose result it awaits at once, or None
#: for replay's own code (skipped: the workflow's frame is further out).
_AWAITED_CALLS: dict[CodeType, frozenset[int] | None] = {}


def _awaited_at_once() -> bool:
    """Whether the workflow code that issued this command awaits it at once (``await step(x)``).

    Only then may replay hand it an already-resolved future: live, nothing ran
    between the command and the workflow blocking on it. Code that does something
    first (``f = step(x); asyncio.create_task(...); await f``) let other tasks run
    before the completion arrived, so its replay takes the loop's way round too.
    The caller is the innermost frame outside replay: at least three frames up,
    past this function, the ``issue_*`` method and what of replay called it. Its
    last instruction is a call; what follows it is read once per code object.
    """
    frame = sys._getframe(3)
    while True:
        code = frame.f_code
        try:
            offsets = _AWAITED_CALLS[code]
        except KeyError:
            offsets = _AWAITED_CALLS[code] = _awaited_calls(code, frame.f_globals.get("__name__", ""))
        if offsets is not None:
            return frame.f_lasti in offsets
        back = frame.f_back
        if back is None:
            return False
        frame = back


def _awaited_calls(code: CodeType, module: str) -> frozenset[int] | None:
    """The offsets a frame of ``code`` shows (``f_lasti``) while in a call it then awaits.

    None for code of replay's own modules.
    """
    if module == "replay" or module.startswith("replay."):
        return None
    found: set[int] = set()
    instructions = list(dis.get_instructions(code))
    for call, after in itertools.pairwise(instructions):
        if call.opname.startswith("CALL") and after.opname == "GET_AWAITABLE":
            found.update(range(call.offset, after.offset))  # the call and its inline caches
    return frozenset(found)


async def _raise(exc: BaseException) -> NoReturn:
    raise exc


def _describe(kind: str, data: dict[str, Any]) -> str:
    name = data.get("name")
    return f"{kind} {name!r}" if name is not None else kind


class Instance:
    """A workflow run in memory. See the module docstring."""

    def __init__(
        self,
        run_id: str,
        workflow: WorkflowDef[Any, Any],
        journal: list[Entry],
        now: Callable[[], float],
        resolve_step: Callable[[str], StepDef[Any, Any] | None],
    ) -> None:
        from replay.context import Context

        first = journal[0]
        if first.kind != j.WORKFLOW_STARTED:
            raise ReplayInternalError(f"journal of {run_id} starts with {first.kind}")
        self.run_id = run_id
        self.workflow = workflow
        self.started = first
        self.args: list[Any] = first.data.get("args", [])
        self.deadline: float | None = first.data.get("deadline")
        self.now = now
        self.resolve_step = resolve_step
        self.loop = WorkflowLoop(self)
        self.loop.set_time(first.at)
        self.ops: dict[int, Op] = {}
        self.buffer: list[Entry] = []
        self.new_ops: list[Op] = []
        self.error: NonDeterminismError | None = None
        self.outcome: Entry | None = None  # a terminal entry once the coroutine ends
        self.journaled_end: Entry | None = None
        self.cancel_requested = False
        self._entries = journal
        self._deliver = 1
        self._cmd = 1
        self._last_command: int | None = None  # computed when first asked: is_replaying is rare
        self._live = False
        self.next_seq = journal[-1].seq + 1
        self._loop_timers: dict[asyncio.TimerHandle, TimerOp] = {}
        self._patches: dict[str, bool] = {}
        self.closed = False
        self.ctx: Context = Context(self)
        try:
            coro = cast(Coroutine[Any, Any, Any], workflow.fn(self.ctx, *workflow.call_args(self.args)))
        except TypeError as exc:
            # Its stored arguments do not fit its parameters (they changed since the run
            # started): the run fails as if the workflow had raised it, instead of the
            # worker failing to drive it on every attempt.
            coro = _raise(exc)
        self.root: asyncio.Task[Any] = self.loop.create_task(coro, name=f"{run_id}:main")

    @property
    def replaying(self) -> bool:
        """Whether the workflow is still catching up with its journal."""
        if self._live:
            return False
        # Live once every completion is delivered and no journaled command is left.
        entries = self._entries
        if self._last_command is None:
            kinds = j.COMMAND_KINDS
            self._last_command = next(
                (i for i in range(len(entries) - 1, 0, -1) if entries[i].kind in kinds), 0
            )
        return self._deliver < len(entries) or self._cmd <= self._last_command

    # -- replay ------------------------------------------------------------------

    def replay(self) -> None:
        """Replay the whole journal; afterwards the instance is live.

        Raises:
            NonDeterminismError: the code no longer matches the journal.
        """
        entries = self._entries
        n = len(entries)
        self._run()
        while self._deliver < n and self.error is None:
            entry = entries[self._deliver]
            if entry.kind in j.COMMAND_KINDS:
                if self._deliver >= self._cmd:
                    self._mismatch(entry, None, "")
                self._deliver += 1
                continue
            self._deliver += 1
            self.deliver(entry)
        if self.error is not None:
            raise self.error
        self._go_live()

    def _go_live(self) -> None:
        self._live = True
        self._cmd = self._deliver = len(self._entries)
        self._entries = []
        self.new_ops = list(self.ops.values())

    def _run(self) -> None:
        self.loop.run_ready()
        if self.root.done() and self.outcome is None and self.error is None:
            self._finish()

    def _match(self, kind: str, name: str | None) -> Entry | None:
        """The journal entry the command just issued replays, or None once live."""
        if self._live:
            return None
        entries = self._entries
        i = self._cmd
        n = len(entries)
        commands = j.COMMAND_KINDS
        while i < n and entries[i].kind not in commands:
            i += 1
        if i == n:
            # No more commands in the journal: the rest is new. Completions still
            # undelivered were journaled after this command would have been.
            self._cmd = n
            self._live_commands()
            return None
        entry = entries[i]
        if entry.kind != kind or entry.data.get("name") != name:
            self._mismatch(entry, (kind, {"name": name}), _caller())
            raise self.error  # type: ignore[misc]
        self._cmd = i + 1
        return entry

    def _live_commands(self) -> None:
        # From here on commands are new, but completions may still be replaying.
        if self._deliver >= len(self._entries):
            self._go_live()

    def _mismatch(self, entry: Entry, new: tuple[str, dict[str, Any]] | None, where: str) -> None:
        if new is None:
            got = "nothing (the workflow did not issue it before the next completion, or ended)"
        else:
            got = f"{_describe(*new)} at {where}"
        self.error = NonDeterminismError(
            f"run {self.run_id!r} no longer matches its journal:\n"
            f"  journal entry {entry.seq}: {_describe(entry.kind, entry.data)}\n"
            f"  new command:      {got}\n"
            "Code that changes the commands a running workflow issues must be guarded "
            "with ctx.patched(...), or the run must be replayed on the old code."
        )

    def _fast_result(self, entry: Entry, op: StepOp | TimerOp | WaitOp | ChildOp) -> bool:
        """Deliver ``entry``'s completion now if the journal shows nothing between."""
        index = self._cmd - 1
        if index != self._deliver or self.loop.has_ready():
            return False
        if op.future is not None and not _awaited_at_once():
            return False  # (no future: a loop timer, asyncio.sleep's, whose handle runs in the ready queue)
        entries = self._entries
        k = index + 1
        n = len(entries)
        seq = entry.seq
        while k < n:
            nxt = entries[k]
            if nxt.kind in j.COMMAND_KINDS or nxt.data.get("op") != seq:
                return False
            if nxt.kind == j.STEP_FAILED and "retry_at" in nxt.data:
                k += 1  # an attempt that failed and was retried: keep looking
                continue
            self._deliver = k + 1
            for skipped in entries[index + 1 : k]:
                self._apply_retry(op, skipped)
            self.deliver(nxt, run=False)
            return True
        return False

    # -- commands the workflow issues -------------------------------------------------

    def _new_entry(self, kind: str, data: dict[str, Any]) -> Entry:
        entry = Entry(self.next_seq, kind, self.now(), data)
        self.next_seq += 1
        self.buffer.append(entry)
        return entry

    def issue_step(
        self,
        name: str,
        step: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retry: RetryPolicy,
        timeout: timedelta | None,
    ) -> asyncio.Future[Any]:
        """Record a step command; the worker runs it and delivers its result.

        Raises:
            SerializationError: a live command's arguments are not JSON values.
        """
        if self.closed:
            raise InstanceClosed()
        entry = None
        if not self._live:
            entries = self._entries
            cmd = self._cmd
            if cmd < len(entries):
                entry = entries[cmd]  # the common case: the very next entry is this command
                if entry[1] == j.STEP_SCHEDULED and entry[3]["name"] == name:
                    self._cmd = cmd + 1
                    if cmd == self._deliver and cmd + 1 < len(entries) and not self.loop._ready:
                        _, kind, at, done = entries[cmd + 1]
                        if kind == j.STEP_COMPLETED and done["op"] == entry[0] and _awaited_at_once():
                            # The fast path (see the module docstring), inlined for the commonest case.
                            # Both cursors pass the completion: it is no command, and it is delivered.
                            self._deliver = self._cmd = cmd + 2
                            loop = self.loop
                            if at > loop._time:
                                loop._time = at
                            fut: asyncio.Future[Any] = asyncio.Future(loop=loop)
                            fut.set_result(done["result"])
                            return fut
                else:
                    entry = self._match(j.STEP_SCHEDULED, name)
            else:
                entry = self._match(j.STEP_SCHEDULED, name)
        seconds = None if timeout is None else timeout.total_seconds()
        if entry is not None:
            # Replaying: the journaled arguments are the ones that count.
            data = entry.data
            fut = self.loop.create_future()
            op = StepOp(entry.seq, name, step, data["args"], data.get("kwargs", {}), retry, seconds, fut)
            self.ops[entry.seq] = op
            self._fast_result(entry, op)
            return fut
        plain_args = round_trip(list(args), "an argument of step %r", name)
        new: dict[str, Any] = {"name": name, "args": plain_args}
        plain_kwargs: dict[str, Any] = {}
        if kwargs:
            plain_kwargs = new["kwargs"] = round_trip(kwargs, "a keyword argument of step %r", name)
        fut = self.loop.create_future()
        entry = self._new_entry(j.STEP_SCHEDULED, new)
        op = StepOp(entry.seq, name, step, plain_args, plain_kwargs, retry, seconds, fut)
        self.ops[entry.seq] = op
        self.new_ops.append(op)
        return fut

    def issue_timer(self, due: float, handle: asyncio.TimerHandle | None = None) -> TimerOp:
        """Record a durable timer command."""
        self.check_open()
        fut = None if handle is not None else self.loop.create_future()
        data = {"due": due}
        entry = self._match(j.TIMER_STARTED, None)
        if entry is None:
            entry = self._new_entry(j.TIMER_STARTED, data)
            op = TimerOp(entry.seq, due, fut, handle)
            self.ops[entry.seq] = op
            self.new_ops.append(op)
            return op
        op = TimerOp(entry.seq, entry.data["due"], fut, handle)
        self.ops[entry.seq] = op
        if handle is None:
            self._fast_result(entry, op)
        return op

    def start_loop_timer(self, handle: asyncio.TimerHandle) -> None:
        """The loop's ``call_at``: a timer in the future is durable."""
        self._loop_timers[handle] = self.issue_timer(handle.when(), handle)

    def cancel_loop_timer(self, handle: asyncio.TimerHandle) -> None:
        """The loop's timer was cancelled (a ``wait_for`` that finished in time)."""
        op = self._loop_timers.pop(handle, None)
        if op is not None:
            self.ops.pop(op.seq, None)

    def issue_wait(self, name: str, match: dict[str, Any], timeout_at: float | None) -> asyncio.Future[Any]:
        """Record a wait for an event."""
        self.check_open()
        data: dict[str, Any] = {"name": name, "match": match}
        if timeout_at is not None:
            data["timeout_at"] = timeout_at
        fut = self.loop.create_future()
        entry = self._match(j.WAIT_STARTED, name)
        if entry is None:
            entry = self._new_entry(j.WAIT_STARTED, data)
            op = WaitOp(entry.seq, name, match, timeout_at, fut)
            self.ops[entry.seq] = op
            self.new_ops.append(op)
            return fut
        op = WaitOp(entry.seq, name, match, entry.data.get("timeout_at"), fut)
        self.ops[entry.seq] = op
        self._fast_result(entry, op)
        return fut

    def issue_child(self, workflow: str, args: list[Any], run_id: str | None) -> asyncio.Future[Any]:
        """Record the start of a child run."""
        self.check_open()
        fut = self.loop.create_future()
        data: dict[str, Any] = {"name": workflow, "args": args}
        entry = self._match(j.CHILD_STARTED, workflow)
        if entry is None:
            seq = self.next_seq
            data["run_id"] = run_id or f"{self.run_id}/{seq}"
            entry = self._new_entry(j.CHILD_STARTED, data)
            op = ChildOp(entry.seq, workflow, data["run_id"], args, fut)
            self.ops[entry.seq] = op
            self.new_ops.append(op)
            return fut
        op = ChildOp(entry.seq, workflow, entry.data["run_id"], args, fut)
        self.ops[entry.seq] = op
        self._fast_result(entry, op)
        return fut

    def side_effect(self, name: str, compute: Callable[[], Any]) -> Any:
        """A value recorded on first run and read back from the journal after."""
        self.check_open()
        entry = self._match(j.SIDE_EFFECT, name)
        if entry is None:
            value = compute()
            self._new_entry(j.SIDE_EFFECT, {"name": name, "value": value})
            return value
        return entry.data["value"]

    def patched(self, patch_id: str) -> bool:
        """True on code paths new runs take; see ``Context.patched``."""
        self.check_open()
        known = self._patches.get(patch_id)
        if known is not None:
            return known
        if self._live:
            self._new_entry(j.PATCH, {"name": patch_id})
            result = True
        else:
            entries = self._entries
            i = self._cmd
            while i < len(entries) and entries[i].kind not in j.COMMAND_KINDS:
                i += 1
            if i < len(entries) and entries[i].kind == j.PATCH and entries[i].data["name"] == patch_id:
                self._cmd = i + 1
                result = True
            elif i == len(entries):
                self._cmd = i
                self._live_commands()
                self._new_entry(j.PATCH, {"name": patch_id})
                result = True
            else:
                result = False  # the run started before the patch: keep the old path
        self._patches[patch_id] = result
        return result

    # -- completions ----------------------------------------------------------------

    def _apply_retry(self, op: Op, entry: Entry) -> None:
        if isinstance(op, StepOp):
            op.attempts = entry.data["attempt"]
            op.retry_at = entry.data.get("retry_at")

    def deliver(self, entry: Entry, run: bool = True) -> None:
        """Hand the workflow a journaled completion, then run it until it blocks.

        Only call this once ``entry`` is durable: journal before deliver.
        """
        kind = entry.kind
        data = entry.data
        if kind == j.STEP_COMPLETED:
            # The commonest completion by far: the branches below, for it alone.
            loop = self.loop
            if entry.at > loop._time:
                loop._time = entry.at
            op = self.ops.pop(data["op"], None)
            if op is None:
                return  # the workflow no longer waits for it
            fut = op.future
            if fut is not None and not fut.done():
                fut.set_result(data["result"])
            if run:
                self._run()
            return
        self.loop.set_time(entry.at)
        if kind == j.CANCEL_REQUESTED:
            self.cancel_requested = True
            self.root.cancel()
        elif kind in j.TERMINAL_KINDS:
            self.journaled_end = entry  # only a finished run's replay (check_replay) meets one
            return
        else:
            seq = data["op"]
            op = self.ops.get(seq)
            if op is None:
                return  # the workflow stopped waiting for it (a cancelled timer)
            if kind == j.STEP_FAILED and "retry_at" in data:
                self._apply_retry(op, entry)
                return
            del self.ops[seq]
            if isinstance(op, TimerOp) and op.handle is not None:
                self._loop_timers.pop(op.handle, None)
                self.loop.fire(op.handle)
            else:
                self._resolve(op, entry)
        if run:
            self._run()

    def _resolve(self, op: Op, entry: Entry) -> None:
        fut: asyncio.Future[Any] | None = op.future
        if fut is None or fut.done():
            return  # the workflow cancelled its await; the outcome is journaled all the same
        kind = entry.kind
        data = entry.data
        if kind == j.STEP_COMPLETED:
            fut.set_result(data["result"])
        elif kind == j.STEP_FAILED:
            err = data["error"]
            name = op.name if isinstance(op, StepOp) else "?"
            fut.set_exception(
                StepFailed(name, err["type"], err["message"], err.get("traceback", ""), data["attempt"])
            )
        elif kind in (j.TIMER_FIRED, j.WAIT_TIMED_OUT):
            fut.set_result(None)
        elif kind == j.EVENT_RECEIVED:
            from replay.app import Event

            ev = data["event"]
            fut.set_result(Event(ev["id"], ev["name"], ev["data"], ev["at"]))
        elif kind == j.CHILD_COMPLETED:
            if data["status"] == "completed":
                fut.set_result(data["result"])
            else:
                fut.set_exception(error_from_data(data["error"]))
        else:
            raise ReplayInternalError(f"cannot deliver a {kind} entry")

    def _finish(self) -> None:
        root = self.root
        if root.cancelled():
            self.outcome = Entry(0, j.WORKFLOW_CANCELLED, 0.0, {})
            return
        exc = root.exception()
        if exc is None:
            self.outcome = Entry(0, j.WORKFLOW_COMPLETED, 0.0, {"result": root.result()})
        elif isinstance(exc, asyncio.CancelledError) and self.cancel_requested:
            self.outcome = Entry(0, j.WORKFLOW_CANCELLED, 0.0, {})
        else:
            self.outcome = Entry(0, j.WORKFLOW_FAILED, 0.0, {"error": j.error_data(exc)})

    # -- what the worker asks ---------------------------------------------------------

    def take_new_ops(self) -> list[Op]:
        """Ops issued live since the last call, for the worker to execute."""
        ops = self.new_ops
        self.new_ops = []
        return ops

    def take_buffer(self) -> list[Entry]:
        """Journal entries issued live and not yet appended."""
        buf = self.buffer
        self.buffer = []
        return buf

    def alloc(self, kind: str, data: dict[str, Any]) -> Entry:
        """A new entry for a completion the worker is about to append."""
        entry = Entry(self.next_seq, kind, self.now(), data)
        self.next_seq += 1
        return entry

    def wake_at(self) -> float | None:
        """When this run next needs attention if nothing else happens."""
        times = [self.deadline] if self.deadline is not None else []
        for op in self.ops.values():
            if isinstance(op, TimerOp):
                times.append(op.due)
            elif isinstance(op, StepOp) and op.retry_at is not None:
                times.append(op.retry_at)
            elif isinstance(op, WaitOp) and op.timeout_at is not None:
                times.append(op.timeout_at)
        return min(times) if times else None

    def close(self) -> None:
        """Drop the coroutines without running them further (eviction or a crash).

        Each coroutine is closed here, on this loop, rather than by the garbage
        collector later: a ``finally`` block that calls a step then meets a closed
        instance and stops, instead of running the step for real outside any workflow.
        """
        self.closed = True
        self.ops.clear()
        # The loop's own list: asyncio.all_tasks walks every task in the process.
        tasks = [t for t in self.loop.tasks if not t.done()]
        previous = events._get_running_loop()
        events._set_running_loop(self.loop)
        try:
            for task in tasks:
                # Whatever the coroutine does on close, it is gone.
                with contextlib.suppress(BaseException):
                    task.get_coro().close()
        finally:
            events._set_running_loop(previous)
            self.loop.close()

    def check_open(self) -> None:
        """Refuse new commands from a closed instance."""
        if self.closed:
            raise InstanceClosed()
