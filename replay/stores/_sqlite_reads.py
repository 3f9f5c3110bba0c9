"""The SQLite store's reads: plain SELECTs that work on any connection, in one snapshot."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from replay.journal import Entry, decode_entries, decode_value
from replay.stores.base import EventRecord, RunInfo, contains

__all__ = (
    "TERMINAL_SQL",
    "first_match",
    "get_run",
    "list_runs",
    "next_wake_at",
    "poll_waits",
    "read_journal",
    "runs_with_news",
)

_RUN = (
    "run_id, workflow, status, args, created_at, updated_at, result, error, parent_id, wake_at,"
    " cancel_requested"
)
#: The terminal statuses, as an SQL list.
TERMINAL_SQL = "('completed', 'failed', 'cancelled')"


def _run_info(row: Sequence[Any]) -> RunInfo:
    """A ``RunInfo`` from a row of ``_RUN`` columns."""
    return RunInfo(
        run_id=row[0],
        workflow=row[1],
        status=row[2],
        args=decode_value(row[3]),
        created_at=row[4],
        updated_at=row[5],
        result=None if row[6] is None else decode_value(row[6]),
        error=None if row[7] is None else decode_value(row[7]),
        parent_id=row[8],
        wake_at=row[9],
        cancel_requested=bool(row[10]),
    )


def get_run(conn: sqlite3.Connection, run_id: str) -> RunInfo | None:
    """The run with that id, if any."""
    row = conn.execute(f"SELECT {_RUN} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return None if row is None else _run_info(row)


def list_runs(
    conn: sqlite3.Connection,
    workflow: str | None,
    status: str | None,
    since: float | None,
    until: float | None,
    limit: int,
) -> list[RunInfo]:
    """Runs, newest first (the later created first among equal times), filtered."""
    where, params = [], []
    for clause, value in (
        ("workflow = ?", workflow),
        ("status = ?", status),
        ("created_at >= ?", since),
        ("created_at <= ?", until),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    sql = f"SELECT {_RUN} FROM runs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
    return [_run_info(row) for row in conn.execute(sql, (*params, max(limit, 0)))]


def read_journal(conn: sqlite3.Connection, run_id: str) -> list[Entry]:
    """A run's journal, in order."""
    rows = conn.execute("SELECT entry FROM journal WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()
    return decode_entries([row[0] for row in rows])


def first_match(
    conn: sqlite3.Connection, name: str, match: Any, after: int, timeout_at: float | None
) -> EventRecord | None:
    """The first event named ``name`` after position ``after``, by ``timeout_at``, containing ``match``."""
    sql = "SELECT position, id, data, at FROM events WHERE name = ? AND position > ?"
    params: list[Any] = [name, after]
    if timeout_at is not None:
        sql += " AND at <= ?"
        params.append(timeout_at)
    for position, event_id, data, at in conn.execute(sql + " ORDER BY position", params):
        value = decode_value(data)
        if contains(value, match):
            return EventRecord(event_id, name, value, at, position)
    return None


def runs_with_news(conn: sqlite3.Connection, worker_id: str) -> list[str]:
    """Running runs of ``worker_id`` with an undelivered cancel, a finished child or a matching event."""
    found = {
        row[0]
        for row in conn.execute(
            "SELECT run_id FROM runs WHERE owner = :w AND status = 'running' "
            "AND cancel_requested AND NOT cancel_delivered "
            "UNION SELECT a.run_id FROM awaited_children a "
            "JOIN runs p ON p.run_id = a.run_id JOIN runs c ON c.run_id = a.child_id "
            f"WHERE p.owner = :w AND p.status = 'running' AND c.status IN {TERMINAL_SQL}",
            {"w": worker_id},
        )
    }
    waits = conn.execute(
        "SELECT w.run_id, w.name, w.match, w.after, w.timeout_at FROM waits w "
        "JOIN runs p ON p.run_id = w.run_id WHERE p.owner = ? AND p.status = 'running' "
        # Only waits with a newer event of their name need the full match.
        "AND EXISTS (SELECT 1 FROM events e WHERE e.name = w.name AND e.position > w.after)",
        (worker_id,),
    ).fetchall()
    for run_id, name, match, after, timeout_at in waits:
        if (
            run_id not in found
            and first_match(conn, name, decode_value(match), after, timeout_at) is not None
        ):
            found.add(run_id)
    return sorted(found)


def poll_waits(conn: sqlite3.Connection, run_id: str) -> list[tuple[int, EventRecord]]:
    """For each open wait of the run, the first matching event (read in one snapshot)."""
    waits = conn.execute(
        "SELECT seq, name, match, after, timeout_at FROM waits WHERE run_id = ? ORDER BY seq", (run_id,)
    ).fetchall()
    found = []
    for seq, name, match, after, timeout_at in waits:
        event = first_match(conn, name, decode_value(match), after, timeout_at)
        if event is not None:
            found.append((seq, event))
    return found


def next_wake_at(conn: sqlite3.Connection, workflows: Sequence[str]) -> float | None:
    """The earliest ``wake_at`` among suspended or delayed pending runs of these workflows."""
    if not workflows:
        return None
    marks = ",".join("?" * len(workflows))
    times = []
    for status in ("suspended", "pending"):
        row = conn.execute(
            f"SELECT wake_at FROM runs WHERE status = '{status}' AND wake_at IS NOT NULL "
            f"AND workflow IN ({marks}) ORDER BY wake_at LIMIT 1",
            tuple(workflows),
        ).fetchone()
        if row is not None:
            times.append(float(row[0]))
    return min(times, default=None)


def get_schedule(conn: sqlite3.Connection, name: str) -> float | None:
    """A schedule's last tick."""
    row = conn.execute("SELECT tick FROM schedules WHERE name = ?", (name,)).fetchone()
    return None if row is None else float(row[0])


def events_after(
    conn: sqlite3.Connection, position: int, names: Sequence[str], limit: int
) -> list[EventRecord]:
    """Events with these names after ``position``, in order."""
    if not names or limit <= 0:
        return []
    marks = ",".join("?" * len(names))
    rows = conn.execute(
        f"SELECT position, id, name, data, at FROM events WHERE position > ? AND name IN ({marks}) "
        "ORDER BY position LIMIT ?",
        (position, *names, limit),
    ).fetchall()
    return [EventRecord(i, n, decode_value(d), a, p) for p, i, n, d, a in rows]


def last_event_position(conn: sqlite3.Connection) -> int:
    """The latest event's position; 0 when there is none."""
    return int(conn.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()[0])
