"""The SQLite store's write jobs, run by the writer inside its group's transaction.

Every job takes the connection and a list to append notices to; the writer
delivers those only once the transaction has committed. The semantics are
``MemoryStore``'s, clause for clause.
"""

from __future__ import annotations

import itertools
import operator
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from replay.journal import Entry, decode_carried, decode_value, encode_entry, encode_value
from replay.stores._flow import not_begun
from replay.stores._prepared import PreparedRun, PreparedUpdate
from replay.stores._sqlite_creates import create_run
from replay.stores._sqlite_journal import check_fence, row_blob, track
from replay.stores._sqlite_reads import TERMINAL_SQL, first_match, get_run
from replay.stores.base import (
    TERMINAL_STATUSES,
    Claim,
    EventRecord,
    Notice,
    RunInfo,
    RunUpdate,
    contains,
)

__all__ = (
    "advance_schedule",
    "append",
    "claim",
    "request_cancel",
    "requeue",
    "send_event",
    "unregister",
    "wake_run",
)


# -- write jobs (in the writer's transaction) ---------------------------------------------

#: What ``_update`` needs to know of a run before it updates it.
_STATE = "status, wake_at, parent_id, concurrency_key"
_STATE_OF = f"SELECT {_STATE} FROM runs WHERE run_id = ?"
#: An append's fence (see ``check_fence``), the run's ``updated_at``, then its ``_STATE``.
_FENCE = (
    "SELECT token, owner, (SELECT MAX(seq) FROM journal WHERE run_id = :run_id), updated_at, "
    f"{_STATE} FROM runs WHERE run_id = :run_id"
)


def append(
    conn: sqlite3.Connection,
    notices: list[Notice],
    run_id: str,
    token: int,
    entries: Sequence[Entry],
    blobs: Sequence[bytes],
    update: PreparedUpdate | None,
) -> None:
    """Append fenced entries, keep waits, children and cancellation in step, apply ``update``."""
    row = conn.execute(_FENCE, {"run_id": run_id}).fetchone()
    check_fence(run_id, token, row, entries)
    if entries:
        conn.execute(
            "INSERT INTO journal (run_id, seq, entry) VALUES (?, ?, ?)",
            (run_id, entries[-1].seq, row_blob(blobs)),
        )
    track(conn, run_id, entries)
    if update is not None:
        _update(conn, notices, run_id, update, entries[-1].at if entries else row[3], row[4:])


def _state(conn: sqlite3.Connection, run_id: str) -> Sequence[Any]:
    """The run's ``_STATE`` columns."""
    row: Sequence[Any] = conn.execute(_STATE_OF, (run_id,)).fetchone()
    return row


def _update(
    conn: sqlite3.Connection,
    notices: list[Notice],
    run_id: str,
    prepared: PreparedUpdate,
    at: float,
    before: Sequence[Any],
) -> None:
    """Apply ``prepared`` to the run, whose ``_STATE`` columns were ``before``; queue its notices."""
    update = prepared.update
    for child in prepared.children:
        create_run(conn, notices, child)
    status, wake_at, parent_id, concurrency_key = before  # the last two never change
    sets: list[str] = ["updated_at = ?"]
    params: list[Any] = [at]
    if update.status is not None:
        wake = update.wake_at
        if update.status == "suspended" and _has_news(conn, run_id):
            # News that reached the owner while it was suspending must not be lost.
            wake = at if wake is None else min(at, wake)
        sets += ["status = ?", "wake_at = ?"]
        params += [update.status, wake]
        status, wake_at = update.status, wake
    if prepared.result is not None:
        sets.append("result = ?")
        params.append(prepared.result)
    if prepared.error is not None:
        sets.append("error = ?")
        params.append(prepared.error)
    if update.release:
        sets.append("owner = NULL")
    conn.execute(f"UPDATE runs SET {', '.join(sets)} WHERE run_id = ?", (*params, run_id))
    if concurrency_key is not None and status != "running":
        notices.append(Notice("ready", run_id))  # a slot is free: a waiting run may go
    if status in TERMINAL_STATUSES:
        notices.append(Notice("finished", run_id))
        if parent_id is not None:
            wake_run(conn, notices, parent_id, at)
    elif (status == "suspended" and wake_at is not None) or status == "pending":
        notices.append(Notice("ready", run_id))


def _has_news(conn: sqlite3.Connection, run_id: str) -> bool:
    requested, delivered = conn.execute(
        "SELECT cancel_requested, cancel_delivered FROM runs WHERE run_id = ?", (run_id,)
    ).fetchone()
    if requested and not delivered:
        return True
    finished_child = conn.execute(
        "SELECT 1 FROM awaited_children a JOIN runs c ON c.run_id = a.child_id "
        f"WHERE a.run_id = ? AND c.status IN {TERMINAL_SQL} LIMIT 1",
        (run_id,),
    ).fetchone()
    if finished_child is not None:
        return True
    waits = conn.execute(
        "SELECT name, match, after, timeout_at FROM waits WHERE run_id = ?", (run_id,)
    ).fetchall()
    return any(first_match(conn, name, decode_value(m), after, t) is not None for name, m, after, t in waits)


def wake_run(conn: sqlite3.Connection, notices: list[Notice], run_id: str, at: float) -> None:
    """Tell ``run_id`` it has news: due now if suspended, a notice if running."""
    row = conn.execute("SELECT status, wake_at FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        return
    status, wake_at = row
    if status == "suspended":
        wake = at if wake_at is None else min(at, wake_at)
        conn.execute("UPDATE runs SET wake_at = ? WHERE run_id = ?", (wake, run_id))
        notices.append(Notice("ready", run_id))
    elif status == "running":
        notices.append(Notice("news", run_id))


def request_cancel(conn: sqlite3.Connection, notices: list[Notice], run_id: str, at: float) -> RunInfo | None:
    """Flag a run for cancellation and wake it."""
    info = get_run(conn, run_id)
    if info is None or info.status in TERMINAL_STATUSES or info.cancel_requested:
        return info
    never_begun = conn.execute(
        "SELECT token = 0 AND (SELECT MAX(seq) FROM journal WHERE run_id = ?) = 1 FROM runs WHERE run_id = ?",
        (run_id, run_id),
    ).fetchone()[0]
    if info.status == "pending" and never_begun:
        # It never began: no workflow code to tell, so it ends here.
        entry = not_begun(run_id, at)
        conn.execute(
            "INSERT INTO journal (run_id, seq, entry) VALUES (?, ?, ?)", (run_id, 2, encode_entry(entry))
        )
        track(conn, run_id, [entry])
        conn.execute("UPDATE runs SET cancel_requested = 1, wake_at = NULL WHERE run_id = ?", (run_id,))
        cancelled = PreparedUpdate.of(RunUpdate(status="cancelled"))
        _update(conn, notices, run_id, cancelled, at, _state(conn, run_id))
        return get_run(conn, run_id)
    conn.execute("UPDATE runs SET cancel_requested = 1 WHERE run_id = ?", (run_id,))
    wake_run(conn, notices, run_id, at)
    return get_run(conn, run_id)


def requeue(conn: sqlite3.Connection, notices: list[Notice], run_id: str, at: float) -> RunInfo | None:
    """Put a failed run back to pending, its error cleared."""
    cur = conn.execute(
        "UPDATE runs SET status = 'pending', error = NULL, wake_at = NULL, owner = NULL, updated_at = ? "
        "WHERE run_id = ? AND status = 'failed'",
        (at, run_id),
    )
    if cur.rowcount:
        notices.append(Notice("ready", run_id))
    return get_run(conn, run_id)


def send_event(
    conn: sqlite3.Connection,
    notices: list[Notice],
    event: EventRecord,
    data: bytes,
    starts: Sequence[PreparedRun] = (),
) -> tuple[EventRecord, bool]:
    """Store an event unless its id exists, wake the runs it matches, cancel and start the ones it should."""
    row = conn.execute("SELECT position, name, data, at FROM events WHERE id = ?", (event.id,)).fetchone()
    if row is not None:
        return EventRecord(event.id, row[1], decode_value(row[2]), row[3], row[0]), False
    cur = conn.execute(
        "INSERT INTO events (id, name, data, at) VALUES (?, ?, ?, ?)", (event.id, event.name, data, event.at)
    )
    stored = attrs.evolve(event, position=int(cur.lastrowid or 0))
    for table, then in (("waits", wake_run), ("cancel_on", _cancel)):
        order = "run_id, seq" if table == "waits" else "run_id"
        timeout = "timeout_at" if table == "waits" else "NULL"
        rows = conn.execute(
            f"SELECT run_id, match, after, {timeout} FROM {table} WHERE name = ? ORDER BY {order}",
            (event.name,),
        ).fetchall()
        hit: dict[str, None] = {}
        for run_id, match, after, timeout_at in rows:
            if run_id in hit or after >= stored.position:
                continue
            if (timeout_at is None or event.at <= timeout_at) and contains(event.data, decode_value(match)):
                hit[run_id] = None
        for run_id in hit:
            then(conn, notices, run_id, event.at)
    for start in starts:
        create_run(conn, notices, start)
    notices.append(Notice("event", stored.id))
    return stored, True


def _cancel(conn: sqlite3.Connection, notices: list[Notice], run_id: str, at: float) -> None:
    request_cancel(conn, notices, run_id, at)


def advance_schedule(
    conn: sqlite3.Connection,
    notices: list[Notice],
    name: str,
    previous: float | None,
    tick: float,
    run: PreparedRun | None,
) -> bool:
    """Move a schedule's cursor from ``previous`` to ``tick`` and create the tick's run."""
    row = conn.execute("SELECT tick FROM schedules WHERE name = ?", (name,)).fetchone()
    if (None if row is None else row[0]) != previous:
        return False
    conn.execute("INSERT OR REPLACE INTO schedules (name, tick) VALUES (?, ?)", (name, tick))
    if run is not None:
        create_run(conn, notices, run)
    return True


def unregister(conn: sqlite3.Connection, notices: list[Notice], worker_id: str) -> None:
    """A worker stops: release what it owns; its running runs become claimable."""
    rows = conn.execute("SELECT run_id, status FROM runs WHERE owner = ?", (worker_id,)).fetchall()
    conn.execute("UPDATE runs SET owner = NULL WHERE owner = ?", (worker_id,))
    notices.extend(Notice("ready", run_id) for run_id, status in rows if status == "running")


def claim(
    conn: sqlite3.Connection,
    notices: list[Notice],
    worker_id: str,
    workflows: Sequence[str],
    now: float,
    limit: int,
    alive: Callable[[str], bool],
) -> list[Claim]:
    """Own up to ``limit`` claimable runs: orphaned running ones, then due ones, then new ones.

    Suspended and pending runs under a concurrency key whose slots are all
    taken are passed over; pending runs go by priority, then creation order.
    """
    names = tuple(dict.fromkeys(workflows))
    if limit <= 0 or not names:
        return []
    in_names = f"workflow IN ({','.join('?' * len(names))})"
    owners = [
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT owner FROM runs WHERE owner IS NOT NULL AND status = 'running'"
        )
    ]
    dead = tuple(owner for owner in owners if not alive(owner))
    orphaned = "owner IS NULL"
    if dead:
        orphaned = f"(owner IS NULL OR owner IN ({','.join('?' * len(dead))}))"
    queries: list[tuple[str, tuple[Any, ...]]] = [
        (f"status = 'running' AND {orphaned} AND {in_names} ORDER BY priority DESC, rowid", (*dead, *names)),
        (f"status = 'suspended' AND wake_at <= ? AND {in_names} ORDER BY wake_at, rowid", (now, *names)),
        (
            f"status = 'pending' AND (wake_at IS NULL OR wake_at <= ?) AND {in_names} "
            "ORDER BY priority DESC, rowid",
            (now, *names),
        ),
    ]
    running = dict(
        conn.execute(
            "SELECT concurrency_key, COUNT(*) FROM runs "
            "WHERE status = 'running' AND concurrency_key IS NOT NULL GROUP BY concurrency_key"
        ).fetchall()
    )
    picked: list[tuple[str, str, int, int]] = []
    for where, params in queries:
        if len(picked) >= limit:
            break
        sql = (
            "SELECT run_id, workflow, token, cancel_requested, status, concurrency_key, concurrency_limit "
            f"FROM runs WHERE {where}"
        )
        for run_id, workflow, token, cancel_requested, status, key, key_limit in conn.execute(sql, params):
            if key is not None and status != "running":
                if running.get(key, 0) >= key_limit:
                    continue  # waits for a slot
                running[key] = running.get(key, 0) + 1
            picked.append((run_id, workflow, token, cancel_requested))
            if len(picked) >= limit:
                break
    if not picked:
        return []
    conn.executemany(
        "UPDATE runs SET token = ?, owner = ?, status = 'running', wake_at = NULL, updated_at = ? "
        "WHERE run_id = ?",
        [(token + 1, worker_id, now, run_id) for run_id, _, token, _ in picked],
    )
    # The claimed runs' journals, read here rather than by each driver: one statement, not one a run.
    rows = conn.execute(
        "SELECT run_id, entry FROM journal WHERE run_id IN (SELECT value FROM json_each(?)) "
        "ORDER BY run_id, seq",
        (encode_value([run_id for run_id, *_ in picked]),),
    )
    journals = {
        run_id: decode_carried([entry for _, entry in group])
        for run_id, group in itertools.groupby(rows, key=operator.itemgetter(0))
    }
    return [
        Claim(run_id, workflow, token + 1, bool(cancel_requested), journals.get(run_id, []))
        for run_id, workflow, token, cancel_requested in picked
    ]
