"""Group commit for the PostgreSQL store's plain appends: many runs' steps, one statement.

A plain append (entries that change nothing but the journal: a step's
completion, say) is queued. While one batch is being written, the next one
fills up; each batch is ONE statement, so ONE round trip and ONE commit for
every run in it. With 200 runs stepping at once that is a few dozen appends
per commit; with one run, a batch of one is written at once, with no wait.

The statement fences each append as a lone one would (``UPDATE runs ... WHERE
token = $token AND seq = $last``) and inserts the entries of exactly the runs
it fenced, so each append lands whole or not at all, and one stale token fails
its own append only. A run appears at most once in a batch: a second append
for it waits for the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import attrs

from replay.journal import Entry
from replay.stores._postgres_reads import Conn
from replay.stores._postgres_writes import Tx, refused

__all__ = ("Batcher", "Plain")

#: The most appends one statement takes.
MAX_BATCH = 500

_APPEND_MANY = """
WITH u AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::int[], $4::int[]) AS u(run_id, token, prev, last)
), f AS (
    UPDATE runs r SET seq = u.last, op_id = $5 FROM u
    WHERE r.run_id = u.run_id AND r.token = u.token AND r.owner IS NOT NULL AND r.seq = u.prev
    RETURNING r.run_id
), i AS (
    INSERT INTO journal (run_id, seq, entry)
    SELECT e.run_id, e.seq, e.entry FROM unnest($6::text[], $7::int[], $8::bytea[]) AS e(run_id, seq, entry)
    WHERE e.run_id IN (SELECT run_id FROM f)
)
SELECT run_id FROM f
"""


@attrs.define(eq=False)
class Plain:
    """A plain append waiting for its batch."""

    run_id: str
    token: int
    entries: Sequence[Entry]
    blobs: list[bytes]
    done: asyncio.Future[None]


#: What a batch's write is handed: the statement to run, how to tell it landed,
#: and what to do for runs whose batch failed for good.
Write = Callable[..., Awaitable[dict[str, BaseException | None]]]


class Batcher:
    """Queues plain appends and writes them a batch at a time (see the module docstring).

    Args:
        write: the store's retried, shielded write (``PostgresStore._write``).
        stranded: hears of each (run id, token) whose batch failed for good.
    """

    def __init__(self, write: Write, stranded: Callable[[str, int], None]) -> None:
        self._write = write
        self._stranded = stranded
        self._queue: list[Plain] = []
        self._writer: asyncio.Task[None] | None = None

    async def append(self, run_id: str, token: int, entries: Sequence[Entry], blobs: list[bytes]) -> None:
        """Queue one append and wait until its batch is written.

        Raises:
            LeaseLost: ``token`` is stale; nothing was written for this run.
            ReplayInternalError: the entries do not continue the journal.
            StoreError: the database stayed unreachable.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(Plain(run_id, token, entries, blobs, done))
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._drain())
        # A caller that is cancelled stops waiting; its append stays in its batch.
        await asyncio.shield(done)

    async def settle(self) -> None:
        """Wait until every queued append is written."""
        while self._writer is not None:
            await asyncio.wait({self._writer})

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch: dict[str, Plain] = {}
                later: list[Plain] = []
                for plain in self._queue:
                    if plain.run_id in batch or len(batch) >= MAX_BATCH:
                        later.append(plain)
                    else:
                        batch[plain.run_id] = plain
                self._queue = later
                await self._write_batch(list(batch.values()))
        finally:
            self._writer = None

    async def _write_batch(self, batch: list[Plain]) -> None:
        def failed(_op_ids: list[int]) -> None:
            for plain in batch:
                self._stranded(plain.run_id, plain.token)

        try:
            outcomes = await self._write(
                "appending",
                lambda tx: _append_many(tx, batch),
                transaction=False,
                landed=lambda conn, op_id: _landed(conn, op_id, batch),
                failed=failed,
            )
        except Exception as exc:  # noqa: BLE001 - every caller of the batch hears it
            for plain in batch:
                if not plain.done.done():
                    plain.done.set_exception(exc)
                    plain.done.exception()  # retrieved: a caller that went away does not hear it
            return
        except BaseException:
            for plain in batch:
                plain.done.cancel()
            raise
        for plain in batch:
            error = outcomes[plain.run_id]
            if plain.done.done():
                continue
            if error is None:
                plain.done.set_result(None)
            else:
                plain.done.set_exception(error)
                plain.done.exception()


async def _append_many(tx: Tx, batch: list[Plain]) -> dict[str, BaseException | None]:
    fenced = {
        row[0]
        for row in await tx.conn.fetch(
            _APPEND_MANY,
            [p.run_id for p in batch],
            [p.token for p in batch],
            [p.entries[0].seq - 1 for p in batch],
            [p.entries[-1].seq for p in batch],
            tx.op_id,
            [p.run_id for p in batch for _ in p.entries],
            [e.seq for p in batch for e in p.entries],
            [blob for p in batch for blob in p.blobs],
        )
    }
    return await _outcomes(tx.conn, batch, fenced)


async def _landed(conn: Conn, op_id: int, batch: list[Plain]) -> dict[str, BaseException | None] | None:
    """The outcomes of a batch whose reply was lost, if it landed: it is one statement."""
    rows = await conn.fetch(
        "SELECT run_id FROM runs WHERE op_id = $1 AND run_id = ANY($2::text[])",
        op_id,
        [p.run_id for p in batch],
    )
    return await _outcomes(conn, batch, {row[0] for row in rows}) if rows else None


async def _outcomes(conn: Conn, batch: list[Plain], fenced: set[str]) -> dict[str, BaseException | None]:
    """None for each append that landed; for the others, why not."""
    out: dict[str, BaseException | None] = {}
    for plain in batch:
        if plain.run_id in fenced:
            out[plain.run_id] = None
            continue
        try:
            await refused(conn, plain.run_id, plain.token, plain.entries[0].seq)
        except Exception as exc:  # noqa: BLE001 - refused always raises: LeaseLost or a seq error
            out[plain.run_id] = exc
    return out
