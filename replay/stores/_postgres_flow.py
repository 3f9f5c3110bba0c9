"""The PostgreSQL store's flow control at creation: rate limits, debouncing, throttling, cancel_on.

The semantics are ``MemoryStore``'s (see ``replay.stores.base``). What
PostgreSQL adds is concurrency: two processes may start runs of one key at
once. Each rule therefore takes a transaction-level advisory lock on its key
(rate limit, then debounce, then throttle: one order, so no deadlock) before
it reads what earlier starts left, and looks for the run id again under those
locks: a start that was waiting on a lock sees the starts committed before it.
The events lock (shared, for ``cancel_on``) is taken before any key lock, as
``send_event`` holds it when it creates the runs an event triggers.
"""

from __future__ import annotations

from typing import Any

from replay import journal as j
from replay.journal import encode_entry, encode_value
from replay.stores._flow import debounce_wake, dropped, throttle_begin
from replay.stores._postgres_reads import Conn, get_run
from replay.stores._postgres_writes import Tx, insert_entries, track
from replay.stores._prepared import PreparedRun, flow_columns
from replay.stores.base import RunInfo

__all__ = ("create_under_flow", "existing", "register_cancel_on")


async def existing(conn: Conn, run_id: str) -> RunInfo | None:
    """The run with this id, or the run a start with this id joined (an alias)."""
    info = await get_run(conn, run_id)
    if info is None:
        target = await conn.fetchval("SELECT run_id FROM run_aliases WHERE alias = $1", run_id)
        info = None if target is None else await get_run(conn, target)
    return info


async def _lock(tx: Tx, rule: str, key: str) -> None:
    # The channel names the schema: deployments sharing a database do not contend.
    await tx.conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{tx.channel}:{rule}:{key}"
    )


async def create_under_flow(tx: Tx, prepared: PreparedRun) -> tuple[RunInfo, bool]:
    """Create a run under its flow control (inside ``tx``'s transaction), unless it exists."""
    run = prepared.run
    flow, at, conn = run.flow, run.started_at, tx.conn
    # The events lock first, as send_event (which may create triggered runs) takes it.
    if flow.cancel_on or any(e.kind == j.WAIT_STARTED for e in run.journal):
        await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", tx.events_lock)
    if flow.rate_limit is not None:
        await _lock(tx, "rate", flow.rate_limit.key)
    if flow.debounce is not None:
        await _lock(tx, "debounce", flow.debounce.key)
    if flow.throttle is not None:
        await _lock(tx, "throttle", flow.throttle.key)
    found = await existing(conn, run.run_id)
    if found is not None:
        return found, False
    if flow.debounce is not None:
        joined = await _join(tx, prepared, at)
        if joined is not None:
            return joined, False  # no new run: nothing for a rate limit to count
    gate = flow.rate_limit
    if gate is not None:
        recent = await conn.fetchval(
            "SELECT count(*) FROM runs WHERE rate_key = $1 AND created_at > $2", gate.key, at - gate.period
        )
        if recent >= gate.limit:
            return await _drop(tx, prepared), True
    wake: float | None = None
    if flow.debounce is not None:
        wake = debounce_wake(at, flow.debounce, at)
    begin_at = None
    if flow.throttle is not None:
        begins = await _begins(conn, flow.throttle.key, flow.throttle.limit)
        begin_at = wake = throttle_begin(wake or at, begins, flow.throttle)
    if wake is not None and wake <= at:
        wake = None
    entries = run.entries()
    cancelled = any(e.kind == j.CANCEL_REQUESTED for e in run.journal)
    await conn.execute(
        "INSERT INTO runs (run_id, workflow, status, args, created_at, updated_at, parent_id, seq, op_id,"
        " cancel_requested, wake_at, priority, concurrency_key, concurrency_limit, throttle_key, begin_at,"
        " rate_key, debounce_key)"
        " VALUES ($1, $2, 'pending', $3, $4, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        run.run_id,
        run.workflow,
        prepared.args,
        at,
        run.parent_id,
        entries[-1].seq,
        tx.op_id,
        cancelled,
        wake,
        *flow_columns(flow, begin_at),
    )
    await insert_entries(conn, run.run_id, [e.seq for e in entries], [prepared.first, *prepared.rest])
    await track(tx, run.run_id, run.journal)
    await register_cancel_on(tx, run.run_id, prepared)
    tx.notice("ready", run.run_id)
    return run.pending(wake_at=wake, cancel_requested=cancelled), True


async def register_cancel_on(tx: Tx, run_id: str, prepared: PreparedRun) -> None:
    """Record the events that cancel the run; they count from the last event committed.

    The caller holds the events lock shared, so that position cannot move meanwhile.
    """
    if not prepared.cancel_on:
        return
    await tx.conn.execute(
        "INSERT INTO cancel_on (run_id, name, match, after)"
        " SELECT $1, n, m, (SELECT COALESCE(max(position), 0) FROM events)"
        " FROM unnest($2::text[], $3::bytea[]) AS u(n, m)",
        run_id,
        [name for name, _ in prepared.cancel_on],
        [match for _, match in prepared.cancel_on],
    )


async def _drop(tx: Tx, prepared: PreparedRun) -> RunInfo:
    """Store a start beyond its rate limit as a run that ended ``cancelled``."""
    run = prepared.run
    assert run.flow.rate_limit is not None
    entry, error = dropped(run.run_id, run.first, run.flow.rate_limit)
    at = run.started_at
    await tx.conn.execute(
        "INSERT INTO runs (run_id, workflow, status, args, created_at, updated_at, parent_id, seq, op_id,"
        " error, ended_at) VALUES ($1, $2, 'cancelled', $3, $4, $4, $5, 2, $6, $7, clock_timestamp())",
        run.run_id,
        run.workflow,
        prepared.args,
        at,
        run.parent_id,
        tx.op_id,
        encode_value(error),
    )
    await insert_entries(tx.conn, run.run_id, [1, 2], [prepared.first, encode_entry(entry)])
    tx.notice("finished", run.run_id)
    return RunInfo(
        run.run_id, run.workflow, "cancelled", run.args, at, at, error=error, parent_id=run.parent_id
    )


async def _join(tx: Tx, prepared: PreparedRun, at: float) -> RunInfo | None:
    """Join a pending, never-claimed run of the same debounce key, if there is one."""
    run = prepared.run
    rule = run.flow.debounce
    assert rule is not None
    conn = tx.conn
    row = await conn.fetchrow(
        "SELECT run_id, created_at, begin_at FROM runs"
        " WHERE debounce_key = $1 AND status = 'pending' AND token = 0 ORDER BY n LIMIT 1 FOR UPDATE",
        rule.key,
    )
    if row is None:
        return None
    run_id, created_at, old_begin = row
    wake = debounce_wake(at, rule, created_at)
    begin_at = None
    if run.flow.throttle is not None:
        begins = [
            b
            for b in await _begins(conn, run.flow.throttle.key, run.flow.throttle.limit + 1)
            if b != old_begin
        ]
        begin_at = wake = throttle_begin(wake, begins, run.flow.throttle)
    # The run begins as the last start would have: its arguments, and so its priority and keys.
    await conn.execute(
        "UPDATE runs SET args = $2, wake_at = $3, updated_at = $4, op_id = $5, priority = $6,"
        " concurrency_key = $7, concurrency_limit = $8, throttle_key = $9, begin_at = $10,"
        " rate_key = $11, debounce_key = $12 WHERE run_id = $1",
        run_id,
        prepared.args,
        wake,
        at,
        tx.op_id,
        *flow_columns(run.flow, begin_at),
    )
    await conn.execute("UPDATE journal SET entry = $2 WHERE run_id = $1 AND seq = 1", run_id, prepared.first)
    await conn.execute("INSERT INTO run_aliases (alias, run_id) VALUES ($1, $2)", run.run_id, run_id)
    await conn.execute("DELETE FROM cancel_on WHERE run_id = $1", run_id)
    await register_cancel_on(tx, run_id, prepared)
    return await get_run(conn, run_id)


async def _begins(conn: Conn, key: str, n: int) -> list[float]:
    """The ``n`` latest begin times given under a throttle key, latest first."""
    rows: list[Any] = await conn.fetch(
        "SELECT begin_at FROM runs WHERE throttle_key = $1 ORDER BY begin_at DESC LIMIT $2", key, n
    )
    return [row[0] for row in rows]
