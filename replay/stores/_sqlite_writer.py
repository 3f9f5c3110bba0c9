"""The SQLite store's one writer: a thread that commits queued writes in groups.

Coroutines hand the writer a job (a function of the connection) and await its
future. The thread takes every job queued by the time it is free, runs them in
ONE transaction, each inside its own SAVEPOINT so that a job that raises (a
stale lease token, say) is undone alone, then commits ONCE. Only after that
commit are the jobs' notices delivered and their callers resumed, on each
caller's own event loop. While one group commits (the fsync), the next queues:
the more concurrent writers, the more jobs share an fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from replay.errors import StoreError
from replay.stores.base import Notice

__all__ = ("Job", "Writer")

T = TypeVar("T")

log = logging.getLogger("replay.stores.sqlite")

#: A job: runs in the writer thread inside the open transaction; appends the
#: notices to deliver once the transaction commits, and returns the result.
Job = Callable[[sqlite3.Connection, list[Notice]], T]


@attrs.define(eq=False)
class _Pending:
    job: Job[Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    result: Any = None
    error: BaseException | None = None
    notices: list[Notice] = attrs.Factory(list)


_STOP = object()


class Writer:
    """Owns the write connection and its thread.

    Args:
        connect: opens the write connection (called in the writer thread).
        deliver: hands one notice to this process's listeners (called on the loop).
        max_batch: the most jobs one transaction takes.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        deliver: Callable[[Notice], None],
        *,
        max_batch: int = 1000,
    ) -> None:
        self._connect = connect
        self._deliver = deliver
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        #: Transactions committed: each one is one fsync of the WAL under synchronous=FULL.
        self.commits = 0
        #: Jobs committed.
        self.jobs = 0

    async def start(self) -> None:
        """Open the connection and start the thread; raises what opening raised."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._main, args=(loop, ready), name="replay-sqlite-writer")
        self._thread.daemon = True
        self._thread.start()
        await ready

    async def submit(self, job: Job[T]) -> T:
        """Run ``job`` in the next group; returns its result once its group committed."""
        if self._thread is None:
            raise StoreError("the SQLite store is not open: call `await store.open()` first")
        loop = asyncio.get_running_loop()
        pending = _Pending(job, loop, loop.create_future())
        self._queue.put(pending)
        result: T = await pending.future
        return result

    async def stop(self) -> None:
        """Finish the jobs queued so far, then close the connection and end the thread."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(thread.join)

    # -- the thread ------------------------------------------------------------------------

    def _main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:  # noqa: BLE001 - handed to the opener
            loop.call_soon_threadsafe(_settle_start, ready, exc)
            return
        loop.call_soon_threadsafe(_settle_start, ready, None)
        try:
            stop = False
            while not stop:
                batch: list[_Pending] = []
                item = self._queue.get()
                while True:
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
                    if len(batch) >= self._max_batch:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    self._run(conn, batch)
        finally:
            conn.close()

    def _run(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            for p in batch:
                conn.execute("SAVEPOINT job")
                try:
                    p.result = p.job(conn, p.notices)
                except Exception as exc:  # noqa: BLE001 - undone alone, raised in its caller
                    conn.execute("ROLLBACK TO job")
                    p.error, p.notices = _store_error(exc), []
                conn.execute("RELEASE job")
            conn.execute("COMMIT")
            self.commits += 1
            self.jobs += len(batch)
        except Exception as exc:  # noqa: BLE001 - handed to every caller in the group
            # The group as a whole failed (the disk, a lock held too long): nothing of it stands.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            error = StoreError(f"the SQLite store could not commit: {exc}")
            for p in batch:
                p.error, p.notices = error, []
        by_loop: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        for p in batch:
            by_loop.setdefault(p.loop, []).append(p)
        for loop, done in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these
                loop.call_soon_threadsafe(self._resolve, done)

    def _resolve(self, done: list[_Pending]) -> None:
        # Notices first, as a memory store delivers them before the call returns.
        for p in done:
            for notice in p.notices:
                try:
                    self._deliver(notice)
                except Exception:
                    log.exception("a store listener failed on %s", notice)
            if not p.future.done():
                if p.error is not None:
                    p.future.set_exception(p.error)
                else:
                    p.future.set_result(p.result)


def _settle_start(ready: asyncio.Future[None], exc: BaseException | None) -> None:
    if ready.done():
        return
    if exc is None:
        ready.set_result(None)
    else:
        ready.set_exception(exc)


def _store_error(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.Error):
        return StoreError(f"the SQLite store failed: {exc}")
    return exc
