"""The SQLite store's job that creates a run, under its flow control.

Rate limits drop a start beyond the limit as a cancelled run; a debounced
start joins a run of its key that has not begun; throttling delays a run's
begin. The semantics are ``MemoryStore``'s, clause for clause.

Most runs have none of that: ``PlainCreate`` creates those the writer has
queued together (``app.start`` called many times at once) in three statements
for the whole group rather than three each.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import orjson

from replay import journal as j
from replay.journal import encode_entry, encode_value
from replay.stores._flow import debounce_wake, dropped, throttle_begin
from replay.stores._prepared import PreparedRun, flow_columns
from replay.stores._sqlite_journal import track
from replay.stores._sqlite_reads import get_run
from replay.stores.base import Gate, Notice, RunInfo

__all__ = ("PlainCreate", "create_run")

#: Whether the id ``:run_id`` is a run's, and the run a start of that id joined, if one did.
_KNOWN = (
    "SELECT EXISTS (SELECT 1 FROM runs WHERE run_id = :run_id), "
    "(SELECT run_id FROM run_aliases WHERE alias = :run_id)"
)


#: A new run's row; see ``_run_row``.
_INSERT_RUN = (
    "INSERT INTO runs (run_id, workflow, status, args, created_at, updated_at, parent_id, wake_at, "
    "priority, concurrency_key, concurrency_limit, throttle_key, begin_at, rate_key, debounce_key) "
    "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _run_row(prepared: PreparedRun, wake: float | None, begin_at: float | None) -> tuple[object, ...]:
    run = prepared.run
    at = run.started_at
    return (
        run.run_id,
        run.workflow,
        prepared.args,
        at,
        at,
        run.parent_id,
        wake,
        *flow_columns(run.flow, begin_at),
    )


class PlainCreate:
    """A write job: create a run with no flow control to apply and nothing but its first entry."""

    __slots__ = ("prepared",)

    def __init__(self, prepared: PreparedRun) -> None:
        self.prepared = prepared

    @property
    def key(self) -> str:
        """Jobs batched in one ``run_many`` create distinct runs."""
        return self.prepared.run.run_id

    @staticmethod
    def fits(prepared: PreparedRun) -> bool:
        """Whether ``create_run`` would do no more than check the id and insert the run and its entry."""
        flow = prepared.run.flow
        return (
            flow.rate_limit is None
            and flow.debounce is None
            and flow.throttle is None
            and not prepared.rest
            and not prepared.cancel_on
        )

    def __call__(self, conn: sqlite3.Connection, notices: list[Notice]) -> tuple[RunInfo, bool]:
        """Run alone, as any job."""
        return create_run(conn, notices, self.prepared)

    @staticmethod
    def run_many(
        conn: sqlite3.Connection, jobs: Sequence[PlainCreate], notices: Sequence[list[Notice]]
    ) -> list[tuple[RunInfo, bool]]:
        """Run ``jobs`` (of distinct run ids) as if one after the other; returns their results."""
        ids = [job.key for job in jobs]
        known = {
            run_id
            for run_id, exists, joined in conn.execute(
                "SELECT value, EXISTS (SELECT 1 FROM runs WHERE run_id = value), "
                "(SELECT run_id FROM run_aliases WHERE alias = value) FROM json_each(?)",
                (orjson.dumps(ids),),
            )
            if exists or joined is not None
        }
        results: list[tuple[RunInfo, bool]] = []
        rows: list[tuple[object, ...]] = []
        for job, queued in zip(jobs, notices, strict=True):
            prepared = job.prepared
            if prepared.run.run_id in known:
                results.append(create_run(conn, queued, prepared))  # it exists: as alone
                continue
            rows.append(_run_row(prepared, None, None))
            queued.append(Notice("ready", prepared.run.run_id))
            results.append((prepared.run.pending(), True))
        if rows:
            conn.executemany(_INSERT_RUN, rows)
            conn.executemany(
                "INSERT INTO journal (run_id, seq, entry) VALUES (?, ?, ?)",
                [
                    (job.key, job.prepared.run.first.seq, job.prepared.first)
                    for job in jobs
                    if job.key not in known
                ],
            )
        return results


def create_run(
    conn: sqlite3.Connection, notices: list[Notice], prepared: PreparedRun
) -> tuple[RunInfo, bool]:
    """Create a run and its first entries unless the id exists, under its flow control."""
    run = prepared.run
    flow, at = run.flow, run.started_at
    # One statement for the common case, a new id: is it a run, or a start that joined one?
    exists, joined = conn.execute(_KNOWN, {"run_id": run.run_id}).fetchone()
    if exists or joined is not None:
        existing = get_run(conn, run.run_id if exists else joined)
        if existing is not None:
            return existing, False
    if flow.debounce is not None:
        joined = _debounce(conn, prepared, at)
        if joined is not None:
            return joined, False  # no new run: nothing for a rate limit to count
    if flow.rate_limit is not None and _rate_limited(conn, flow.rate_limit.key, flow.rate_limit, at):
        return _drop(conn, notices, prepared), True
    wake: float | None = None
    if flow.debounce is not None:
        wake = debounce_wake(at, flow.debounce, at)
    begin_at = None
    if flow.throttle is not None:
        begin_at = wake = throttle_begin(
            wake or at, _begins(conn, flow.throttle.key, flow.throttle.limit), flow.throttle
        )
    if wake is not None and wake <= at:
        wake = None
    conn.execute(_INSERT_RUN, _run_row(prepared, wake, begin_at))
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
    if not cancel_on:
        return  # most runs: no statement at all
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
    # The run begins as the last start would have: its arguments, and so its priority and keys.
    conn.execute(
        "UPDATE runs SET args = ?, wake_at = ?, updated_at = ?, priority = ?, concurrency_key = ?, "
        "concurrency_limit = ?, throttle_key = ?, begin_at = ?, rate_key = ?, debounce_key = ? "
        "WHERE run_id = ?",
        (prepared.args, wake, at, *flow_columns(run.flow, begin_at), run_id),
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
