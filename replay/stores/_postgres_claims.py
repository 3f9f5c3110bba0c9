"""The PostgreSQL store's claims and leases: who owns which run, and who is alive.

A worker is alive while its row in ``workers`` has ``expires_at`` in the future,
by the DATABASE's clock (``clock_timestamp()``), so the clocks of the workers'
machines never enter into it. The store that registered a worker renews its
lease (``heartbeat``) every third of the lease. A ``running`` run whose owner is
not alive (its lease expired, it unregistered, or it never registered) can be
claimed by any worker; every claim hands out a new token, which fences the old
owner's appends (see ``_postgres_writes``).

A worker is also dead, before its lease runs out, once the database session
of its store's LISTEN connection is gone from the server it was registered on:
when a process dies, however it dies, its kernel closes its sockets and the
server ends their sessions at once. Only a session on the same server run
counts (``pg_postmaster_start_time``): after a restart or a failover every
session is new, and the leases decide. A paused process, or one cut off by the
network, keeps its session open on the server: its lease decides too. Matching
on the process id alone errs only one way: should a new session get the dead
one's pid, the worker merely waits out its lease.

Claims use ``FOR UPDATE SKIP LOCKED``: two workers claiming at once never wait
for each other and never get the same run.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence

import attrs

from replay.journal import decode_carried
from replay.stores._postgres_reads import Conn
from replay.stores._postgres_writes import Tx
from replay.stores.base import Claim

__all__ = ("claim", "claim_gated", "claimed", "heartbeat", "register", "release_stranded")

# Candidates, in the order every store claims them (``replay.stores.base``): runs
# whose owner is gone, by priority then age; due suspended runs, by wake time;
# pending runs that are due, by priority then age. Each CTE stops after $3 rows.
# A run under a concurrency key whose slots all look taken is left out (the
# count is re-checked under a lock before a slot is given: ``claim_gated``).
_CANDIDATES = """
WITH me AS (
    INSERT INTO workers (worker_id, instance, heartbeat_at, expires_at)
    VALUES ($4, '', '-infinity', '-infinity') ON CONFLICT (worker_id) DO NOTHING
), dead AS (
    SELECT worker_id FROM workers
    WHERE expires_at <= clock_timestamp() OR (
        server_start = pg_postmaster_start_time()
        AND backend_pid NOT IN (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL))
), orphans AS (
    SELECT run_id, 0 AS cat, -priority::float8 AS k, n, NULL::text AS key, 0 AS key_limit FROM runs
    WHERE status = 'running' AND workflow = ANY($1::text[])
        AND (owner IS NULL OR owner IN (SELECT worker_id FROM dead))
    ORDER BY priority DESC, n LIMIT $3 FOR UPDATE SKIP LOCKED
), due AS (
    SELECT run_id, 1 AS cat, wake_at AS k, n, concurrency_key AS key, concurrency_limit AS key_limit
    FROM runs
    WHERE status = 'suspended' AND wake_at <= $2 AND workflow = ANY($1::text[]) AND (
        concurrency_key IS NULL OR concurrency_limit > (SELECT count(*) FROM runs x
            WHERE x.status = 'running' AND x.concurrency_key = runs.concurrency_key))
    ORDER BY wake_at, n LIMIT $3 FOR UPDATE SKIP LOCKED
), fresh AS (
    SELECT run_id, 2 AS cat, -priority::float8 AS k, n, concurrency_key AS key, concurrency_limit AS key_limit
    FROM runs
    WHERE status = 'pending' AND (wake_at IS NULL OR wake_at <= $2) AND workflow = ANY($1::text[]) AND (
        concurrency_key IS NULL OR concurrency_limit > (SELECT count(*) FROM runs x
            WHERE x.status = 'running' AND x.concurrency_key = runs.concurrency_key))
    ORDER BY priority DESC, n LIMIT $3 FOR UPDATE SKIP LOCKED
), ranked AS (
    SELECT run_id, key, key_limit, row_number() OVER (ORDER BY cat, k, n) AS r
    FROM (SELECT * FROM orphans UNION ALL SELECT * FROM due UNION ALL SELECT * FROM fresh) c
)"""

# The claim itself, in ONE statement when no candidate within reach is under a
# concurrency key: it takes the candidates before the first such one, and says
# (the last row) whether it stopped there, so that ``claim_gated`` goes on.
_CLAIM = (
    _CANDIDATES
    + """, stop AS (
    SELECT COALESCE(min(r), 9223372036854775807) AS s FROM ranked WHERE key IS NOT NULL
), picked AS (
    SELECT run_id, r FROM ranked, stop WHERE r < stop.s AND r <= $3
), claimed AS (
    UPDATE runs u SET token = u.token + 1, owner = $4, status = 'running', wake_at = NULL,
        updated_at = $2, op_id = $5
    FROM picked WHERE u.run_id = picked.run_id
    RETURNING picked.r, u.run_id, u.workflow, u.token, u.cancel_requested
)
SELECT r, run_id, workflow, token, cancel_requested FROM claimed
UNION ALL SELECT NULL, NULL, NULL, NULL, s <= $3 FROM stop
"""
)


async def claim(tx: Tx, worker_id: str, workflows: Sequence[str], now: float, limit: int) -> list[Claim]:
    """Own up to ``limit`` claimable runs of these workflows, in order; ONE statement if it can.

    A claimer that never registered gets a worker row that is already expired,
    so that its runs can be taken over at once, as the contract wants.
    """
    names = list(dict.fromkeys(workflows))
    if limit <= 0 or not names:
        return []
    rows = await tx.conn.fetch(_CLAIM, names, now, limit, worker_id, tx.op_id)
    gated = rows[-1][4]
    ordered = sorted(rows[:-1], key=lambda row: int(row[0]))
    got = [Claim(run_id, wf, token, cancel) for _, run_id, wf, token, cancel in ordered]
    if gated and len(got) < limit:
        async with tx.conn.transaction():
            taken = {c.run_id for c in got}
            got += await claim_gated(tx, worker_id, names, now, limit - len(got), taken)
    return await with_journals(tx.conn, got)


async def with_journals(conn: Conn, got: list[Claim]) -> list[Claim]:
    """The claims, each carrying its run's journal: one round trip for all, not one a run.

    Read after the claim committed, in a statement of its own. Until this worker's
    lease runs out nobody else appends to these runs, so the journals are what the
    claim saw. If it ran out meanwhile and another worker took a run and appended,
    the journal read runs past that: every entry in it is committed all the same
    (journal before deliver holds), and this driver's first append fails its fence.
    A journal that cannot be decoded is carried as None (``decode_carried``).
    """
    if not got:
        return got
    rows = await conn.fetch(
        "SELECT run_id, entry FROM journal WHERE run_id = ANY($1::text[]) ORDER BY run_id, seq",
        [c.run_id for c in got],
    )
    journals = {
        run_id: decode_carried([row[1] for row in group])
        for run_id, group in itertools.groupby(rows, key=operator.itemgetter(0))
    }
    return [attrs.evolve(c, journal=journals.get(c.run_id, [])) for c in got]


async def claim_gated(
    tx: Tx, worker_id: str, names: list[str], now: float, limit: int, taken: set[str]
) -> list[Claim]:
    """Claim in order, giving concurrency slots under a lock per key (inside a transaction).

    ``taken`` are the runs this claim already took (they now look orphaned if
    the claimer never registered).

    The count of a key's running runs is read only once its lock is held, by a
    statement that starts after it: two claimers can never both take the last slot.
    """
    conn = tx.conn
    window = 2 * limit + 50  # room for candidates passed over because their key filled up
    rows = await conn.fetch(
        _CANDIDATES + " SELECT run_id, key, key_limit FROM ranked ORDER BY r", names, now, window, worker_id
    )
    keys = sorted({key for _, key, _ in rows if key is not None})
    for key in keys:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{tx.channel}:slots:{key}"
        )
    counted = await conn.fetch(
        "SELECT concurrency_key, count(*) FROM runs WHERE status = 'running'"
        " AND concurrency_key = ANY($1::text[]) GROUP BY concurrency_key",
        keys,
    )
    running: dict[str, int] = {key: count for key, count in counted}
    picked: list[str] = []
    for run_id, key, key_limit in rows:
        if len(picked) >= limit:
            break
        if run_id in taken:
            continue
        if key is not None:
            if running.get(key, 0) >= key_limit:
                continue  # waits for a slot
            running[key] = running.get(key, 0) + 1
        picked.append(run_id)
    claimed = await conn.fetch(
        "UPDATE runs SET token = token + 1, owner = $2, status = 'running', wake_at = NULL,"
        " updated_at = $3, op_id = $4 WHERE run_id = ANY($1::text[])"
        " RETURNING run_id, workflow, token, cancel_requested",
        picked,
        worker_id,
        now,
        tx.op_id,
    )
    order = {run_id: i for i, run_id in enumerate(picked)}
    return sorted((Claim(*row) for row in claimed), key=lambda c: order[c.run_id])


async def claimed(conn: Conn, worker_id: str, op_id: int) -> list[Claim]:
    """The runs a claim with ``op_id`` took, if it committed (its caller lost the reply)."""
    rows = await conn.fetch(
        "SELECT run_id, workflow, token, cancel_requested FROM runs"
        " WHERE owner = $1 AND op_id = $2 AND status = 'running'",
        worker_id,
        op_id,
    )
    return [Claim(run_id, workflow, token, cancel) for run_id, workflow, token, cancel in rows]


async def register(conn: Conn, worker_id: str, instance: str, lease: float, session: int | None) -> bool:
    """Start ``worker_id``'s lease; False if a live worker of another store holds that id.

    ``session`` is the process id of the store's LISTEN session, if it is connected.
    """
    row = await conn.fetchval(
        "INSERT INTO workers (worker_id, instance, heartbeat_at, expires_at, backend_pid, server_start)"
        " VALUES ($1, $2, clock_timestamp(), clock_timestamp() + make_interval(secs => $3), $4,"
        " pg_postmaster_start_time())"
        " ON CONFLICT (worker_id) DO UPDATE SET instance = EXCLUDED.instance,"
        " heartbeat_at = EXCLUDED.heartbeat_at, expires_at = EXCLUDED.expires_at,"
        " backend_pid = EXCLUDED.backend_pid, server_start = EXCLUDED.server_start"
        " WHERE workers.instance = EXCLUDED.instance OR workers.expires_at <= clock_timestamp()"
        " RETURNING worker_id",
        worker_id,
        instance,
        lease,
        session,
    )
    return row is not None


async def heartbeat(
    conn: Conn, workers: Sequence[str], instance: str, lease: float
) -> tuple[float, list[str]]:
    """Renew the leases of this store's workers; returns the database's time and the lost ids.

    A worker is lost when another store registered its id after its lease ran out.
    Workers dead for a long while and owning no running run are deleted on the way
    (through the index of running runs by owner: this runs at every heartbeat).
    """
    rows = await conn.fetch(
        "WITH beat AS ("
        " UPDATE workers SET heartbeat_at = clock_timestamp(),"
        " expires_at = clock_timestamp() + make_interval(secs => $3),"
        " backend_pid = pg_backend_pid(), server_start = pg_postmaster_start_time()"
        " WHERE worker_id = ANY($1::text[]) AND instance = $2 RETURNING worker_id"
        "), reaped AS ("
        " DELETE FROM workers w WHERE expires_at < clock_timestamp() - make_interval(secs => $3 * 100)"
        " AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.owner = w.worker_id AND r.status = 'running')"
        ") SELECT extract(epoch FROM clock_timestamp())::float8, worker_id FROM beat"
        " UNION ALL SELECT extract(epoch FROM clock_timestamp())::float8, NULL",
        list(workers),
        instance,
        lease,
    )
    renewed = {row[1] for row in rows}
    return float(rows[0][0]), [w for w in workers if w not in renewed]


async def release_stranded(tx: Tx, runs: Sequence[tuple[str, int]], claims: Sequence[int]) -> None:
    """Give up runs whose writes failed for good, so they need not wait out the lease.

    ``runs`` are (run id, token) pairs a driver dropped after a write it could not
    finish; ``claims`` are the op ids of claims whose outcome was never learned.
    A run is released only if the token (or the claim) is still the latest.
    """
    rows = await tx.conn.fetch(
        "UPDATE runs r SET owner = NULL FROM unnest($1::text[], $2::bigint[]) AS s(run_id, token)"
        " WHERE r.run_id = s.run_id AND r.token = s.token AND r.status = 'running'"
        " AND r.owner IS NOT NULL RETURNING r.run_id",
        [run_id for run_id, _ in runs],
        [token for _, token in runs],
    )
    if claims:
        rows += await tx.conn.fetch(
            "UPDATE runs SET owner = NULL WHERE op_id = ANY($1::bigint[]) AND status = 'running'"
            " AND owner IS NOT NULL RETURNING run_id",
            list(claims),
        )
    for (run_id,) in rows:
        tx.notice("ready", run_id)
    await tx.publish()
