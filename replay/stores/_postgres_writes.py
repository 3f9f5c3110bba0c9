"""The PostgreSQL store's writes: each a function of one open transaction (a ``Tx``).

The semantics are ``MemoryStore``'s, clause for clause. What PostgreSQL adds is
concurrency: several processes write at once, so every rule that memory and
SQLite get from having one writer is made explicit here with locks.

- **Fencing.** An append begins by updating its run's row ``WHERE token = $token
  AND owner IS NOT NULL AND seq = $last``. That row lock is held to COMMIT, so a
  claim that bumps the token either commits first (the append then matches no
  row: ``LeaseLost``) or waits for the append to commit. Either way a worker that
  lost its lease never writes.
- **Events in commit order.** ``send_event`` takes an exclusive transaction-level
  advisory lock, so events commit one at a time, in position order. An append
  that registers a wait takes the same lock shared, before it locks the run: a
  wait then sees exactly the events committed before it (``after`` is the last
  position), and an event either sees the wait or was committed before it.
- **No lost wake-ups.** Waking a run (an event, a child's end, a cancellation)
  updates the run's row, and a suspending append re-checks for news after its
  fencing lock: whichever transaction locks the row second sees the other's
  commit. Locks are taken advisory lock first, then a child's row before its
  parent's; a deadlock (say, with ``unregister``) is detected by PostgreSQL and
  the whole transaction retried by the store.
- **Notices.** Each notice is sent with ``pg_notify`` inside the transaction, so
  other processes hear of it only once it is committed, and handed to this
  process's listeners by the store after the COMMIT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import asyncpg
import attrs

from replay import journal as j
from replay.errors import LeaseLost, ReplayInternalError
from replay.journal import Entry, decode_value, encode_value
from replay.stores._postgres_reads import TERMINAL_SQL, Conn, first_match
from replay.stores._prepared import PreparedRun, PreparedUpdate
from replay.stores.base import NO_FLOW, TERMINAL_STATUSES, Notice, NoticeKind, RunInfo

__all__ = (
    "NOTIFY_LIMIT",
    "TRACKED_KINDS",
    "Tx",
    "append",
    "create_run",
    "fast_create",
    "insert_entries",
    "one_row",
    "refused",
    "track",
    "update_run",
    "wake",
)

#: Entries whose append changes more than the journal (waits, children, cancellation, the end).
TRACKED_KINDS = frozenset(
    {j.WAIT_STARTED, j.EVENT_RECEIVED, j.WAIT_TIMED_OUT, j.CHILD_STARTED, j.CHILD_COMPLETED}
    | {j.CANCEL_REQUESTED}
    | j.TERMINAL_KINDS
)
#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; a notice about a run
#: whose id is that long reaches this process only (the others poll).
NOTIFY_LIMIT = 7900


@attrs.define(eq=False)
class Tx:
    """One write: its connection (in a transaction), its id and the notices it makes.

    Attributes:
        conn: the connection, inside the write's transaction (or autocommit for
            the single-statement writes).
        channel: the NOTIFY channel of the store's schema.
        origin: this store's id, so it can skip its own notifications.
        events_lock: the advisory lock key that orders events and waits.
        op_id: this write's id, stored in the rows it fences on so a retry after
            a lost COMMIT can tell whether it landed.
        notices: what to tell listeners once the transaction has committed.
    """

    conn: Conn
    channel: str
    origin: str
    events_lock: int
    op_id: int
    notices: list[Notice] = attrs.Factory(list)

    def notice(self, kind: NoticeKind, run_id: str) -> None:
        """Tell listeners, after the commit, about ``run_id`` (an event's id, for ``"event"``)."""
        self.notices.append(Notice(kind, run_id))

    def payload(self, notice: Notice) -> str:
        """The NOTIFY payload of ``notice``: ``origin kind run_id``."""
        return f"{self.origin} {notice.kind} {notice.run_id}"

    async def publish(self) -> None:
        """NOTIFY the other processes of every notice, delivered with the commit."""
        payloads = [p for p in dict.fromkeys(map(self.payload, self.notices)) if len(p) < NOTIFY_LIMIT]
        if payloads:
            await self.conn.execute(
                "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", self.channel, payloads
            )


def one_row(row: asyncpg.Record | None) -> asyncpg.Record:
    """The row a statement always returns (its table is locked or it is ours)."""
    if row is None:
        raise ReplayInternalError("a statement that always returns a row returned none")
    return row


# -- runs ----------------------------------------------------------------------------------

_INSERT_RUN = (
    "INSERT INTO runs (run_id, workflow, status, args, created_at, updated_at, parent_id, seq, op_id,"
    " cancel_requested) SELECT $1, $2, 'pending', $3, $4, $4, $5, $6, $7, $8"
    " WHERE NOT EXISTS (SELECT 1 FROM run_aliases WHERE alias = $1)"  # a start that joined a debounce
    " ON CONFLICT (run_id) DO NOTHING RETURNING run_id"
)


async def fast_create(tx: Tx, prepared: PreparedRun) -> tuple[RunInfo, bool] | None:
    """Create a run with only its first entry in ONE statement; None if it exists.

    The run row, its entry and the NOTIFY are one statement, so they commit
    together without a transaction block: one round trip for ``app.start``.
    """
    run = prepared.run
    tx.notice("ready", run.run_id)
    payload = tx.payload(tx.notices[-1])
    inserted, _ = one_row(
        await tx.conn.fetchrow(
            f"WITH r AS ({_INSERT_RUN}),"
            " j AS (INSERT INTO journal (run_id, seq, entry) SELECT run_id, 1, $9 FROM r),"
            " n AS (SELECT pg_notify($10, $11) FROM r WHERE $12)"
            " SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM n)",
            run.run_id,
            run.workflow,
            prepared.args,
            run.started_at,
            run.parent_id,
            1,
            tx.op_id,
            False,
            prepared.first,
            tx.channel,
            payload,
            len(payload) < NOTIFY_LIMIT,
        )
    )
    if not inserted:
        tx.notices.clear()
        return None
    return prepared.run.pending(), True


async def create_run(tx: Tx, prepared: PreparedRun) -> tuple[RunInfo, bool]:
    """Create a run and its entries unless the id exists (inside ``tx``'s transaction)."""
    from replay.stores._postgres_flow import create_under_flow, existing

    run = prepared.run
    if run.flow != NO_FLOW:
        return await create_under_flow(tx, prepared)
    conn = tx.conn
    entries = run.entries()
    cancelled = any(e.kind == j.CANCEL_REQUESTED for e in run.journal)
    if any(e.kind == j.WAIT_STARTED for e in run.journal):
        await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", tx.events_lock)
    row = await conn.fetchrow(
        _INSERT_RUN,
        run.run_id,
        run.workflow,
        prepared.args,
        run.started_at,
        run.parent_id,
        entries[-1].seq,
        tx.op_id,
        cancelled,
    )
    if row is None:
        found = await existing(conn, run.run_id)
        if found is None:
            raise ReplayInternalError(f"run {run.run_id!r} neither inserted nor found")
        return found, False
    await insert_entries(conn, run.run_id, [e.seq for e in entries], [prepared.first, *prepared.rest])
    await track(tx, run.run_id, run.journal)
    tx.notice("ready", run.run_id)
    return run.pending(cancel_requested=cancelled), True


async def insert_entries(conn: Conn, run_id: str, seqs: list[int], blobs: list[bytes]) -> None:
    await conn.execute(
        "INSERT INTO journal (run_id, seq, entry)"
        " SELECT $1, s, e FROM unnest($2::int[], $3::bytea[]) AS u(s, e)",
        run_id,
        seqs,
        blobs,
    )


# -- appends -------------------------------------------------------------------------------

_FENCE = "UPDATE runs SET seq = $3, op_id = $4 WHERE run_id = $1 AND token = $2 AND owner IS NOT NULL"


async def append(
    tx: Tx,
    run_id: str,
    token: int,
    entries: Sequence[Entry],
    blobs: list[bytes],
    update: PreparedUpdate | None,
) -> None:
    """Append fenced entries, keep waits, children and cancellation in step, apply ``update``."""
    conn = tx.conn
    if any(e.kind == j.WAIT_STARTED for e in entries):
        await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", tx.events_lock)
    if entries:
        first = entries[0].seq
        row = await conn.fetchrow(
            f"{_FENCE} AND seq = $5 RETURNING updated_at, parent_id",
            run_id,
            token,
            entries[-1].seq,
            tx.op_id,
            first - 1,
        )
    else:
        first = None
        row = await conn.fetchrow(
            "UPDATE runs SET op_id = $3 WHERE run_id = $1 AND token = $2 AND owner IS NOT NULL"
            " RETURNING updated_at, parent_id",
            run_id,
            token,
            tx.op_id,
        )
    if row is None:
        await refused(conn, run_id, token, first)
    if entries:
        await insert_entries(conn, run_id, [e.seq for e in entries], blobs)
        await track(tx, run_id, entries)
    if update is not None:
        await update_run(tx, run_id, update, entries[-1].at if entries else row[0], row[1])
    await tx.publish()


async def refused(conn: Conn, run_id: str, token: int, first: int | None) -> NoReturn:
    """Why the fencing UPDATE matched no row: always raises.

    Raises:
        LeaseLost: the token is stale or the run was released.
        ReplayInternalError: the entries starting at ``first`` do not continue the journal.
    """
    row = await conn.fetchrow("SELECT token, owner, seq FROM runs WHERE run_id = $1", run_id)
    if row is None or row[0] != token or row[1] is None:
        raise LeaseLost(f"run {run_id!r} is no longer owned by this worker (token {token})")
    raise ReplayInternalError(f"append to {run_id!r}: seq {first}, expected {row[2] + 1}")


async def track(tx: Tx, run_id: str, entries: Sequence[Entry]) -> None:
    """Keep waits, awaited children and cancellation in step with new entries.

    Each key is added at most once and removed only after it was added, so
    doing all the additions first and then all the removals is the same as
    doing them in journal order, in a few statements.
    """
    waits: list[tuple[int, str, bytes, float | None]] = []
    ended: list[int] = []
    started: list[str] = []
    finished: list[str] = []
    cancel_delivered = terminal = False
    for e in entries:
        kind = e.kind
        if kind not in TRACKED_KINDS:
            continue
        if kind == j.WAIT_STARTED:
            waits.append((e.seq, e.data["name"], encode_value(e.data["match"]), e.data.get("timeout_at")))
        elif kind in (j.EVENT_RECEIVED, j.WAIT_TIMED_OUT):
            ended.append(e.data["op"])
        elif kind == j.CHILD_STARTED:
            started.append(e.data["run_id"])
        elif kind == j.CHILD_COMPLETED:
            finished.append(e.data["run_id"])
        elif kind == j.CANCEL_REQUESTED:
            cancel_delivered = True
        else:
            terminal = True
    conn = tx.conn
    if waits:
        # The wait sees events positioned after every event committed so far (the
        # shared events lock, taken before the fence, keeps that set from moving).
        await conn.execute(
            "INSERT INTO waits (run_id, seq, name, match, after, timeout_at)"
            " SELECT $1, s, n, m, (SELECT COALESCE(max(position), 0) FROM events), t"
            " FROM unnest($2::int[], $3::text[], $4::bytea[], $5::float8[]) AS u(s, n, m, t)",
            run_id,
            *map(list, zip(*waits, strict=True)),
        )
    if ended:
        await conn.execute("DELETE FROM waits WHERE run_id = $1 AND seq = ANY($2::int[])", run_id, ended)
    if started:
        await conn.execute(
            "INSERT INTO awaited_children (run_id, child_id) SELECT $1, c FROM unnest($2::text[]) AS c"
            " ON CONFLICT DO NOTHING",
            run_id,
            started,
        )
    if finished:
        await conn.execute(
            "DELETE FROM awaited_children WHERE run_id = $1 AND child_id = ANY($2::text[])", run_id, finished
        )
    if cancel_delivered:
        await conn.execute("UPDATE runs SET cancel_delivered = true WHERE run_id = $1", run_id)
    if terminal:
        # Only a journaled end closes waits: a run parked as failed keeps them for a retry.
        await conn.execute(
            "WITH w AS (DELETE FROM waits WHERE run_id = $1), c AS (DELETE FROM cancel_on WHERE run_id = $1)"
            " DELETE FROM awaited_children WHERE run_id = $1",
            run_id,
        )


async def update_run(tx: Tx, run_id: str, prepared: PreparedUpdate, at: float, parent_id: str | None) -> None:
    """Apply a run update: children, status, wake time, result, error, release; notices."""
    update = prepared.update
    for child in prepared.children:
        await create_run(tx, child)
    sets = ["updated_at = $2"]
    params: list[Any] = [run_id, at]
    if update.status is not None:
        due = update.wake_at
        if update.status == "suspended" and await _has_news(tx.conn, run_id):
            # News that reached the owner while it was suspending must not be lost.
            due = at if due is None else min(at, due)
        params += [update.status, due]
        sets += [f"status = ${len(params) - 1}", f"wake_at = ${len(params)}"]
        if update.status in TERMINAL_STATUSES:
            sets.append("ended_at = clock_timestamp()")
    for column, value in (("result", prepared.result), ("error", prepared.error)):
        if value is not None:
            params.append(value)
            sets.append(f"{column} = ${len(params)}")
    if update.release:
        sets.append("owner = NULL")
    status, wake_at, gated = one_row(
        await tx.conn.fetchrow(
            f"UPDATE runs SET {', '.join(sets)} WHERE run_id = $1"
            " RETURNING status, wake_at, concurrency_key IS NOT NULL",
            *params,
        )
    )
    if gated and status != "running":
        tx.notice("ready", run_id)  # a concurrency slot is free: a waiting run may go
    if status in TERMINAL_STATUSES:
        tx.notice("finished", run_id)
        if parent_id is not None:
            await wake(tx, [parent_id], at)
    elif (status == "suspended" and wake_at is not None) or status == "pending":
        tx.notice("ready", run_id)


async def _has_news(conn: Conn, run_id: str) -> bool:
    """Whether an undelivered cancellation, a finished child or a matching event waits for the run."""
    cancel_or_child = await conn.fetchval(
        "SELECT (cancel_requested AND NOT cancel_delivered) OR EXISTS ("
        " SELECT 1 FROM awaited_children a JOIN runs c ON c.run_id = a.child_id"
        f" WHERE a.run_id = $1 AND c.status IN {TERMINAL_SQL}) FROM runs WHERE run_id = $1",
        run_id,
    )
    if cancel_or_child:
        return True
    waits = await conn.fetch("SELECT name, match, after, timeout_at FROM waits WHERE run_id = $1", run_id)
    for name, match, after, timeout_at in waits:
        if await first_match(conn, name, decode_value(match), after, timeout_at) is not None:
            return True
    return False


async def wake(tx: Tx, run_ids: list[str], at: float) -> None:
    """Make suspended runs due by ``at``; tell a running run's owner it has news.

    The UPDATE locks each row, which is what orders a wake-up against a
    concurrent suspension (see the module docstring).
    """
    rows = await tx.conn.fetch(
        "UPDATE runs SET wake_at = CASE WHEN status = 'suspended' THEN LEAST(wake_at, $2) ELSE wake_at END"
        " WHERE run_id = ANY($1::text[]) RETURNING run_id, status",
        sorted(run_ids),
        at,
    )
    for run_id, status in rows:
        if status == "suspended":
            tx.notice("ready", run_id)
        elif status == "running":
            tx.notice("news", run_id)
