"""The SQLite store's write jobs, run by the writer inside its group's transaction.

Every job takes the connection and a list to append notices to; the writer
delivers those only once the transaction has committed. The semantics are
``MemoryStore``'s, clause for clause.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from replay import journal as j
from replay.errors import LeaseLost, ReplayInternalError
from replay.journal import Entry, decode_value, encode_entry, encode_value
from replay.stores._sqlite_reads import TERMINAL_SQL, first_match, get_run
from replay.stores.base import (
    TERMINAL_STATUSES,
    Claim,
    EventRecord,
    NewRun,
    Notice,
    RunInfo,
    RunUpdate,
    contains,
)

__all__ = (
    "PreparedRun",
    "PreparedUpdate",
    "append",
    "claim",
    "create_run",
    "request_cancel",
    "send_event",
    "unregister",
)


@attrs.frozen
class PreparedRun:
    """A run to create, encoded by the caller (so encoding errors happen before queueing)."""

    run: NewRun
    args: bytes
    first: bytes
    rest: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, run: NewRun) -> PreparedRun:
        """Check and encode ``run``; raises ``SerializationError`` or ``ReplayInternalError``."""
        run.entries()
        return cls(
            run,
            encode_value(run.args, f"the arguments of run {run.run_id!r}"),
            encode_entry(run.first),
            tuple(encode_entry(e) for e in run.journal),
        )


@attrs.frozen
class PreparedUpdate:
    """A ``RunUpdate`` with its values encoded by the caller."""

    update: RunUpdate
    result: bytes | None
    error: bytes | None
    children: tuple[PreparedRun, ...]

    @classmethod
    def of(cls, update: RunUpdate) -> PreparedUpdate:
        """Encode ``update``; raises ``SerializationError``."""
        result = None if update.result is None else encode_value(update.result, "the run's result")
        error = None if update.error is None else encode_value(update.error, "the run's error")
        return cls(update, result, error, tuple(PreparedRun.of(c) for c in update.children))


# -- write jobs (in the writer's transaction) ---------------------------------------------


def create_run(
    conn: sqlite3.Connection, notices: list[Notice], prepared: PreparedRun
) -> tuple[RunInfo, bool]:
    """Create a run and its first entry unless the id exists."""
    run = prepared.run
    at = run.started_at
    cur = conn.execute(
        "INSERT OR IGNORE INTO runs (run_id, workflow, status, args, created_at, updated_at, parent_id) "
        "VALUES (?, ?, 'pending', ?, ?, ?, ?)",
        (run.run_id, run.workflow, prepared.args, at, at, run.parent_id),
    )
    if cur.rowcount == 0:
        existing = get_run(conn, run.run_id)
        if existing is None:
            raise ReplayInternalError(f"run {run.run_id!r} neither inserted nor found")
        return existing, False
    conn.executemany(
        "INSERT INTO journal (run_id, seq, entry) VALUES (?, ?, ?)",
        [
            (run.run_id, e.seq, blob)
            for e, blob in zip(run.entries(), (prepared.first, *prepared.rest), strict=True)
        ],
    )
    cancelled = False
    if run.journal:
        _track(conn, run.run_id, run.journal)
        cancelled = any(e.kind == j.CANCEL_REQUESTED for e in run.journal)
        if cancelled:
            conn.execute("UPDATE runs SET cancel_requested = 1 WHERE run_id = ?", (run.run_id,))
    notices.append(Notice("ready", run.run_id))
    info = RunInfo(
        run.run_id,
        run.workflow,
        "pending",
        run.args,
        at,
        at,
        parent_id=run.parent_id,
        cancel_requested=cancelled,
    )
    return info, True


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
    row = conn.execute(
        "SELECT token, owner, updated_at, (SELECT MAX(seq) FROM journal WHERE run_id = ?) "
        "FROM runs WHERE run_id = ?",
        (run_id, run_id),
    ).fetchone()
    if row is None or row[0] != token or row[1] is None:
        raise LeaseLost(f"run {run_id!r} is no longer owned by this worker (token {token})")
    expected = (row[3] or 0) + 1
    for e in entries:
        if e.seq != expected:
            raise ReplayInternalError(f"append to {run_id!r}: seq {e.seq}, expected {expected}")
        expected += 1
    conn.executemany(
        "INSERT INTO journal (run_id, seq, entry) VALUES (?, ?, ?)",
        [(run_id, e.seq, blob) for e, blob in zip(entries, blobs, strict=True)],
    )
    _track(conn, run_id, entries)
    if update is not None:
        _update(conn, notices, run_id, update, entries[-1].at if entries else row[2])


def _track(conn: sqlite3.Connection, run_id: str, entries: Sequence[Entry]) -> None:
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
            # for when it is retried.
            conn.execute("DELETE FROM waits WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM awaited_children WHERE run_id = ?", (run_id,))


def _update(
    conn: sqlite3.Connection, notices: list[Notice], run_id: str, prepared: PreparedUpdate, at: float
) -> None:
    update = prepared.update
    for child in prepared.children:
        create_run(conn, notices, child)
    sets: list[str] = ["updated_at = ?"]
    params: list[Any] = [at]
    if update.status is not None:
        wake = update.wake_at
        if update.status == "suspended" and _has_news(conn, run_id):
            # News that reached the owner while it was suspending must not be lost.
            wake = at if wake is None else min(at, wake)
        sets += ["status = ?", "wake_at = ?"]
        params += [update.status, wake]
    if prepared.result is not None:
        sets.append("result = ?")
        params.append(prepared.result)
    if prepared.error is not None:
        sets.append("error = ?")
        params.append(prepared.error)
    if update.release:
        sets.append("owner = NULL")
    conn.execute(f"UPDATE runs SET {', '.join(sets)} WHERE run_id = ?", (*params, run_id))
    status, wake_at, parent_id = conn.execute(
        "SELECT status, wake_at, parent_id FROM runs WHERE run_id = ?", (run_id,)
    ).fetchone()
    if status in TERMINAL_STATUSES:
        notices.append(Notice("finished", run_id))
        if parent_id is not None:
            _wake(conn, notices, parent_id, at)
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


def _wake(conn: sqlite3.Connection, notices: list[Notice], run_id: str, at: float) -> None:
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
    conn.execute("UPDATE runs SET cancel_requested = 1 WHERE run_id = ?", (run_id,))
    _wake(conn, notices, run_id, at)
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
    conn: sqlite3.Connection, notices: list[Notice], event: EventRecord, data: bytes
) -> tuple[EventRecord, bool]:
    """Store an event unless its id exists, and wake the runs with a matching wait."""
    row = conn.execute("SELECT position, name, data, at FROM events WHERE id = ?", (event.id,)).fetchone()
    if row is not None:
        return EventRecord(event.id, row[1], decode_value(row[2]), row[3], row[0]), False
    cur = conn.execute(
        "INSERT INTO events (id, name, data, at) VALUES (?, ?, ?, ?)", (event.id, event.name, data, event.at)
    )
    stored = attrs.evolve(event, position=int(cur.lastrowid or 0))
    waits = conn.execute(
        "SELECT run_id, match, after, timeout_at FROM waits WHERE name = ? ORDER BY run_id, seq",
        (event.name,),
    ).fetchall()
    woken: dict[str, None] = {}
    for run_id, match, after, timeout_at in waits:
        if run_id in woken or after >= stored.position:
            continue
        if (timeout_at is None or event.at <= timeout_at) and contains(event.data, decode_value(match)):
            woken[run_id] = None
    for run_id in woken:
        _wake(conn, notices, run_id, event.at)
    return stored, True


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
    """Own up to ``limit`` claimable runs: orphaned running ones, then due ones, then new ones."""
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
    queries: list[tuple[str, tuple[Any, ...]]] = [
        (f"status = 'running' AND owner IS NULL AND {in_names}", names),
        (f"status = 'suspended' AND wake_at <= ? AND {in_names} ORDER BY wake_at", (now, *names)),
        (f"status = 'pending' AND {in_names}", names),  # the index keeps them in creation order
    ]
    if dead:
        by_owner = f"status = 'running' AND owner IN ({','.join('?' * len(dead))}) AND {in_names}"
        queries.insert(1, (by_owner, (*dead, *names)))
    picked: list[tuple[str, str, int, int]] = []
    for where, params in queries:
        if len(picked) >= limit:
            break
        sql = f"SELECT run_id, workflow, token, cancel_requested FROM runs WHERE {where} LIMIT ?"
        picked.extend(conn.execute(sql, (*params, limit - len(picked))).fetchall())
    claims = []
    for run_id, workflow, token, cancel_requested in picked:
        conn.execute(
            "UPDATE runs SET token = ?, owner = ?, status = 'running', wake_at = NULL, updated_at = ? "
            "WHERE run_id = ?",
            (token + 1, worker_id, now, run_id),
        )
        claims.append(Claim(run_id, workflow, token + 1, bool(cancel_requested)))
    return claims
