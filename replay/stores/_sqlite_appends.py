"""Appends that the writer runs many to a statement: plain ones and those that end a run.

Most writes under load are a step's completion: one entry appended under the
run's fence, nothing else. Run one by one, each costs two statements and their
Python round trips on the event loop's thread, about as much as the rest of the
step. ``PlainAppend.run_many`` does a whole group's worth in two statements: one
read of every run's fence and last seq, one insert of a journal row per append
(see ``_sqlite_journal.row_blob``). Each append
still fails alone: the fences are checked in Python before anything is written,
and the failing append is named to the writer, which then runs the group again,
each job alone (see ``_sqlite_writer``).

Every run also ends with an append: its terminal entry, with the update that
sets its status and result and releases it. ``FinishAppend.run_many`` reads the
fences, the state and the side tables held of the whole group in one statement
and inserts the rows in another; each run's update and notices follow, in order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson

from replay.errors import LeaseLost, ReplayInternalError
from replay.journal import TERMINAL_KINDS, Entry
from replay.stores._prepared import PreparedUpdate
from replay.stores._sqlite_journal import (
    SIDE_TABLES,
    TRACKED_KINDS,
    check_fence,
    clear_side_tables,
    row_blob,
    track,
)
from replay.stores._sqlite_writer import JobFailed
from replay.stores._sqlite_writes import append, wake_run
from replay.stores.base import TERMINAL_STATUSES, Notice, RunUpdate

__all__ = ("FinishAppend", "PlainAppend")

_FENCES = (
    "SELECT run_id, token, owner, (SELECT MAX(seq) FROM journal j WHERE j.run_id = r.run_id) "
    "FROM runs r WHERE run_id IN (SELECT value FROM json_each(?))"
)


class PlainAppend:
    """A write job: append ``entries`` (encoded as ``blobs``) to a run, fenced by ``token``."""

    __slots__ = ("blobs", "entries", "run_id", "token")

    @property
    def key(self) -> str:
        """Jobs batched in one ``run_many`` are of distinct runs."""
        return self.run_id

    def __init__(self, run_id: str, token: int, entries: Sequence[Entry], blobs: Sequence[bytes]) -> None:
        self.run_id = run_id
        self.token = token
        self.entries = entries
        self.blobs = blobs

    def __call__(self, conn: sqlite3.Connection, notices: list[Notice]) -> None:
        """Run alone, as any job."""
        append(conn, notices, self.run_id, self.token, self.entries, self.blobs, None)

    @staticmethod
    def run_many(
        conn: sqlite3.Connection, jobs: Sequence[PlainAppend], notices: Sequence[list[Notice]]
    ) -> None:
        """Run ``jobs`` (of distinct runs) as if one after the other, in two statements.

        Raises:
            JobFailed: naming the first job whose fence or sequence is wrong; nothing was written.
        """
        _checked_fences(conn, _FENCES, jobs)
        rows = [(job.run_id, job.entries[-1].seq, row_blob(job.blobs)) for job in jobs if job.entries]
        conn.executemany("INSERT INTO journal (run_id, seq, entry) VALUES (?, ?, ?)", rows)
        for job in jobs:
            track(conn, job.run_id, job.entries)


#: A finishing append's fence, the run's state that decides its notices, and which side tables hold its rows.
_FINISH_FENCES = (
    "SELECT run_id, token, owner, (SELECT MAX(seq) FROM journal j WHERE j.run_id = r.run_id), "
    "parent_id, concurrency_key, "
    + ", ".join(f"EXISTS (SELECT 1 FROM {t} WHERE {t}.run_id = r.run_id)" for t in SIDE_TABLES)
    + " FROM runs r WHERE run_id IN (SELECT value FROM json_each(?))"
)
#: What ``_sqlite_writes.append`` sets for such an update: a value left out (NULL here) is kept.
_FINISH = (
    "UPDATE runs SET updated_at = ?, status = ?, wake_at = NULL, result = COALESCE(?, result), "
    "error = COALESCE(?, error), owner = NULL WHERE run_id = ?"
)


class FinishAppend:
    """A write job: append entries ending with a terminal one, and end and release the run.

    Only for what ``fits``: the other appends with an update go through
    ``_sqlite_writes.append``, which this does the same as, statement for statement.
    """

    __slots__ = ("blobs", "entries", "prepared", "run_id", "token")

    @property
    def key(self) -> str:
        """Jobs batched in one ``run_many`` are of distinct runs."""
        return self.run_id

    def __init__(
        self,
        run_id: str,
        token: int,
        entries: Sequence[Entry],
        blobs: Sequence[bytes],
        prepared: PreparedUpdate,
    ) -> None:
        self.run_id = run_id
        self.token = token
        self.entries = entries
        self.blobs = blobs
        self.prepared = prepared

    @staticmethod
    def fits(entries: Sequence[Entry], update: RunUpdate) -> bool:
        """Whether this job can write ``entries`` and ``update``: how a worker ends a run."""
        return (
            update.status in TERMINAL_STATUSES
            and update.release
            and update.wake_at is None
            and not update.children
            and bool(entries)
            and entries[-1].kind in TERMINAL_KINDS
            and not any(e.kind in TRACKED_KINDS for e in entries[:-1])
        )

    def __call__(self, conn: sqlite3.Connection, notices: list[Notice]) -> None:
        """Run alone, as any job."""
        append(conn, notices, self.run_id, self.token, self.entries, self.blobs, self.prepared)

    @staticmethod
    def run_many(
        conn: sqlite3.Connection, jobs: Sequence[FinishAppend], notices: Sequence[list[Notice]]
    ) -> None:
        """Run ``jobs`` (of distinct runs) as if one after the other.

        Raises:
            JobFailed: naming the first job whose fence or sequence is wrong; nothing was written.
        """
        fences = _checked_fences(conn, _FINISH_FENCES, jobs)
        conn.executemany(
            "INSERT INTO journal (run_id, seq, entry) VALUES (?, ?, ?)",
            [(job.run_id, job.entries[-1].seq, row_blob(job.blobs)) for job in jobs],
        )
        for job, queued in zip(jobs, notices, strict=True):
            _, _, _, _, parent_id, concurrency_key, *held = fences[job.run_id]
            clear_side_tables(conn, job.run_id, held)
            at = job.entries[-1].at
            prepared = job.prepared
            status = prepared.update.status
            conn.execute(_FINISH, (at, status, prepared.result, prepared.error, job.run_id))
            if concurrency_key is not None:
                queued.append(Notice("ready", job.run_id))  # a slot is free: a waiting run may go
            queued.append(Notice("finished", job.run_id))
            if parent_id is not None:
                wake_run(conn, queued, parent_id, at)


def _checked_fences(
    conn: sqlite3.Connection, sql: str, jobs: Sequence[PlainAppend | FinishAppend]
) -> dict[str, Any]:
    """The rows ``sql`` reads for the jobs' runs (``run_id, token, owner, last seq, ...``), by run id.

    Raises:
        JobFailed: naming the first job whose fence or sequence is wrong.
    """
    fences = {
        row[0]: row for row in conn.execute(sql, (orjson.dumps([job.run_id for job in jobs]),)).fetchall()
    }
    for index, job in enumerate(jobs):
        fence = fences.get(job.run_id)
        try:
            check_fence(job.run_id, job.token, None if fence is None else fence[1:4], job.entries)
        except (LeaseLost, ReplayInternalError) as exc:
            raise JobFailed(index, exc) from exc
    return fences
