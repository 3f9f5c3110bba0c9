"""``sqlite:///path``: the default store, one machine, embedded, zero setup.

``sqlite:///replay.db`` is a path relative to the working directory,
``sqlite:////var/lib/app/replay.db`` an absolute one.

- **Durability.** WAL mode with ``synchronous=FULL``: an append has reached the
  disk (one fsync of the WAL) before the caller resumes. ``?durability=normal``
  (or ``durability="normal"``) fsyncs only at checkpoints: a power loss may then
  drop the last commits, though never corrupt the file; a process crash loses nothing.
  Under ``full`` the writer sizes the WAL when it opens, so that each commit's
  fsync overwrites the file rather than grows it (about half the cost; see
  ``_sqlite_wal``).
- **One writer, group commit.** Every write (create, append, claim, event...) is
  queued to the one writer connection, which runs all that is queued in ONE
  transaction with ONE commit; a write that fails (a stale lease token) fails
  alone (the group is rolled back and run again without it, each write then
  in its own SAVEPOINT). Callers resume after that commit. The commit (the
  fsync) runs on the writer's own thread while the event loop goes on, except
  for a lone write with nothing queued behind it, which commits on the loop's
  thread to save the two hops; ``store.commits`` counts the commits.
- **Reads never wait for the writer.** They use their own connection, which in
  WAL mode reads the last commit while the writer writes the next. A point read
  costs about 15 µs, so it runs on the event loop's thread: handing it to a
  thread pool would cost ~100 µs and pass the GIL to and fro (see
  ``_sqlite_writer`` for why that matters).
- **Ownership.** A registered worker holds an OS lock (``flock``) on a file in
  ``<db>-workers/``. When its process dies the kernel frees the lock, so any
  other process can claim its ``running`` runs at once; a live worker's runs are
  never taken. POSIX only (``fcntl``).
- **Schema.** Versioned migrations; a file that is not a replay database, is
  corrupt, or comes from a newer replay raises ``SchemaError`` and is left as it was.
- **Notices** reach listeners in this process; workers in other processes find
  new work, and news for the runs they keep in memory (``runs_with_news``), by
  polling every ``poll_interval`` seconds (1 s by default; set
  ``Worker(poll_interval=...)`` to change it).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

from replay.errors import StoreError
from replay.journal import Entry, encode_entry, encode_value
from replay.stores import _sqlite_reads as reads
from replay.stores import _sqlite_writes as writes
from replay.stores._prepared import PreparedRun, PreparedUpdate
from replay.stores._sqlite_appends import FinishAppend, PlainAppend
from replay.stores._sqlite_creates import PlainCreate, create_run
from replay.stores._sqlite_locks import WorkerLocks
from replay.stores._sqlite_schema import check_read_only, prepare
from replay.stores._sqlite_wal import presize_wal
from replay.stores._sqlite_writer import Writer
from replay.stores.base import Claim, EventRecord, NewRun, Notice, RunInfo, RunUpdate, Store

__all__ = ("Durability", "SqliteStore")

Durability = Literal["full", "normal"]
_DURABILITIES: dict[str, Durability] = {"full": "full", "normal": "normal"}
T = TypeVar("T")


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """Split ``sqlite:///path?options`` into the file's path and the options.

    Raises:
        ValueError: not a SQLite store URL.
    """
    scheme, sep, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    if not sep or scheme.split("+", 1)[0] != "sqlite" or not rest.startswith("/") or len(rest) < 2:
        raise ValueError(
            f"a SQLite store URL is sqlite:///relative/path or sqlite:////absolute/path, got {url!r}"
        )
    options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - {"durability"})
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} in {url!r}: the SQLite store knows durability"
        )
    path = urllib.parse.unquote(rest[1:])
    if path == ":memory:":
        raise ValueError("an in-memory SQLite database cannot be shared by connections: use memory://")
    return path, options


class SqliteStore(Store):
    """A store in one SQLite file. See the module docstring.

    Args:
        url: ``sqlite:///relative/path`` or ``sqlite:////absolute/path``, optionally
            with ``?durability=normal``.
        durability: ``"full"`` (fsync every commit, the default) or ``"normal"``
            (fsync at checkpoints only); overrides the URL's option.
        busy_timeout: seconds to wait for another process's write lock.
    """

    poll_interval: float | None = 1.0

    def __init__(
        self,
        url: str = "sqlite:///replay.db",
        *,
        durability: Durability | None = None,
        busy_timeout: float = 30.0,
    ) -> None:
        super().__init__()
        path, options = parse_url(url)
        chosen = durability if durability is not None else options.get("durability", "full")
        if chosen not in _DURABILITIES:
            raise ValueError(f"durability must be 'full' or 'normal', got {chosen!r}")
        self.url = url
        self.path = path
        self.durability: Durability = _DURABILITIES[chosen]
        self.busy_timeout = busy_timeout
        # Named from the file itself: a process that opens it through a symlink must
        # see the same locks, or it would take the runs of a live owner for a dead one's.
        self._locks = WorkerLocks(os.path.realpath(path) + "-workers")
        self._writer: Writer | None = None
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path!r}>"

    @property
    def commits(self) -> int:
        """Transactions the writer has committed (each one fsync under ``durability="full"``)."""
        return 0 if self._writer is None else self._writer.commits

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Check the file (creating it if new), migrate it and start the writer.

        Raises:
            SchemaError: the file is not a replay database, is corrupt, or is newer.
            StoreError: the file cannot be opened.
        """
        if self._writer is not None:
            return
        await asyncio.to_thread(self._prepare)
        writer = Writer(self._connect_writer, self._deliver, busy_timeout=self.busy_timeout)
        await writer.start()
        self._writer = writer

    async def close(self) -> None:
        """Commit what is queued, close every connection and drop this process's worker locks."""
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.stop()
        with self._conns_lock:
            conns, self._read_conns = self._read_conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
        self._locks.release_all()

    def _connect(self, **kwargs: bool) -> sqlite3.Connection:
        try:
            return sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, **kwargs)
        except sqlite3.Error as exc:
            reason = str(exc)
            directory = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(directory):
                reason = f"its directory {directory} does not exist"  # SQLite says only "unable to open"
            raise StoreError(f"cannot open the SQLite store at {self.path!r}: {reason}") from None

    def _prepare(self) -> None:
        # A file that a write connection would change: refused before opening one.
        checked = check_read_only(self.path)
        conn = self._connect()
        try:
            prepare(conn, self.path, checked=checked)
        finally:
            conn.close()

    def _connect_writer(self) -> sqlite3.Connection:
        conn = self._connect(check_same_thread=False)  # statements on the loop, COMMIT on the thread
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.durability.upper()}")
            if self.durability == "full":
                presize_wal(conn, self.path)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open the SQLite store at {self.path!r}: {exc}") from None
        return conn

    def _deliver(self, notice: Notice) -> None:
        self.notify(notice.kind, notice.run_id)

    # -- plumbing ----------------------------------------------------------------------

    def _submit(self, job: Callable[[sqlite3.Connection, list[Notice]], T]) -> asyncio.Future[T]:
        # A future, not a coroutine: the callers await it at once, one frame fewer per write.
        if self._writer is None:
            raise StoreError(f"{self!r} is not open: call `await store.open()` first")
        return self._writer.enqueue(job)

    def _read(self, fn: Callable[..., T], *args: object, one_statement: bool = False) -> T:
        # A read of one statement is its own snapshot; more need a transaction around them.
        if self._writer is None:
            raise StoreError(f"{self!r} is not open: call `await store.open()` first")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(check_same_thread=False)
            conn.execute("PRAGMA query_only = 1")
            self._local.conn = conn
            with self._conns_lock:
                self._read_conns.append(conn)
        try:
            if one_statement:
                return fn(conn, *args)
            conn.execute("BEGIN")  # one snapshot for the whole read
            try:
                return fn(conn, *args)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"reading the SQLite store at {self.path!r} failed: {exc}") from None

    # -- clients -----------------------------------------------------------------------

    async def create_run(self, run: NewRun) -> tuple[RunInfo, bool]:
        """Create a run and its ``workflow_started`` entry in one transaction, unless it exists."""
        prepared = PreparedRun.of(run)
        if PlainCreate.fits(prepared):
            return await self._submit(PlainCreate(prepared))  # batched with the group's others
        return await self._submit(functools.partial(create_run, prepared=prepared))

    async def get_run(self, run_id: str) -> RunInfo | None:
        """The run with that id, if any."""
        return self._read(reads.get_run, run_id, one_statement=True)

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[RunInfo]:
        """Runs, newest first, filtered by workflow, status and creation time."""
        return self._read(reads.list_runs, workflow, status, since, until, limit)

    async def read_journal(self, run_id: str) -> list[Entry]:
        """A run's journal, in order."""
        return self._read(reads.read_journal, run_id, one_statement=True)

    async def request_cancel(self, run_id: str, at: float) -> RunInfo | None:
        """Flag a run for cancellation and wake it."""
        return await self._submit(functools.partial(writes.request_cancel, run_id=run_id, at=at))

    async def requeue(self, run_id: str, at: float) -> RunInfo | None:
        """Put a failed run back to pending."""
        return await self._submit(functools.partial(writes.requeue, run_id=run_id, at=at))

    async def send_event(self, event: EventRecord, starts: Sequence[NewRun] = ()) -> tuple[EventRecord, bool]:
        """Store an event (idempotent on its id), wake the runs waiting for it, create the runs it starts."""
        data = encode_value(event.data, f"the data of event {event.name!r}")
        prepared = tuple(PreparedRun.of(run) for run in starts)
        job = functools.partial(writes.send_event, event=event, data=data, starts=prepared)
        return await self._submit(job)

    async def events_after(self, position: int, names: Sequence[str], limit: int) -> list[EventRecord]:
        """Events with these names after ``position``, in order."""
        return self._read(reads.events_after, position, tuple(names), limit)

    async def last_event_position(self) -> int:
        """The latest event's position."""
        return self._read(reads.last_event_position)

    async def get_schedule(self, name: str) -> float | None:
        """The schedule's last tick."""
        return self._read(reads.get_schedule, name)

    async def advance_schedule(
        self, name: str, previous: float | None, tick: float, run: NewRun | None
    ) -> bool:
        """Move the schedule's cursor and create the tick's run, unless another worker did."""
        prepared = None if run is None else PreparedRun.of(run)
        job = functools.partial(
            writes.advance_schedule, name=name, previous=previous, tick=tick, run=prepared
        )
        return await self._submit(job)

    # -- workers -----------------------------------------------------------------------

    async def register_worker(self, worker_id: str) -> None:
        """Take the worker's OS lock: other processes now see it alive.

        Runs still owned by that id belonged to a process that died with it (a
        restart under a stable id, say): they are released, to be claimed again.
        """
        if await asyncio.to_thread(self._locks.acquire, worker_id):
            try:
                await self._submit(functools.partial(writes.unregister, worker_id=worker_id))
            except BaseException:
                self._locks.release(worker_id)  # not registered: a retry releases them again
                raise

    async def unregister_worker(self, worker_id: str) -> None:
        """Release the worker's runs, then its lock (even if the release failed: it is gone)."""
        try:
            await self._submit(functools.partial(writes.unregister, worker_id=worker_id))
        finally:
            self._locks.release(worker_id)

    async def claim(self, worker_id: str, workflows: Sequence[str], now: float, limit: int) -> list[Claim]:
        """Own up to ``limit`` claimable runs of these workflows."""
        job = functools.partial(
            writes.claim,
            worker_id=worker_id,
            workflows=tuple(workflows),
            now=now,
            limit=limit,
            alive=self._locks.alive,
        )
        return await self._submit(job)

    async def append(
        self, run_id: str, token: int, entries: Sequence[Entry], update: RunUpdate | None = None
    ) -> None:
        """Append entries and apply ``update`` in one transaction, fenced by ``token``.

        Raises:
            LeaseLost: ``token`` is not the run's current token; nothing was written.
        """
        entries = tuple(entries)
        blobs = [encode_entry(e) for e in entries]  # may raise: nothing queued
        if update is None:
            # The common case (a step's completion): batched with the group's others.
            await self._submit(PlainAppend(run_id, token, entries, blobs))
            return
        prepared = PreparedUpdate.of(update)
        if FinishAppend.fits(entries, update):
            # A run's end: batched with the group's other ends.
            await self._submit(FinishAppend(run_id, token, entries, blobs, prepared))
            return
        job = functools.partial(
            writes.append,
            run_id=run_id,
            token=token,
            entries=entries,
            blobs=blobs,
            update=prepared,
        )
        await self._submit(job)

    async def poll_waits(self, run_id: str) -> list[tuple[int, EventRecord]]:
        """For each open wait of the run, the first matching event, if one arrived."""
        return self._read(reads.poll_waits, run_id)

    async def runs_with_news(self, worker_id: str) -> list[str]:
        """Running runs of ``worker_id`` with an undelivered cancel, a finished child or a matching event."""
        return self._read(reads.runs_with_news, worker_id)

    async def next_wake_at(self, workflows: Sequence[str]) -> float | None:
        """The earliest ``wake_at`` among suspended runs of these workflows."""
        return self._read(reads.next_wake_at, tuple(workflows))
