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
from replay.stores._flow import debounce_wake, dropped, not_begun, throttle_begin
from replay.stores._sqlite_reads import TERMINAL_SQL, first_match, get_run
from replay.stores.base import (
    TERMINAL_STATUSES,
    Claim,
    EventRecord,
    Gate,
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
    "check_fence",
    "advance_schedule",
    "claim",
    "create_run",
    "request_cancel",
    "send_event",
    "track",
    "unregister",
)


@attrs.frozen
class PreparedRun:
    """A run to create, encoded by the caller (so encoding errors happen before queueing)."""

    run: NewRun
    args: bytes
    first: bytes
    rest: tuple[bytes, ...] = ()
    cancel_on: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def of(cls, run: NewRun) -> PreparedRun:
        """Check and encode ``run``; raises ``SerializationError`` or ``ReplayInternalError``."""
        run.entries()
        return cls(
            run,
            encode_value(run.args, f"the arguments of run {run.run_id!r}"),
            encode_entry(run.first),
            tuple(encode_entry(e) for e in run.journal),
            tuple((name, encode_value(match)) for name, match in run.flow.cancel_on),
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
    """Create a run and its first entries unless the id exists, under its flow control."""
    run = prepared.run
    flow, at = run.flow, run.started_at
    existing = get_run(conn, run.run_id)
    if existing is None:
        alias = conn.execute("SELECT run_id FROM run_aliases WHERE alias = ?", (run.run_id,)).fetchone()
        existing = None if alias is None else get_run(conn, alias[0])
    if existing is not None:
        return existing, False
    if flow.rate_limit is not None and _rate_limited(conn, flow.rate_limit.key, flow.rate_limit, at):
        return _drop(conn, notices, prepared), True
    wake: float | None = None
    if flow.debounce is not None:
        joined = _debounce(conn, prepared, at)
        if joined is not None:
            return joined, False
        wake = debounce_wake(at, flow.debounce, at)
    begin_at = None
    if flow.throttle is not None:
        begin_at = wake = throttle_begin(
            wake or at, _begins(conn, flow.throttle.key, flow.throttle.limit), flow.throttle
        )
    if wake is not None and wake <= at:
        wake = None
    gate = flow.concurrency
    conn.execute(
        "INSERT INTO runs (run_id, workflow, status, args, created_at, updated_at, parent_id, wake_at, "
        "priority, concurrency_key, concurrency_limit, throttle_key, begin_at, rate_key, debounce_key) "
        "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run.run_id,
            run.workflow,
            prepared.args,
            at,
            at,
            run.parent_id,
            wake,
            flow.priority,
            None if gate is None else gate.key,
            None if gate is None else gate.limit,
            None if flow.throttle is None else flow.throttle.key,
            begin_at,
            None if flow.rate_limit is None else flow.rate_limit.key,
            None if flow.debounce is None else flow.debounce.key,
        ),
    )
    conn.executemany(
        "INSERT INTO journal (run_id, seq, entry) VALUES (?, ?, ?)",
        [
            (run.run_id, e.seq, blob)
            for e, blob in zip(run.entries(), (prepared.first, *prepared.rest), strict=True)
        ],
    )
    _register_cancel_on(conn, run.run_id, prepared.cancel_on)
    cancelled = False
    if run.journal:
        track(conn, run.run_id, run.journal)
        cancelled = any(e.kind == j.CANCEL_REQUESTED for e in run.journal)
        if cancelled:
            conn.execute("UPDATE runs SET cancel_requested = 1 WHERE run_id = ?", (run.run_id,))
    notices.append(Notice("ready", run.run_id))
    return run.pending(wake_at=wake, cancel_requested=cancelled), True


def _register_cancel_on(
    conn: sqlite3.Connection, run_id: str, cancel_on: Sequence[tuple[str, bytes]]
) -> None:
    conn.executemany(
        "INSERT INTO cancel_on (run_id, name, match, after) "
        "VALUES (?, ?, ?, (SELECT COALESCE(MAX(position), 0) FROM events))",
        [(run_id, name, match) for name, match in cancel_on],
    )


def _rate_limited(conn: sqlite3.Connection, key: str, gate: Gate, at: float) -> bool:
    (count,) = conn.execute(
        "SELECT COUNT(*) FROM runs WHERE rate_key = ? AND created_at > ?", (key, at - gate.period)
    ).fetchone()
    return bool(count >= gate.limit)


def _drop(conn: sqlite3.Connection, notices: list[Notice], prepared: PreparedRun) -> RunInfo:
    run = prepared.run
    assert run.flow.rate_limit is not None
    entry, error = dropped(run.run_id, run.first, run.flow.rate_limit)
    at = run.started_at
    conn.execute(
        "INSERT INTO runs (run_id, workflow, status, args, created_at, updated_at, parent_id, error) "
        "VALUES (?, ?, 'cancelled', ?, ?, ?, ?, ?)",
        (run.run_id, run.workflow, prepared.args, at, at, run.parent_id, encode_value(error)),
    )
    conn.executemany(
        "INSERT INTO journal (run_id, seq, entry) VALUES (?, ?, ?)",
        [(run.run_id, 1, prepared.first), (run.run_id, entry.seq, encode_entry(entry))],
    )
    notices.append(Notice("finished", run.run_id))
    return RunInfo(
        run.run_id, run.workflow, "cancelled", run.args, at, at, error=error, parent_id=run.parent_id
    )


def _debounce(conn: sqlite3.Connection, prepared: PreparedRun, at: float) -> RunInfo | None:
    """Join a pending, never-claimed run of the same debounce key, if there is one."""
    run = prepared.run
    rule = run.flow.debounce
    assert rule is not None
    row = conn.execute(
        "SELECT run_id, created_at, begin_at FROM runs "
        "WHERE debounce_key = ? AND status = 'pending' AND token = 0 ORDER BY rowid LIMIT 1",
        (rule.key,),
    ).fetchone()
    if row is None:
        return None
    run_id, created_at, old_begin = row
    wake = debounce_wake(at, rule, created_at)
    begin_at = None
    if run.flow.throttle is not None:
        begins = [
            b for b in _begins(conn, run.flow.throttle.key, run.flow.throttle.limit + 1) if b != old_begin
        ]
        begin_at = wake = throttle_begin(wake, begins, run.flow.throttle)
    conn.execute(
        "UPDATE runs SET args = ?, wake_at = ?, begin_at = ?, updated_at = ? WHERE run_id = ?",
        (prepared.args, wake, begin_at, at, run_id),
    )
    conn.execute("UPDATE journal SET entry = ? WHERE run_id = ? AND seq = 1", (prepared.first, run_id))
    conn.execute("INSERT INTO run_aliases (alias, run_id) VALUES (?, ?)", (run.run_id, run_id))
    conn.execute("DELETE FROM cancel_on WHERE run_id = ?", (run_id,))
    _register_cancel_on(conn, run_id, prepared.cancel_on)
    return get_run(conn, run_id)


def _begins(conn: sqlite3.Connection, key: str, n: int) -> list[float]:
    """The ``n`` latest begin times given under a throttle key, latest first."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT begin_at FROM runs WHERE throttle_key = ? ORDER BY begin_at DESC LIMIT ?", (key, n)
        )
    ]


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
        "SELECT token, owner, (SELECT MAX(seq) FROM journal WHERE run_id = ?), updated_at "
        "FROM runs WHERE run_id = ?",
        (run_id, run_id),
    ).fetchone()
    check_fence(run_id, token, row, entries)
    conn.executemany(
        "INSERT INTO journal (run_id, seq, entry) VALUES (?, ?, ?)",
        [(run_id, e.seq, blob) for e, blob in zip(entries, blobs, strict=True)],
    )
    track(conn, run_id, entries)
    if update is not None:
        _update(conn, notices, run_id, update, entries[-1].at if entries else row[3])


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
            # for when it is retried.
            conn.execute("DELETE FROM waits WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM awaited_children WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM cancel_on WHERE run_id = ?", (run_id,))


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
    status, wake_at, parent_id, concurrency_key = conn.execute(
        "SELECT status, wake_at, parent_id, concurrency_key FROM runs WHERE run_id = ?", (run_id,)
    ).fetchone()
    if concurrency_key is not None and status != "running":
        notices.append(Notice("ready", run_id))  # a slot is free: a waiting run may go
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
        _update(conn, notices, run_id, PreparedUpdate.of(RunUpdate(status="cancelled")), at)
        return get_run(conn, run_id)
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
    for table, then in (("waits", _wake), ("cancel_on", _cancel)):
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
    claims = []
    for run_id, workflow, token, cancel_requested in picked:
        conn.execute(
            "UPDATE runs SET token = ?, owner = ?, status = 'running', wake_at = NULL, updated_at = ? "
            "WHERE run_id = ?",
            (token + 1, worker_id, now, run_id),
        )
        claims.append(Claim(run_id, workflow, token + 1, bool(cancel_requested)))
    return claims
