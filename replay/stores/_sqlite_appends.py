"""Plain appends (entries, no run update), which the writer runs many to a statement.

Most writes under load are a step's completion: one entry appended under the
run's fence, nothing else. Run one by one, each costs two statements and their
Python round trips on the event loop's thread, about as much as the rest of the
step. ``PlainAppend.run_many`` does a whole group's worth in two statements: one
read of every run's fence and last seq, one insert of a journal row per append
(see ``_sqlite_journal.row_blob``). Each append
still fails alone: the fences are checked in Python before anything is written,
and the failing append is named to the writer, which then runs the group again,
each job alone (see ``_sqlite_writer``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import orjson

from replay.errors import LeaseLost, ReplayInternalError
from replay.journal import Entry
from replay.stores._sqlite_journal import check_fence, row_blob, track
from replay.stores._sqlite_writer import JobFailed
from replay.stores._sqlite_writes import append
from replay.stores.base import Notice

__all__ = ("PlainAppend",)

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
    def run_many(conn: sqlite3.Connection, jobs: Sequence[PlainAppend]) -> None:
        """Run ``jobs`` (of distinct runs) as if one after the other, in two statements.

        Raises:
            JobFailed: naming the first job whose fence or sequence is wrong; nothing was written.
        """
        fences = {
            row[0]: row
            for row in conn.execute(_FENCES, (orjson.dumps([job.run_id for job in jobs]),)).fetchall()
        }
        rows: list[tuple[str, int, bytearray]] = []  # one per append (see ``row_blob``)
        for index, job in enumerate(jobs):
            fence = fences.get(job.run_id)
            try:
                check_fence(job.run_id, job.token, None if fence is None else fence[1:], job.entries)
            except (LeaseLost, ReplayInternalError) as exc:
                raise JobFailed(index, exc) from exc
            if job.entries:
                rows.append((job.run_id, job.entries[-1].seq, row_blob(job.blobs)))
        conn.executemany("INSERT INTO journal (run_id, seq, entry) VALUES (?, ?, ?)", rows)
        for job in jobs:
            track(conn, job.run_id, job.entries)
