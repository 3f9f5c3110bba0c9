"""The deterministic event loop each workflow instance runs on.

It is a minimal asyncio loop: a FIFO ready queue, no I/O, ``time()`` is journal
time, and ``call_at`` in the future becomes a durable timer (so ``asyncio.sleep``,
``wait_for`` and ``timeout`` inside a workflow are journaled). Tasks, futures,
``gather``, ``wait``, ``TaskGroup`` and ``wait_for`` are asyncio's own; they only
need the methods below. The driver calls ``run_ready`` to run every ready
callback until none is left; nothing here ever blocks.

It swaps itself in as the thread's running loop only while it runs callbacks
(``asyncio.events._set_running_loop``, pinned by tests/core/test_loop.py), then
puts the host loop back.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
from asyncio import events
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, NoReturn

from replay.errors import WorkflowSandboxError

if TYPE_CHECKING:
    from replay._instance import Instance

__all__ = ("WorkflowLoop", "current_instance")

_IO_MESSAGE = (
    "workflow code cannot {what}: workflows must be deterministic and are replayed "
    "from their journal. Move this into a step (@app.step) and await the step."
)


class WorkflowLoop(asyncio.AbstractEventLoop):
    """An asyncio loop that only runs callbacks, owned by one workflow instance."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self._ready: collections.deque[asyncio.Handle] = collections.deque()  # read by the instance
        self._time = 0.0
        self._closed = False
        self._running = False
        self._task_count = 0
        self.tasks: list[asyncio.Task[Any]] = []  # every task of this workflow, for closing

    # -- driving -----------------------------------------------------------------

    def run_ready(self) -> None:
        """Run ready callbacks, in order, until none is left."""
        ready = self._ready
        if not ready:
            return
        previous = events._get_running_loop()
        events._set_running_loop(self)
        self._running = True
        try:
            while ready:
                handle = ready.popleft()
                if not handle._cancelled:
                    try:  # noqa: SIM105 - free when nothing raises; contextlib.suppress is not
                        handle._run()
                    except SystemExit:
                        # Workflow code called sys.exit(). asyncio records it on the task and
                        # raises it on to end the process; here it ends only the task, so the
                        # run fails with it instead of every worker that replays it exiting.
                        # (A bare callback's, which no task records, is dropped.)
                        pass
        finally:
            self._running = False
            events._set_running_loop(previous)

    def has_ready(self) -> bool:
        """Whether a callback is waiting to run."""
        return bool(self._ready)

    def set_time(self, when: float) -> None:
        """Move journal time forward (never back)."""
        if when > self._time:
            self._time = when

    def fire(self, handle: asyncio.TimerHandle) -> None:
        """Queue a durable timer's callback: its ``timer_fired`` was delivered."""
        self._ready.append(handle)

    # -- the asyncio loop API that tasks and futures use ----------------------------

    def time(self) -> float:
        """Journal time: when the latest delivered entry was journaled."""
        return self._time

    def call_soon(  # type: ignore[override]
        self, callback: Callable[..., object], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_later(  # type: ignore[override]
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self.call_at(self._time + delay, callback, *args, context=context)

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, args, self, context)
        if when <= self._time:
            self._ready.append(handle)
        else:
            self.instance.start_loop_timer(handle)
        return handle

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        self.instance.cancel_loop_timer(handle)

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(
        self,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any] | asyncio.Future[Any],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[Any]:
        # Names are deterministic too: a replayed task has the name it had live.
        self._task_count += 1
        if isinstance(coro, asyncio.Future):
            # A step call is a future (it starts at once); let it be a task's body too,
            # so `tg.create_task(charge(...))` and `asyncio.create_task(...)` work.
            coro = _await(coro)
        if name is None:
            name = f"{self.instance.run_id}:task-{self._task_count}"
        task = asyncio.Task(coro, loop=self, name=name, context=context)
        self.tasks.append(task)
        return task

    def get_task_factory(self) -> None:
        return None

    def set_task_factory(self, factory: object) -> None:
        self._forbidden("replace the task factory")

    def get_debug(self) -> bool:
        return False

    def set_debug(self, enabled: bool) -> None:
        pass

    def is_running(self) -> bool:
        return self._running

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._ready.clear()

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self.default_exception_handler(context)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        # Once closed, the instance's tasks die pending on purpose (eviction, a crash):
        # nothing to report. Keeping the context would also keep the dying task, and
        # with it the whole instance, alive past the collection that found it.
        if self._closed:
            return
        exception = context.get("exception")
        self.instance.ctx.log.error(
            "%s", context.get("message", "unhandled error in workflow code"), exc_info=exception
        )

    def get_exception_handler(self) -> None:
        return None

    def set_exception_handler(self, handler: object) -> None:
        self._forbidden("replace the exception handler")

    async def shutdown_asyncgens(self) -> None:
        pass

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        pass

    # -- everything that would be I/O, threads or blocking: a clear error ----------

    def _forbidden(self, what: str) -> NoReturn:
        raise WorkflowSandboxError(_IO_MESSAGE.format(what=what))

    def run_forever(self) -> NoReturn:
        self._forbidden("run the event loop")

    def run_until_complete(self, future: object) -> NoReturn:
        self._forbidden("run the event loop")

    def stop(self) -> None:
        self._forbidden("stop the event loop")

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        self._forbidden("use threads")

    def run_in_executor(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        self._forbidden("run code in a thread or process executor")

    def set_default_executor(self, executor: object) -> NoReturn:
        self._forbidden("use an executor")

    async def getaddrinfo(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("resolve host names")

    async def getnameinfo(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("resolve host names")

    async def create_connection(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("open network connections")

    async def create_server(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("start servers")

    async def create_datagram_endpoint(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("open network connections")

    async def create_unix_connection(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("open network connections")

    async def create_unix_server(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("start servers")

    async def connect_accepted_socket(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("use sockets")

    async def sendfile(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("send files")

    async def start_tls(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("open network connections")

    async def connect_read_pipe(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("use pipes")

    async def connect_write_pipe(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("use pipes")

    async def subprocess_shell(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("start subprocesses")

    async def subprocess_exec(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("start subprocesses")

    def add_reader(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        self._forbidden("watch file descriptors")

    def remove_reader(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("watch file descriptors")

    def add_writer(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        self._forbidden("watch file descriptors")

    def remove_writer(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("watch file descriptors")

    async def sock_recv(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("use sockets")

    async def sock_recv_into(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("use sockets")

    async def sock_recvfrom(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("use sockets")

    async def sock_recvfrom_into(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("use sockets")

    async def sock_sendall(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("use sockets")

    async def sock_sendto(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("use sockets")

    async def sock_connect(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("use sockets")

    async def sock_accept(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("use sockets")

    async def sock_sendfile(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("use sockets")

    def add_signal_handler(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        self._forbidden("handle signals")

    def remove_signal_handler(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._forbidden("handle signals")


async def _await(future: asyncio.Future[Any]) -> Any:
    return await future


def current_instance() -> Instance | None:
    """The workflow instance whose code is running now, if any."""
    loop = events._get_running_loop()
    if type(loop) is WorkflowLoop:
        return loop.instance
    return None
