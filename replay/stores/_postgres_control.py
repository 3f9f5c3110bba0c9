"""The PostgreSQL store's own connection: LISTEN for notices, heartbeats for its workers.

One connection per store, outside the pool, so that neither a busy pool nor a
slow query can delay a heartbeat. On it the store

- LISTENs on its schema's channel and hands every notification that another
  store sent (``origin kind run_id``) to this process's listeners;
- renews the leases of the workers registered through it, every third of the
  lease, and releases the runs whose writes failed for good (``stranded``);
- reconnects after any failure, with a backoff from 50 ms to 2 s. Notifications
  sent while it was away are lost, so after a reconnect it catches up: every run
  that ended since its last heartbeat (less a minute, for transactions that were
  still committing then) is announced as ``finished``, so that ``result()``
  calls wake. A worker's own poll covers the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from replay.stores._postgres_claims import heartbeat, register, release_stranded
from replay.stores._postgres_reads import Conn
from replay.stores._postgres_writes import Tx
from replay.stores.base import Notice

__all__ = ("TRANSIENT", "Control")

log = logging.getLogger("replay.stores.postgres")

#: Errors after which the same operation may succeed on a new connection: the
#: server went away or is starting, the network failed, a deadlock or a
#: serialization failure rolled the transaction back. asyncpg raises its
#: InternalClientError when the server ended an idle pooled connection's session
#: (pg_terminate_backend, a restart) and the next query finds it half-closed.
TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
    OSError,
    TimeoutError,
)
#: How far back, in seconds, the catch-up after a reconnect looks past the last heartbeat.
CATCH_UP_MARGIN = 60.0
_KINDS = frozenset({"ready", "news", "finished", "event"})


class Control:
    """The store's LISTEN and heartbeat connection. See the module docstring.

    Args:
        connect: opens a connection to the store's database and schema.
        channel: the NOTIFY channel.
        origin: this store's id, in the payloads it sends.
        lease: the lease, in seconds.
        make_tx: wraps a connection into a write (for releasing stranded runs).
        deliver: hands notices to this process's listeners.
    """

    def __init__(
        self,
        *,
        connect: Callable[[], Awaitable[asyncpg.Connection[asyncpg.Record]]],
        channel: str,
        origin: str,
        lease: float,
        make_tx: Callable[[Conn], Tx],
        deliver: Callable[[Sequence[Notice]], None],
    ) -> None:
        self._connect = connect
        self.channel = channel
        self.origin = origin
        self.lease = lease
        self._make_tx = make_tx
        self._deliver = deliver
        #: The workers registered through this store: their leases are renewed here.
        self.workers: dict[str, None] = {}
        #: (run id, token) of runs a driver dropped after a write that failed for good.
        self.stranded_runs: set[tuple[str, int]] = set()
        #: Op ids of claims whose outcome was never learned.
        self.stranded_claims: set[int] = set()
        #: Set while the connection is up and LISTENing.
        self.connected = asyncio.Event()
        #: The server process id of the connection's session, while connected.
        self.session: int | None = None
        self._kick = asyncio.Event()
        self._seen: float | None = None  # the database's time at the last heartbeat while listening
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connect in the background, and stay connected until ``stop``."""
        self._task = asyncio.create_task(self._run(), name=f"replay-postgres-control:{self.channel}")

    async def stop(self) -> None:
        """Close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def kick(self) -> None:
        """Beat now rather than at the next third of the lease (something changed)."""
        self._kick.set()

    # -- the connection's life ------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.05
        while True:
            conn: Conn | None = None
            try:
                conn = await self._connect()
                conn.add_termination_listener(lambda _conn: self._kick.set())
                await conn.add_listener(self.channel, self._on_notify)
                seen = self._seen
                await self._beat(conn)
                if seen is not None:
                    await self._catch_up(conn, seen)
                self.session = conn.get_server_pid()
                self.connected.set()
                delay = 0.05
                while not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.lease / 3):
                            await self._kick.wait()
                    self._kick.clear()
                    if not conn.is_closed():
                        await self._beat(conn)
                log.warning("replay's PostgreSQL control connection closed; reconnecting")
            except asyncio.CancelledError:
                raise
            except TRANSIENT as exc:
                log.warning("replay's PostgreSQL control connection failed (%s); reconnecting", exc)
            except Exception:
                log.exception("replay's PostgreSQL control connection failed; reconnecting")
            finally:
                self.connected.clear()
                self.session = None
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _beat(self, conn: Conn) -> None:
        """Renew the leases, release stranded runs; a stuck network fails it after 2/3 of the lease.

        Not sooner: the timeout also runs while this process's event loop stalls
        (a GC pause, a step blocking the loop), and firing it then would end this
        store's session, which marks its workers dead at once, although their
        leases would have survived the stall (up to two thirds of the lease).
        """
        async with asyncio.timeout(self.lease * 2 / 3):
            now, lost = await heartbeat(conn, list(self.workers), self.origin, self.lease)
            self._seen = now
            for worker_id in lost:
                # Not renewed: its row is gone (this process was away so long that
                # another store deleted it) or expired, or another store took the id.
                # Registered again unless the id is another live worker's: left
                # unrenewed, every claim, its own too, would take its hot runs away.
                # (Those that were taken over meanwhile stay taken: their tokens moved on.)
                if await register(conn, worker_id, self.origin, self.lease, conn.get_server_pid()):
                    log.warning("worker %s was away past its lease; it is registered again", worker_id)
                else:
                    log.warning("worker %s lost its lease to another store that registered its id", worker_id)
            if self.stranded_runs or self.stranded_claims:
                runs, claims = list(self.stranded_runs), list(self.stranded_claims)
                tx = self._make_tx(conn)
                async with conn.transaction():
                    await release_stranded(tx, runs, claims)
                self.stranded_runs.difference_update(runs)
                self.stranded_claims.difference_update(claims)
                self._deliver(tx.notices)

    async def _catch_up(self, conn: Conn, seen: float) -> None:
        rows = await conn.fetch(
            "SELECT run_id FROM runs WHERE ended_at >= to_timestamp($1::float8)", seen - CATCH_UP_MARGIN
        )
        self._deliver([Notice("finished", row[0]) for row in rows])

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        origin, _, rest = str(payload).partition(" ")
        kind, _, run_id = rest.partition(" ")
        if origin != self.origin and kind in _KINDS:
            self._deliver([Notice(kind, run_id)])  # type: ignore[arg-type]
