"""The PostgreSQL store's reads: plain SELECTs, each on any connection of the pool.

No read needs a transaction of its own: ``poll_waits`` reads the waits and then
the events in two statements, but only the run's owner changes its waits, and
events are only ever added, in position order (``send_event`` serializes them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from replay.journal import Entry, decode_entries, decode_value
from replay.stores.base import EventRecord, RunInfo, contains

__all__ = (
    "RUN_COLUMNS",
    "Conn",
    "TERMINAL_SQL",
    "events_after",
    "first_match",
    "get_run",
    "get_schedule",
    "last_event_position",
    "list_runs",
    "next_wake_at",
    "poll_waits",
    "runs_with_news",
    "read_journal",
    "run_info",
)

#: A connection of the pool, or one of the store's own.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
#: The columns ``run_info`` reads, in its order.
RUN_COLUMNS = (
    "run_id, workflow, status, args, created_at, updated_at, result, error, parent_id, wake_at,"
    " cancel_requested"
)
#: The terminal statuses, as an SQL list.
TERMINAL_SQL = "('completed', 'failed', 'cancelled')"
# Events are matched against a wait in Python (containment is exact equality for
# lists, which jsonb's @> is not), a page at a time, so a wait behind thousands of
# events of its name that do not match never loads them all at once.
_PAGE = 200


def run_info(row: Sequence[Any] | asyncpg.Record) -> RunInfo:
    """A ``RunInfo`` from a row of ``RUN_COLUMNS``."""
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
        cancel_requested=row[10],
    )


async def get_run(conn: Conn, run_id: str) -> RunInfo | None:
    """The run with that id, if any."""
    row = await conn.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1", run_id)
    return None if row is None else run_info(row)


async def list_runs(
    conn: Conn,
    workflow: str | None,
    status: str | None,
    since: float | None,
    until: float | None,
    limit: int,
) -> list[RunInfo]:
    """Runs, newest first (the later created first among equal times), filtered."""
    rows = await conn.fetch(
        f"SELECT {RUN_COLUMNS} FROM runs "
        "WHERE ($1::text IS NULL OR workflow = $1) AND ($2::text IS NULL OR status = $2) "
        "AND ($3::float8 IS NULL OR created_at >= $3) AND ($4::float8 IS NULL OR created_at <= $4) "
        "ORDER BY created_at DESC, n DESC LIMIT $5",
        workflow,
        status,
        since,
        until,
        max(limit, 0),
    )
    return [run_info(row) for row in rows]


async def read_journal(conn: Conn, run_id: str) -> list[Entry]:
    """A run's journal, in order."""
    rows = await conn.fetch("SELECT entry FROM journal WHERE run_id = $1 ORDER BY seq", run_id)
    return decode_entries([row[0] for row in rows])


async def first_match(
    conn: Conn, name: str, match: Any, after: int, timeout_at: float | None
) -> EventRecord | None:
    """The first event named ``name`` after position ``after``, by ``timeout_at``, containing ``match``."""
    while True:
        rows = await conn.fetch(
            "SELECT position, id, data, at FROM events "
            "WHERE name = $1 AND position > $2 AND ($3::float8 IS NULL OR at <= $3) "
            "ORDER BY position LIMIT $4",
            name,
            after,
            timeout_at,
            _PAGE,
        )
        for position, event_id, data, at in rows:
            value = decode_value(data)
            if contains(value, match):
                return EventRecord(event_id, name, value, at, position)
        if len(rows) < _PAGE:
            return None
        after = rows[-1][0]


async def runs_with_news(conn: Conn, worker_id: str) -> list[str]:
    """Running runs of ``worker_id`` with an undelivered cancel, a finished child or a matching event."""
    rows = await conn.fetch(
        "SELECT run_id FROM runs WHERE owner = $1 AND status = 'running' "
        "AND cancel_requested AND NOT cancel_delivered "
        "UNION SELECT a.run_id FROM awaited_children a "
        "JOIN runs p ON p.run_id = a.run_id JOIN runs c ON c.run_id = a.child_id "
        f"WHERE p.owner = $1 AND p.status = 'running' AND c.status IN {TERMINAL_SQL}",
        worker_id,
    )
    found = {row[0] for row in rows}
    waits = await conn.fetch(
        "SELECT w.run_id, w.name, w.match, w.after, w.timeout_at FROM waits w "
        "JOIN runs p ON p.run_id = w.run_id WHERE p.owner = $1 AND p.status = 'running' "
        # Only waits with a newer event of their name need the full match.
        "AND EXISTS (SELECT 1 FROM events e WHERE e.name = w.name AND e.position > w.after)",
        worker_id,
    )
    for run_id, name, match, after, timeout_at in waits:
        if run_id in found:
            continue
        if await first_match(conn, name, decode_value(match), after, timeout_at) is not None:
            found.add(run_id)
    return sorted(found)


async def poll_waits(conn: Conn, run_id: str) -> list[tuple[int, EventRecord]]:
    """For each open wait of the run, the first matching event."""
    waits = await conn.fetch(
        "SELECT seq, name, match, after, timeout_at FROM waits WHERE run_id = $1 ORDER BY seq", run_id
    )
    found = []
    for seq, name, match, after, timeout_at in waits:
        event = await first_match(conn, name, decode_value(match), after, timeout_at)
        if event is not None:
            found.append((seq, event))
    return found


async def next_wake_at(conn: Conn, workflows: Sequence[str]) -> float | None:
    """The earliest ``wake_at`` among suspended or delayed pending runs of these workflows."""
    if not workflows:
        return None
    value: float | None = await conn.fetchval(
        "SELECT LEAST("
        " (SELECT min(wake_at) FROM runs WHERE status = 'suspended' AND workflow = ANY($1::text[])),"
        " (SELECT min(wake_at) FROM runs WHERE status = 'pending' AND wake_at IS NOT NULL"
        " AND workflow = ANY($1::text[])))",
        list(workflows),
    )
    return value


async def events_after(conn: Conn, position: int, names: Sequence[str], limit: int) -> list[EventRecord]:
    """Events with these names after ``position``, in order."""
    rows = await conn.fetch(
        "SELECT position, id, name, data, at FROM events WHERE position > $1 AND name = ANY($2::text[])"
        " ORDER BY position LIMIT $3",
        position,
        list(names),
        limit,
    )
    return [EventRecord(i, n, decode_value(d), a, p) for p, i, n, d, a in rows]


async def last_event_position(conn: Conn) -> int:
    """The latest event's position; 0 when there is none."""
    return int(await conn.fetchval("SELECT COALESCE(max(position), 0) FROM events"))


async def get_schedule(conn: Conn, name: str) -> float | None:
    """A schedule's cursor."""
    value: float | None = await conn.fetchval("SELECT tick FROM schedules WHERE name = $1", name)
    return value
