"""Start a task eagerly: run its coroutine at once, up to its first real wait.

A step that returns without awaiting anything pending (a computation, a cache
hit, a mock) then finishes before ``start_task`` returns. Its outcome reaches
the run's driver while the driver is still running, so the driver journals it
in the same turn instead of sleeping and being woken for it: two loop turns
fewer per step, which is most of what a step costs the event loop.

Python 3.12 has this built in (``eager_start=True``) and uses it. On 3.11 this
module does the same thing: the coroutine runs its first part here, inside a
``Task`` created for it and made the current task meanwhile, so code in that
part sees what it would see in any task: ``asyncio.current_task()`` is its own
task, ``asyncio.timeout`` and anyio's cancel scopes work, and context variables
set there stay in the task's own context. If the coroutine waits, the task
carries it on from that wait; if it finished, the task's first turn only
records the outcome.

It uses asyncio's private ``tasks._enter_task`` and ``tasks._leave_task`` (the
calls a task's own step makes); tests/core/test_eager.py pins them.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from asyncio import tasks
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

__all__ = ("start_task",)

T = TypeVar("T")


def start_task(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop, name: str) -> asyncio.Task[T]:
    """A task running ``coro``, already run up to its first wait (or to its end).

    Must be called on ``loop``'s thread while ``loop`` runs.
    """
    if sys.version_info >= (3, 12):
        return asyncio.Task(coro, loop=loop, name=name, eager_start=True)
    context = contextvars.copy_context()
    first = _FirstPart(coro)
    task: asyncio.Task[T] = asyncio.Task(first, loop=loop, name=name, context=context)
    caller = asyncio.current_task(loop)
    if caller is not None:
        tasks._leave_task(loop, caller)
    tasks._enter_task(loop, task)
    try:
        context.run(first.start)
    finally:
        tasks._leave_task(loop, task)
        if caller is not None:
            tasks._enter_task(loop, caller)
    return task


class _FirstPart(Coroutine[Any, Any, Any]):
    """What the task runs: ``coro``, of which ``start`` already ran the first part.

    The task drives it as any coroutine: its first ``send`` hands the task what
    ``coro`` waits on (or ends with the outcome ``start`` met); from then on
    every ``send`` and ``throw`` goes to ``coro`` itself.
    """

    __slots__ = ("_coro", "_done", "_error", "_first", "_result", "_started")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self._started = False  # the task has taken the first part's outcome
        self._first: Any = None  # what coro waits on after its first part
        self._done = False  # the first part ran to the end: returned or raised
        self._result: Any = None
        self._error: BaseException | None = None

    def start(self) -> None:
        """Run ``coro`` up to its first wait; keep what it yielded, returned or raised."""
        try:
            self._first = self._coro.send(None)
        except StopIteration as stop:
            # Only the value is kept: the exception's traceback would hold this frame,
            # and so this object, in a cycle left to the garbage collector.
            self._done, self._result = True, stop.value
        except BaseException as exc:  # noqa: BLE001 - handed to the task on its first turn
            self._done, self._error = True, exc

    def send(self, value: Any) -> Any:
        """The task resumes the coroutine (the first time: the part already run)."""
        if self._started:
            return self._coro.send(value)
        self._started = True
        if not self._done:
            return self._first
        error, self._error = self._error, None
        if error is None:
            raise StopIteration(self._result)  # finished in the first part: the task's result
        raise error

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """The task throws into the coroutine: a cancellation (the only thing a task throws)."""
        if not self._started:
            self._started = True
            if self._done:
                # Finished already (returned or raised): what is thrown in ends the task instead.
                self._error = None
                raise typ if val is None else val
            first, exc = self._first, typ if val is None else val
            cancel = isinstance(exc, asyncio.CancelledError) and getattr(
                first, "_asyncio_future_blocking", False
            )
            if cancel and first.cancel(exc.args[0] if exc.args else None):
                # Cancelled before its first turn, while waiting on a future. A task that
                # had taken its turn would cancel that future and wait for it to be done
                # (an inner task first runs its own cleanup); so does this one, handed
                # the future as if the coroutine had only now yielded it.
                return first
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        """The task is gone without finishing: close the coroutine with it."""
        self._coro.close()

    def __await__(self) -> Generator[Any, Any, Any]:
        # Awaiting it (asyncio never does; a task drives it) resumes it the same way.
        try:
            value = self.send(None)
            while True:
                try:
                    sent = yield value
                except BaseException as exc:  # noqa: BLE001 - thrown on into the coroutine
                    value = self.throw(exc)
                else:
                    value = self.send(sent)
        except StopIteration as stop:
            return stop.value

    def __repr__(self) -> str:
        return repr(self._coro)
