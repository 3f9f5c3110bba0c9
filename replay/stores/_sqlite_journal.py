"""Fencing an append, and keeping the SQLite store's side tables in step with the journal.

Used by every SQLite write job that appends entries: a run's creation, a plain
append (alone or batched), an append with a run update, a cancellation.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from replay import journal as j
from replay.errors import LeaseLost, ReplayInternalError
from replay.journal import Entry, encode_value

__all__ = ("SIDE_TABLES", "TRACKED_KINDS", "check_fence", "clear_side_tables", "row_blob", "track")

#: The side tables that hold rows of a run until it ends.
SIDE_TABLES = ("waits", "awaited_children", "cancel_on")
#: For each side table, whether it holds a row of the run ``:run_id``.
_HELD = "SELECT " + ", ".join(f"EXISTS (SELECT 1 FROM {t} WHERE run_id = :run_id)" for t in SIDE_TABLES)
#: The kinds of entry that ``track`` writes side tables for.
TRACKED_KINDS = frozenset(
    {
        j.WAIT_STARTED,
        j.EVENT_RECEIVED,
        j.WAIT_TIMED_OUT,
        j.CHILD_STARTED,
        j.CHILD_COMPLETED,
        j.CANCEL_REQUESTED,
        *j.TERMINAL_KINDS,
    }
)


def row_blob(blobs: Sequence[bytes]) -> bytearray:
    """The ``entry`` of the one journal row that holds the encoded entries ``blobs``.

    A row holds the consecutive entries one append wrote, their encodings joined
    by commas, and is keyed by the last one's seq; so ``MAX(seq)`` is the run's
    last seq, and the rows' entries in ``seq`` order, joined by commas inside
    ``[...]``, are the journal as one JSON array (``journal.decode_entries``).
    One row per append rather than per entry: a step's completion, with the
    step's scheduling buffered before it, is one B-tree insert instead of two.

    A ``bytearray``: the sqlite3 module binds it as it is, but first looks for an
    adapter for ``bytes``, and that failed lookup formats an AttributeError inside
    (~2,000 instructions, far more than the copy). The BLOB stored is the same.
    """
    return bytearray(b",".join(blobs))


def check_fence(run_id: str, token: int, row: Sequence[Any] | None, entries: Sequence[Entry]) -> None:
    """Raise unless ``entries`` may follow: ``row`` is the run's (token, owner, last seq).

    Raises:
        LeaseLost: ``token`` is not the run's current token, or no worker owns the run.
        ReplayInternalError: the entries do not follow the journal's last seq, one by one.
    """
    if row is None or row[0] != token or row[1] is None:
        raise LeaseLost(f"run {run_id!r} is no longer owned by this worker (token {token})")
    expected = (row[2] or 0) + 1
    for e in entries:
        if e.seq != expected:
            raise ReplayInternalError(f"append to {run_id!r}: seq {e.seq}, expected {expected}")
        expected += 1


def track(conn: sqlite3.Connection, run_id: str, entries: Sequence[Entry]) -> None:
    """Keep waits, awaited children and cancellation in step with new entries."""
    for e in entries:
        kind = e.kind
        if kind == j.WAIT_STARTED:
            # The wait sees events positioned after every event committed so far.
            conn.execute(
                "INSERT INTO waits (run_id, seq, name, match, after, timeout_at) "
                "VALUES (?, ?, ?, ?, (SELECT COALESCE(MAX(position), 0) FROM events), ?)",
                (run_id, e.seq, e.data["name"], encode_value(e.data["match"]), e.data.get("timeout_at")),
            )
        elif kind in (j.EVENT_RECEIVED, j.WAIT_TIMED_OUT):
            conn.execute("DELETE FROM waits WHERE run_id = ? AND seq = ?", (run_id, e.data["op"]))
        elif kind == j.CHILD_STARTED:
            conn.execute(
                "INSERT OR IGNORE INTO awaited_children (run_id, child_id) VALUES (?, ?)",
                (run_id, e.data["run_id"]),
            )
        elif kind == j.CHILD_COMPLETED:
            conn.execute(
                "DELETE FROM awaited_children WHERE run_id = ? AND child_id = ?", (run_id, e.data["run_id"])
            )
        elif kind == j.CANCEL_REQUESTED:
            conn.execute("UPDATE runs SET cancel_delivered = 1 WHERE run_id = ?", (run_id,))
        elif kind in j.TERMINAL_KINDS:
            # Only a journaled end closes waits: a run parked as failed keeps them
            # for when it is retried. Most runs have none of these rows: one
            # statement asks, and only the tables that hold some are cleared.
            clear_side_tables(conn, run_id, conn.execute(_HELD, {"run_id": run_id}).fetchone())


def clear_side_tables(conn: sqlite3.Connection, run_id: str, held: Sequence[Any]) -> None:
    """Delete the run's rows from each side table that ``held`` (in ``SIDE_TABLES`` order) says has some."""
    for table, has_rows in zip(SIDE_TABLES, held, strict=True):
        if has_rows:
            conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
