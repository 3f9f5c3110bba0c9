"""``postgresql://...``: many workers on many machines, one PostgreSQL database.

Point every worker and client at the same URL and add processes or machines;
nothing else changes. ``postgres://`` works too. Options in the URL's query
string are replay's own and are removed before the rest goes to asyncpg:

- ``lease`` (seconds, default 5): how long a worker owns its runs without a
  heartbeat. Its store renews it every third of that. A worker that hung, was
  paused or lost the network for longer has its runs taken over by the others.
  Five seconds lets a worker stall for over three seconds (a loaded machine, a
  slow disk, a database failover) without being thought dead; a false takeover
  is safe (fencing, below) but re-runs the steps that were in flight. A worker
  whose process DIED does not wait for its lease: the server ends its sessions
  at once, and the others see that (``_postgres_claims``).
- ``schema`` (default ``replay``): the PostgreSQL schema replay's tables live
  in. Two deployments, or tests, can share a database with schemas of their own.
- ``pool`` (default 10): the most connections the store opens for its queries,
  besides its one LISTEN and heartbeat connection.
- ``retry`` (seconds, default 60): how long a call keeps retrying while the
  database is unreachable (restarting, failing over) before it raises
  ``StoreError``.
- ``timeout`` (seconds, default 30): the longest one statement may take.

How it works:

- **Claims** use ``FOR UPDATE SKIP LOCKED``, in one statement: workers claiming
  at once never block each other nor get the same run (``_postgres_claims``).
- **Fencing.** Every claim gives the run a new token and every append updates
  the run's row ``WHERE token = $token`` in the same transaction as its entries,
  so a worker that was paused past its lease gets ``LeaseLost`` and writes
  nothing; the worker then drops the run (``_postgres_writes``).
- **Wake-ups** go through ``LISTEN/NOTIFY``: new runs, due suspensions, events,
  news for running runs and finished runs are sent with ``pg_notify`` in the
  transaction that made them, so other processes hear of them when it commits.
  Workers also poll every ``poll_interval`` (1 s), and arm a timer for the next
  ``wake_at``, so timers fire on time in every process (``_postgres_control``).
- **Failures.** A call that fails because the connection broke or the server
  is restarting is retried on a new connection for up to ``retry`` seconds; a
  write whose COMMIT may have landed is checked before it is retried; a write
  goes on to its end even when its caller is cancelled (``_postgres_plumbing``).
- **Group commit.** Plain appends of many runs share one statement and one
  commit (``_postgres_batch``).
- **Schema.** Versioned migrations, applied in one transaction under an
  advisory lock; a schema from a newer replay, or one that is not replay's,
  raises ``SchemaError`` and is left unchanged (``_postgres_schema``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import urllib.parse
from collections.abc import Sequence
from typing import Any, TypeVar

import asyncpg
import attrs

from replay.errors import ReplayInternalError, StoreError
from replay.journal import Entry, encode_entry, encode_value
from replay.stores import _postgres_claims as claims
from replay.stores import _postgres_events as events
from replay.stores import _postgres_reads as reads
from replay.stores import _postgres_writes as writes
from replay.stores._postgres_control import Control
from replay.stores._postgres_flow import existing
from replay.stores._postgres_plumbing import Plumbing, keep_session
from replay.stores._postgres_reads import Conn
from replay.stores._postgres_schema import prepare, quote
from replay.stores._prepared import PreparedRun, PreparedUpdate
from replay.stores.base import NO_FLOW, Claim, EventRecord, NewRun, RunInfo, RunUpdate

__all__ = ("PostgresStore", "parse_url")

T = TypeVar("T")
log = logging.getLogger("replay.stores.postgres")

_OPTIONS = {"lease": 5.0, "pool": 10, "retry": 60.0, "timeout": 30.0}


def parse_url(url: str) -> tuple[str, dict[str, Any]]:
    """Split a store URL into the DSN for asyncpg and replay's own options.

    Raises:
        ValueError: not a PostgreSQL URL, or an option is not a positive number.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ValueError(f"a PostgreSQL store URL is postgresql://user@host:port/database, got {url!r}")
    rest, _, query = rest.partition("?")
    kept: list[tuple[str, str]] = []
    options: dict[str, Any] = {"schema": "replay", **_OPTIONS}
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if key == "schema":
            if not value:
                raise ValueError(f"the schema in {url!r} is empty")
            options["schema"] = value
        elif key in _OPTIONS:
            try:
                number = type(_OPTIONS[key])(value)
            except ValueError:
                number = 0
            if number <= 0:
                raise ValueError(f"{key} in {url!r} must be a positive number, got {value!r}")
            options[key] = number
        else:
            kept.append((key, value))  # asyncpg's own: sslmode, application_name...
    dsn = f"postgresql://{rest}" + (f"?{urllib.parse.urlencode(kept)}" if kept else "")
    return dsn, options


class PostgresStore(Plumbing):
    """A store in a PostgreSQL database, shared by many worker processes. See the module docstring.

    Args:
        url: ``postgresql://user:password@host:port/database?lease=5&schema=replay``.
        lease: overrides the URL's ``lease`` (seconds).
        schema: overrides the URL's ``schema``.
    """

    poll_interval: float | None = 1.0
    notices_span_processes = True

    def __init__(self, url: str, *, lease: float | None = None, schema: str | None = None) -> None:
        dsn, options = parse_url(url)
        super().__init__(schema if schema is not None else options["schema"], options["retry"])
        self.url = url
        self.dsn = dsn
        self.lease: float = lease if lease is not None else options["lease"]
        self.pool_size: int = options["pool"]
        self.timeout: float = options["timeout"]

    def __repr__(self) -> str:
        return f"<PostgresStore {self.schema!r}>"

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, migrate the schema and start listening.

        Raises:
            SchemaError: the schema is not replay's or is newer than this replay.
            StoreError: the database stayed unreachable for ``retry`` seconds.
        """
        if self._pool is not None:
            return
        settings = {
            "search_path": quote(self.schema),
            # A process paused, or cut off, in the middle of a transaction would hold its
            # row locks (runs nobody can take over) and the events lock (every send_event
            # waits) for as long as the pause, or the ~2 h of the server's TCP keepalive
            # defaults. The server ends such a session after two leases instead; the
            # write is then tried again, landed or not, when the process is back.
            "idle_in_transaction_session_timeout": str(math.ceil(self.lease * 2000)),
            "tcp_keepalives_idle": str(math.ceil(self.lease)),
            "tcp_keepalives_interval": str(math.ceil(self.lease / 3)),
            "tcp_keepalives_count": "3",
        }
        if "application_name=" not in self.dsn:
            settings["application_name"] = "replay"  # what pg_stat_activity shows
        pool = await self._retrying(
            "connecting",
            lambda: asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                command_timeout=self.timeout,
                server_settings=settings,
                reset=keep_session,
            ),
        )
        try:
            async with pool.acquire() as conn:
                await prepare(conn, self.schema)
            control = Control(
                connect=lambda: asyncpg.connect(self.dsn, timeout=self.lease, server_settings=settings),
                channel=self.channel,
                origin=self.origin,
                lease=self.lease,
                make_tx=self._tx,
                deliver=self._deliver,
            )
            control.start()
            try:
                async with asyncio.timeout(self.retry):
                    await control.connected.wait()
            except TimeoutError:
                await control.stop()
                raise StoreError(f"{self!r}: could not LISTEN within {self.retry} s") from None
        except BaseException:
            await pool.close()
            raise
        self._pool, self._control = pool, control

    async def close(self) -> None:
        """Stop listening and heartbeating, and close every connection."""
        await self._settle()
        control, self._control = self._control, None
        pool, self._pool = self._pool, None
        if control is not None:
            await control.stop()
        if pool is not None:
            try:
                async with asyncio.timeout(self.timeout):
                    await pool.close()
            except TimeoutError:
                pool.terminate()

    # -- clients -----------------------------------------------------------------------

    async def create_run(self, run: NewRun) -> tuple[RunInfo, bool]:
        """Create a run and its first entries in one transaction, unless it exists."""
        prepared = PreparedRun.of(run)

        async def created(conn: Conn, op_id: int) -> tuple[RunInfo, bool] | None:
            mine = await conn.fetchval("SELECT op_id = $2 FROM runs WHERE run_id = $1", run.run_id, op_id)
            return (await _get(conn, run.run_id), True) if mine else None

        if not run.journal and run.flow == NO_FLOW:

            async def fast(tx: writes.Tx) -> tuple[RunInfo, bool]:
                made = await writes.fast_create(tx, prepared)
                return made if made is not None else (await _get(tx.conn, run.run_id), False)

            return await self._write("creating a run", fast, transaction=False, landed=created)

        async def create(tx: writes.Tx) -> tuple[RunInfo, bool]:
            made = await writes.create_run(tx, prepared)
            await tx.publish()
            return made

        return await self._write("creating a run", create, landed=created)

    async def get_run(self, run_id: str) -> RunInfo | None:
        """The run with that id, if any."""
        return await self._read(reads.get_run, run_id)

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[RunInfo]:
        """Runs, newest first, filtered by workflow, status and creation time."""
        return await self._read(reads.list_runs, workflow, status, since, until, limit)

    async def read_journal(self, run_id: str) -> list[Entry]:
        """A run's journal, in order."""
        return await self._read(reads.read_journal, run_id)

    async def request_cancel(self, run_id: str, at: float) -> RunInfo | None:
        """Flag a run for cancellation and wake it."""
        return await self._write("cancelling a run", lambda tx: events.request_cancel(tx, run_id, at))

    async def requeue(self, run_id: str, at: float) -> RunInfo | None:
        """Put a failed run back to pending."""
        return await self._write("requeueing a run", lambda tx: events.requeue(tx, run_id, at))

    async def send_event(self, event: EventRecord, starts: Sequence[NewRun] = ()) -> tuple[EventRecord, bool]:
        """Store an event (idempotent on its id), wake and cancel runs, create the runs it starts."""
        data = encode_value(event.data, f"the data of event {event.name!r}")
        prepared = tuple(PreparedRun.of(run) for run in starts)

        async def sent(conn: Conn, _op_id: int) -> tuple[EventRecord, bool] | None:
            row = await conn.fetchrow("SELECT position, name, data, at FROM events WHERE id = $1", event.id)
            if row is None or (row[1], bytes(row[2]), row[3]) != (event.name, data, event.at):
                return None  # not there, or another send's: run again (and find it, not new)
            return attrs.evolve(event, position=row[0]), True

        return await self._write(
            "sending an event", lambda tx: events.send_event(tx, event, data, prepared), landed=sent
        )

    async def events_after(self, position: int, names: Sequence[str], limit: int) -> list[EventRecord]:
        """Events with these names after ``position``, in order."""
        return await self._read(reads.events_after, position, tuple(names), limit)

    async def last_event_position(self) -> int:
        """The latest event's position."""
        return await self._read(reads.last_event_position)

    async def get_schedule(self, name: str) -> float | None:
        """The schedule's cursor."""
        return await self._read(reads.get_schedule, name)

    async def advance_schedule(
        self, name: str, previous: float | None, tick: float, run: NewRun | None
    ) -> bool:
        """Move the schedule's cursor and create the tick's run, unless another worker did."""
        prepared = None if run is None else PreparedRun.of(run)

        async def moved(conn: Conn, _op_id: int) -> bool | None:
            # A lost reply: the cursor at ``tick`` (and the run there) means it landed.
            at = await conn.fetchval("SELECT tick FROM schedules WHERE name = $1", name)
            done = at == tick and (
                run is None
                or await conn.fetchval("SELECT 1 FROM runs WHERE run_id = $1", run.run_id) is not None
            )
            return True if done else None

        return await self._write(
            "moving a schedule",
            lambda tx: events.advance_schedule(tx, name, previous, tick, prepared),
            landed=moved,
        )

    # -- workers -----------------------------------------------------------------------

    async def register_worker(self, worker_id: str) -> None:
        """Start the worker's lease; this store renews it until ``unregister_worker``.

        Raises:
            StoreError: a live worker registered through another store has that id.
        """
        control = self._control
        if control is None:
            raise StoreError(f"{self!r} is not open: call `await store.open()` first")
        known = worker_id in control.workers
        if not await self._read(claims.register, worker_id, self.origin, self.lease, control.session):
            raise StoreError(f"worker id {worker_id!r} is in use by a live worker")
        control.workers[worker_id] = None
        if not known:
            # Runs still owned by that id belonged to a worker whose lease ran out (a
            # restart under a stable id, say): released, to be claimed again.
            try:
                await self._write("registering a worker", lambda tx: events.release_runs(tx, worker_id))
            except BaseException:
                control.workers.pop(worker_id, None)  # not registered: a retry releases them again
                raise

    async def unregister_worker(self, worker_id: str) -> None:
        """Release the worker's runs (claimable at once) and end its lease."""
        if self._control is not None:
            self._control.workers.pop(worker_id, None)
        await self._settle()  # what the worker had begun lands (or fails) before its runs go
        await self._write("unregistering a worker", lambda tx: events.unregister(tx, worker_id))

    async def claim(self, worker_id: str, workflows: Sequence[str], now: float, limit: int) -> list[Claim]:
        """Own up to ``limit`` claimable runs of these workflows."""

        async def claimed(conn: Conn, op_id: int) -> list[Claim] | None:
            return await claims.claimed(conn, worker_id, op_id) or None

        def failed(op_ids: list[int]) -> None:
            if self._control is not None:
                self._control.stranded_claims.update(op_ids)  # released once the database is back
                self._control.kick()

        return await self._write(
            "claiming runs",
            lambda tx: claims.claim(tx, worker_id, workflows, now, limit),
            transaction=False,
            landed=claimed,
            failed=failed,
        )

    async def append(
        self, run_id: str, token: int, entries: Sequence[Entry], update: RunUpdate | None = None
    ) -> None:
        """Append entries and apply ``update`` in one transaction, fenced by ``token``.

        Raises:
            LeaseLost: ``token`` is not the run's current token; nothing was written.
            ReplayInternalError: the entries do not continue the journal.
            StoreError: the database stayed unreachable; the run is released
                (made claimable) as soon as it is back.
        """
        entries = tuple(entries)
        _check_seqs(run_id, entries)
        blobs = [encode_entry(e) for e in entries]  # may raise: nothing sent
        prepared = None if update is None else PreparedUpdate.of(update)

        if prepared is None and entries and not any(e.kind in writes.TRACKED_KINDS for e in entries):
            await self._batcher.append(run_id, token, entries, blobs)  # the common case: group commit
            return

        async def appended(conn: Conn, op_id: int) -> bool | None:
            found = await conn.fetchval("SELECT 1 FROM runs WHERE run_id = $1 AND op_id = $2", run_id, op_id)
            return None if found is None else True

        await self._write(
            "appending",
            lambda tx: writes.append(tx, run_id, token, entries, blobs, prepared),
            landed=appended,
            failed=lambda _op_ids: self._strand(run_id, token),
        )

    async def poll_waits(self, run_id: str) -> list[tuple[int, EventRecord]]:
        """For each open wait of the run, the first matching event, if one arrived."""
        return await self._read(reads.poll_waits, run_id)

    async def runs_with_news(self, worker_id: str) -> list[str]:
        """Running runs of ``worker_id`` with an undelivered cancel, a finished child or a matching event."""
        return await self._read(reads.runs_with_news, worker_id)

    async def next_wake_at(self, workflows: Sequence[str]) -> float | None:
        """The earliest ``wake_at`` among suspended or delayed pending runs of these workflows."""
        return await self._read(reads.next_wake_at, tuple(workflows))


async def _get(conn: Conn, run_id: str) -> RunInfo:
    info = await existing(conn, run_id)
    if info is None:
        raise ReplayInternalError(f"run {run_id!r} neither inserted nor found")
    return info


def _check_seqs(run_id: str, entries: Sequence[Entry]) -> None:
    """The entries must follow each other; that they continue the journal is checked in SQL."""
    for before, after in itertools.pairwise(entries):
        if after.seq != before.seq + 1:
            raise ReplayInternalError(f"append to {run_id!r}: seq {after.seq}, expected {before.seq + 1}")
