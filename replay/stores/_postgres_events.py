"""The PostgreSQL store's writes that wake runs: events, cancellations, requeues, a worker's exit.

Each is a function of one open transaction (a ``Tx``); see ``_postgres_writes``
for the locks that keep their wake-ups from being lost.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from replay.journal import decode_value, encode_entry
from replay.stores._flow import not_begun
from replay.stores._postgres_reads import RUN_COLUMNS, TERMINAL_SQL, get_run, run_info
from replay.stores._postgres_writes import Tx, create_run, one_row, track, update_run, wake
from replay.stores._prepared import PreparedRun, PreparedUpdate
from replay.stores.base import EventRecord, RunInfo, RunUpdate, contains

__all__ = ("advance_schedule", "release_runs", "request_cancel", "requeue", "send_event", "unregister")


async def request_cancel(tx: Tx, run_id: str, at: float, *, publish: bool = True) -> RunInfo | None:
    """Flag a run for cancellation and wake it; a run no worker began ends at once."""
    row = await tx.conn.fetchrow(
        "UPDATE runs SET cancel_requested = true WHERE run_id = $1"
        f" AND status NOT IN {TERMINAL_SQL} AND NOT cancel_requested"
        " RETURNING status = 'pending' AND token = 0 AND seq = 1, parent_id",
        run_id,
    )
    if row is not None:
        never_begun, parent_id = row
        if never_begun:
            # No workflow code to tell: the store ends it.
            entry = not_begun(run_id, at)
            await tx.conn.execute(
                "INSERT INTO journal (run_id, seq, entry) VALUES ($1, 2, $2)", run_id, encode_entry(entry)
            )
            await tx.conn.execute("UPDATE runs SET seq = 2, wake_at = NULL WHERE run_id = $1", run_id)
            await track(tx, run_id, [entry])
            await update_run(tx, run_id, PreparedUpdate.of(RunUpdate(status="cancelled")), at, parent_id)
        else:
            await wake(tx, [run_id], at)
        if publish:
            await tx.publish()
    return await get_run(tx.conn, run_id)


async def requeue(tx: Tx, run_id: str, at: float) -> RunInfo | None:
    """Put a failed run back to pending, its error cleared."""
    row = await tx.conn.fetchrow(
        "UPDATE runs SET status = 'pending', error = NULL, wake_at = NULL, owner = NULL, ended_at = NULL,"
        f" updated_at = $2 WHERE run_id = $1 AND status = 'failed' RETURNING {RUN_COLUMNS}",
        run_id,
        at,
    )
    if row is None:
        return await get_run(tx.conn, run_id)
    tx.notice("ready", run_id)
    await tx.publish()
    return run_info(row)


async def send_event(
    tx: Tx, event: EventRecord, data: bytes, starts: Sequence[PreparedRun] = ()
) -> tuple[EventRecord, bool]:
    """Store an event unless its id exists; wake, cancel and start the runs it should."""
    conn = tx.conn
    await conn.execute("SELECT pg_advisory_xact_lock($1)", tx.events_lock)
    # Under the lock, positions are given in commit order and without gaps.
    position = await conn.fetchval(
        "INSERT INTO events (position, id, name, data, at)"
        " SELECT COALESCE(max(position), 0) + 1, $1, $2, $3, $4 FROM events"
        " ON CONFLICT (id) DO NOTHING RETURNING position",
        event.id,
        event.name,
        data,
        event.at,
    )
    if position is None:
        row = one_row(
            await conn.fetchrow("SELECT position, name, data, at FROM events WHERE id = $1", event.id)
        )
        return EventRecord(event.id, row[1], decode_value(row[2]), row[3], row[0]), False
    stored = attrs.evolve(event, position=position)
    waits = await conn.fetch(
        "SELECT run_id, match, timeout_at FROM waits WHERE name = $1 AND after < $2", event.name, position
    )
    woken = {
        run_id
        for run_id, match, timeout_at in waits
        if (timeout_at is None or event.at <= timeout_at) and contains(event.data, decode_value(match))
    }
    if woken:
        await wake(tx, list(woken), event.at)
    cancels = await conn.fetch(
        "SELECT DISTINCT run_id, match FROM cancel_on WHERE name = $1 AND after < $2 ORDER BY run_id",
        event.name,
        position,
    )
    for run_id in dict.fromkeys(r for r, match in cancels if contains(event.data, decode_value(match))):
        await request_cancel(tx, run_id, event.at, publish=False)
    for start in starts:
        await create_run(tx, start)
    tx.notice("event", event.id)
    await tx.publish()
    return stored, True


async def advance_schedule(
    tx: Tx, name: str, previous: float | None, tick: float, run: PreparedRun | None
) -> bool:
    """Move a schedule's cursor from ``previous`` to ``tick`` and create ``run``; False if it moved."""
    if previous is None:
        moved = await tx.conn.fetchval(
            "INSERT INTO schedules (name, tick) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING 1",
            name,
            tick,
        )
    else:
        moved = await tx.conn.fetchval(
            "UPDATE schedules SET tick = $3 WHERE name = $1 AND tick = $2 RETURNING 1", name, previous, tick
        )
    if moved is None:
        return False
    if run is not None:
        await create_run(tx, run)
    await tx.publish()
    return True


async def unregister(tx: Tx, worker_id: str) -> None:
    """A worker stops: release what it owns; its running runs become claimable."""
    await release_runs(tx, worker_id)
    await tx.conn.execute("DELETE FROM workers WHERE worker_id = $1", worker_id)


async def release_runs(tx: Tx, worker_id: str) -> None:
    """Release the runs ``worker_id`` owns; its running runs become claimable."""
    rows = await tx.conn.fetch(
        "UPDATE runs SET owner = NULL WHERE owner = $1 RETURNING run_id, status", worker_id
    )
    for run_id, status in rows:
        if status == "running":
            tx.notice("ready", run_id)
    await tx.publish()
