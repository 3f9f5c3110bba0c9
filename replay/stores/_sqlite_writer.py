"""The SQLite store's one writer: one connection, one thread for its fsyncs, group commit.

Coroutines hand the writer a job (a function of the connection) and await its
future. The writer takes every job queued by the time it is free and runs them
in ONE transaction, then commits ONCE. Only after that commit are the jobs'
notices delivered and their callers resumed. While one group commits, the next
queues: the more concurrent writers, the more jobs share an fsync.

A job that raises (a stale lease token, say) fails alone. Jobs are functions of
the connection, so the writer runs them without isolating each one: when one
raises, it rolls the group back to its start and runs the group again, this
time each job in its own SAVEPOINT and without the job that raised, which keeps
its error. A failure is rare (a fence that a takeover tripped); the common case
pays two statements per job less.

Where the work runs is chosen for CPython's GIL. The jobs' statements are short
and CPU-bound, so they run on the event loop's thread: a thread of their own
would hand the GIL back and forth at every statement, and under load that
costs ten times the SQL itself. What blocks runs on the writer thread: the
COMMIT (the fsync) and, when another process holds the write lock, the wait
for it. So a group costs one round trip to the thread, however many jobs it holds.
The loop waits, with the GIL released, until the thread has started the COMMIT:
a thread that is merely woken gets the GIL only when the loop idles, and the
fsync would then stall the loop instead of running beside it (W1 +15%).
One exception: a group of one job with nothing queued behind it commits on the
loop's thread. No other write is waiting to share that fsync, and the two hops
to the thread and back (about 0.1 ms) would be most of a lone step's latency;
the loop is held for that one fsync (or, rarely, the WAL checkpoint SQLite runs
inside a commit).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, cast

from replay.errors import StoreError
from replay.stores.base import Notice

__all__ = ("Batchable", "Job", "JobFailed", "Writer", "before_commit")

T = TypeVar("T")

log = logging.getLogger("replay.stores.sqlite")

#: A job: runs inside the open transaction; appends the notices to deliver once
#: the transaction commits, and returns the result.
Job = Callable[[sqlite3.Connection, list[Notice]], T]

#: A test hook, None in production. When set, every group calls it on the event
#: loop's thread as ``before_commit(conn, jobs)``, inside the group's transaction,
#: after all ``jobs`` ran and right before the COMMIT goes to the writer thread:
#: the one moment a group is complete but not yet durable. The crash tests set it
#: in a worker process to kill that process there (tests/recovery/test_sigkill.py).
#: What it raises fails the group. Set it in tests only; it is one global lookup.
before_commit: Callable[[sqlite3.Connection, int], None] | None = None

#: The longest the loop blocks, handing a COMMIT to the writer thread, for the
#: thread to start it (seconds). The thread is idle then, so it starts in tens
#: of microseconds; the bound only matters on a starved machine.
HANDOFF_WAIT = 0.002


class _Pending:
    __slots__ = ("error", "future", "job", "notices", "result")

    def __init__(self, job: Job[Any], future: asyncio.Future[Any]) -> None:
        self.job = job
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None
        self.notices: list[Notice] = []


class Writer:
    """Owns the write connection, the queue of jobs and the thread that commits.

    Args:
        connect: opens the write connection (called on the writer thread).
        deliver: hands one notice to this process's listeners.
        busy_timeout: seconds to wait for another process's write lock.
        max_batch: the most jobs one transaction takes.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        deliver: Callable[[Notice], None],
        *,
        busy_timeout: float,
        max_batch: int = 1000,
    ) -> None:
        self._connect = connect
        self._deliver = deliver
        self._busy_ms = int(busy_timeout * 1000)
        self._max_batch = max_batch
        self._queue: collections.deque[_Pending] = collections.deque()
        self._conn: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._drain: asyncio.Task[None] | None = None
        self._accepting = False
        self._inflight: concurrent.futures.Future[Any] | None = None  # the thread's latest call
        #: Transactions committed: each one is one fsync of the WAL under synchronous=FULL.
        self.commits = 0
        #: Jobs committed.
        self.jobs = 0
        #: Groups that had to wait for another connection's write lock.
        self.lock_waits = 0

    async def start(self) -> None:
        """Start the thread and open the connection; raises what opening raised."""
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="replay-sqlite-writer")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(self._thread, self._connect)
        except BaseException:
            self._thread.shutdown()
            self._thread = None
            raise
        conn.execute("PRAGMA busy_timeout = 0")  # lock waits happen on the thread, not the loop
        self._conn = conn
        self._accepting = True

    async def submit(self, job: Job[T]) -> T:
        """Run ``job`` in the next group; returns its result once its group committed."""
        return await self.enqueue(job)

    def enqueue(self, job: Job[T]) -> asyncio.Future[T]:
        """Queue ``job`` for the next group; the future resolves once its group committed.

        Must be called on the event loop's thread, as ``submit`` (one coroutine
        frame fewer for the callers that await it at once).
        """
        if not self._accepting:
            raise StoreError("the SQLite store is not open: call `await store.open()` first")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        pending = _Pending(job, future)
        self._queue.append(pending)
        drain = self._drain
        if drain is None or drain.done():
            self._drain = loop.create_task(self._run_groups(), name="replay-sqlite-writer")
        elif drain.get_loop() is not loop:
            self._queue.remove(pending)
            raise StoreError("the SQLite store is in use by another event loop")
        return future

    async def stop(self) -> None:
        """Commit the jobs queued so far, then close the connection and end the thread."""
        self._accepting = False
        drain = self._drain
        if drain is not None and not drain.done():
            await asyncio.wait([drain])
        conn, thread = self._conn, self._thread
        self._conn = self._thread = None
        if thread is not None:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(thread, conn.close)
            thread.shutdown()

    # -- groups ----------------------------------------------------------------------------

    async def _run_groups(self) -> None:
        # The one task that uses the connection: groups never overlap.
        while self._queue:
            taken = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
            # A caller cancelled before its group ran never learns the outcome: its job
            # is not run. (A claim cancelled by a drain would own runs nobody drives.)
            group = [p for p in taken if not p.future.cancelled()]
            if group:
                await self._run(group)

    async def _run(self, group: list[_Pending]) -> None:
        conn, thread = self._conn, self._thread
        try:
            if conn is None or thread is None:
                raise StoreError("the SQLite store was closed")
            await self._settle(conn)
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                # Another process is writing: wait for its lock on the thread, not here.
                self.lock_waits += 1
                await self._on_thread(thread, self._begin_waiting, conn)
            conn.execute("SAVEPOINT grp")
            failed = _run_jobs(conn, group)
            if failed is not None:
                # Rare: undo the whole group and run it again, each job isolated, without the failed one.
                conn.execute("ROLLBACK TO grp")
                _run_jobs_isolated(conn, group, failed)
            if before_commit is not None:
                before_commit(conn, len(group))
            if len(group) == 1 and not self._queue:
                # A lone job: nothing would share its fsync, and nothing else is queued to
                # write meanwhile; committing here saves two thread hops (about 0.1 ms).
                conn.execute("COMMIT")
            else:
                await self._commit_on_thread(thread, conn)
            self.commits += 1
            self.jobs += len(group)
        except asyncio.CancelledError:
            # The loop is going away. A COMMIT already handed to the thread still
            # completes there, before anything else the thread runs (it runs one
            # thing at a time); the callers are told they were cancelled.
            for p in group:
                p.future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every caller in the group
            # The group as a whole failed (the disk, a lock held too long): nothing of it stands.
            if conn is not None and conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            error = (
                exc
                if isinstance(exc, StoreError)
                else StoreError(f"the SQLite store could not commit: {exc}")
            )
            for p in group:
                p.error, p.notices = error, []
        # Notices first, as a memory store delivers them before the call returns.
        for p in group:
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

    async def _on_thread(self, thread: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> None:
        self._inflight = thread.submit(fn, *args)
        await asyncio.wrap_future(self._inflight)

    async def _commit_on_thread(self, thread: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        # Hand the GIL over: the loop blocks (GIL released) until the thread has
        # taken the COMMIT, which then releases the GIL for the fsync. Without this the
        # thread waits for the GIL until the loop runs out of work (or for the 5 ms
        # switch interval), and the fsync no longer overlaps the loop's work.
        started = threading.Lock()
        started.acquire()  # a new lock: taken at once; the thread releases it

        def commit() -> None:
            started.release()
            conn.execute("COMMIT")

        self._inflight = thread.submit(commit)
        started.acquire(timeout=HANDOFF_WAIT)
        await asyncio.wrap_future(self._inflight)

    async def _settle(self, conn: sqlite3.Connection) -> None:
        # A group cancelled while the thread worked on it left that call running,
        # and maybe a transaction open: finish the one and roll back the other.
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            await asyncio.wait([asyncio.wrap_future(inflight)])
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def _begin_waiting(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        try:
            conn.execute("BEGIN IMMEDIATE")
        finally:
            conn.execute("PRAGMA busy_timeout = 0")


class Batchable(Protocol):
    """A job that may run with its like: consecutive jobs of one type, with distinct keys."""

    #: Jobs in one ``run_many`` call have distinct keys.
    key: Hashable

    def __call__(self, conn: sqlite3.Connection, notices: list[Notice]) -> Any:
        """Run alone, as any job."""

    @staticmethod
    def run_many(
        conn: sqlite3.Connection, jobs: Sequence[Any], notices: Sequence[list[Notice]]
    ) -> Sequence[Any] | None:
        """Run ``jobs`` as if one after the other; raise ``JobFailed`` to blame one.

        Each job queues its notices in its own list of ``notices`` (same order as
        ``jobs``). Returns the jobs' results in order, or None for jobs that return None.
        """


class JobFailed(Exception):
    """Raised by a job type's ``run_many``: the job at ``index`` failed with ``error``."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


#: What ``_run_jobs`` returns when a batch failed and no one job can be blamed.
_REDO_ALL = _Pending.__new__(_Pending)


def _run_jobs(conn: sqlite3.Connection, group: list[_Pending]) -> _Pending | None:
    """Run every job; stop at the first that raises and return it, its error set.

    Consecutive jobs of one type with a ``run_many(conn, jobs, notices)`` static method,
    and distinct ``key`` attributes, run in one call of it (see
    ``_sqlite_appends.PlainAppend``): it raises ``JobFailed`` to blame one job,
    anything else to have the whole group run again with each job alone.
    """
    i, n = 0, len(group)
    while i < n:
        p = group[i]
        many = getattr(p.job, "run_many", None)
        if many is None:
            try:
                p.result = p.job(conn, p.notices)
            except Exception as exc:  # noqa: BLE001 - raised in its caller
                p.error = _store_error(exc)
                return p
            i += 1
            continue
        kind, keys, end = type(p.job), set(), i
        while end < n and type(job := group[end].job) is kind:
            key = cast("Batchable", job).key
            if key in keys:
                break
            keys.add(key)
            end += 1
        try:
            results = many(conn, [q.job for q in group[i:end]], [q.notices for q in group[i:end]])
            if results is not None:
                for q, result in zip(group[i:end], results, strict=True):
                    q.result = result
        except JobFailed as exc:
            failed = group[i + exc.index]
            failed.error = _store_error(exc.error)
            return failed
        except Exception:  # noqa: BLE001 - each job alone will say whose it is
            return _REDO_ALL
        i = end
    return None


def _run_jobs_isolated(conn: sqlite3.Connection, group: list[_Pending], failed: _Pending) -> None:
    """Run every job but ``failed`` (which keeps its error), each in a SAVEPOINT and alone.

    One that raises is undone alone.
    """
    for p in group:
        p.result, p.notices = None, []  # what the first run produced was rolled back
        if p is failed:
            continue
        conn.execute("SAVEPOINT job")
        try:
            p.result = p.job(conn, p.notices)
        except Exception as exc:  # noqa: BLE001 - undone alone, raised in its caller
            conn.execute("ROLLBACK TO job")
            p.error, p.notices = _store_error(exc), []
        conn.execute("RELEASE job")


def _store_error(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.Error):
        return StoreError(f"the SQLite store failed: {exc}")
    return exc
