"""What the PostgreSQL store's methods stand on: the pool, retries, shielded writes, notices.

- **Retries.** A call that fails because the connection broke or the server
  is restarting (``TRANSIENT``) is tried again on a new connection, with a
  backoff from 50 ms to 1 s, for up to ``retry`` seconds; then it raises
  ``StoreError``.
- **Writes that may have landed.** A write whose COMMIT was cut off may or may
  not have landed. Each write stores a random op id in the rows it fences on,
  so before trying again the store looks for it: found, the write landed.
- **Writes run to their end.** A caller that is cancelled (a worker halting)
  stops waiting, but its write goes on, landed or not, rather than be cut off
  mid-statement; ``unregister_worker`` and ``close`` wait for the writes in
  flight, so a halted worker writes nothing after it is unregistered.
- **Stranded runs.** A write that failed for good makes its driver drop the
  run; the store releases it as soon as the database answers again, rather
  than leave it "running" under a live worker until that worker's lease ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from replay.errors import LeaseLost, StoreError
from replay.stores import _postgres_writes as writes
from replay.stores._postgres_batch import Batcher
from replay.stores._postgres_control import TRANSIENT, Control
from replay.stores._postgres_reads import Conn
from replay.stores.base import Notice, Store

__all__ = ("Plumbing", "keep_session")

T = TypeVar("T")
log = logging.getLogger("replay.stores.postgres")


class Plumbing(Store):
    """The pool, the retries and the writes of ``PostgresStore``. See the module docstring.

    Args:
        schema: the PostgreSQL schema of the store's tables.
        retry: how long a call keeps trying while the database is unreachable (seconds).
    """

    def __init__(self, schema: str, retry: float) -> None:
        super().__init__()
        self.schema = schema
        self.retry = retry
        digest = hashlib.blake2b(schema.encode(), digest_size=8).digest()
        channel = f"replay:{schema}"
        #: The NOTIFY channel of the schema (a digest when the name is too long for one).
        self.channel = channel if len(channel.encode()) < 64 else f"replay:{digest.hex()}"
        self._events_lock = int.from_bytes(digest, "big", signed=True)
        self._rng = random.Random()
        #: This store's id in its NOTIFY payloads, so that it skips its own.
        self.origin = f"{self._rng.getrandbits(64):016x}"
        self._pool: asyncpg.Pool | None = None
        self._control: Control | None = None
        self._writes: set[asyncio.Future[Any]] = set()
        self._batcher = Batcher(self._write, self._strand)

    def _tx(self, conn: Conn) -> writes.Tx:
        return writes.Tx(conn, self.channel, self.origin, self._events_lock, self._rng.getrandbits(63))

    def _deliver(self, notices: Sequence[Notice]) -> None:
        for notice in notices:
            self.notify(notice.kind, notice.run_id)

    def _open_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"{self!r} is not open: call `await store.open()` first")
        return self._pool

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()``, again after each transient failure, for up to ``retry`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry
        delay = 0.05
        while True:
            try:
                return await attempt()
            except TRANSIENT as exc:
                # Only the first failure of a call is worth a warning: a restart fails
                # every call in flight a few times over.
                report = log.warning if delay == 0.05 else log.debug
                if self._pool is not None and not isinstance(exc, asyncpg.TransactionRollbackError):
                    await self._pool.expire_connections()  # after a restart, every idle connection is dead
                if loop.time() + delay > deadline:
                    raise StoreError(f"{what} failed: the database is unreachable ({exc!r})") from exc
                report("%s failed (%r); retrying for up to %.0f s", what, exc, deadline - loop.time())
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _read(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        async def attempt() -> T:
            async with self._open_pool().acquire() as conn:
                return await fn(conn, *args)

        return await self._retrying(f"reading the PostgreSQL store ({fn.__name__})", attempt)

    async def _write(
        self,
        what: str,
        fn: Callable[[writes.Tx], Awaitable[T]],
        *,
        transaction: bool = True,
        landed: Callable[[Conn, int], Awaitable[T | None]] | None = None,
        failed: Callable[[list[int]], None] | None = None,
    ) -> T:
        """Run ``fn`` in a transaction, retried; notices reach listeners after the COMMIT.

        ``landed(conn, op_id)`` tells, after a failure that may have come after
        the COMMIT, whether the write landed (returning its result) or not (None).
        ``failed(op_ids)`` hears of a write that failed for good (not ``LeaseLost``).
        """
        tries: list[writes.Tx] = []

        async def attempt() -> T:
            async with self._open_pool().acquire() as conn:
                if tries and landed is not None:
                    done = await landed(conn, tries[-1].op_id)
                    if done is not None:
                        self._deliver(tries[-1].notices)
                        return done
                tx = self._tx(conn)
                tries.append(tx)
                if transaction:
                    try:
                        async with conn.transaction():
                            result = await fn(tx)
                    except asyncpg.InterfaceError as exc:
                        cause = exc.__context__
                        if not isinstance(cause, TRANSIENT):
                            raise
                        # The connection died inside the transaction; rolling back on it
                        # then failed too, and that error ("the connection is closed")
                        # would hide the transient one, which is tried again.
                        raise cause from None
                else:
                    result = await fn(tx)
            self._deliver(tx.notices)
            return result

        async def write() -> T:
            try:
                try:
                    return await self._retrying(f"{what} in the PostgreSQL store", attempt)
                except asyncpg.PostgresError as exc:
                    raise StoreError(f"the PostgreSQL store refused {what}: {exc}") from exc
            except LeaseLost:
                raise
            except StoreError:
                if failed is not None:
                    failed([tx.op_id for tx in tries])
                raise

        # A caller that is cancelled (a worker halting) stops waiting, but the write
        # goes on to its end, landed or not, rather than be cut off mid-statement:
        # ``unregister_worker`` waits for it, so a halted worker writes nothing after.
        task = asyncio.ensure_future(write())
        self._writes.add(task)
        task.add_done_callback(self._write_done)
        return await asyncio.shield(task)

    def _write_done(self, task: asyncio.Future[Any]) -> None:
        self._writes.discard(task)
        if not task.cancelled():
            task.exception()  # its caller may have gone: the error is not news

    async def _settle(self) -> None:
        """Wait for the writes in flight, even those whose callers went away."""
        await self._batcher.settle()
        if self._writes:
            await asyncio.wait(set(self._writes))

    def _strand(self, run_id: str, token: int) -> None:
        """A write for this run failed for good: its driver drops it, so release it.

        The run is released as soon as the database answers again, rather than
        left "running" under a live worker until that worker's lease ends.
        """
        if self._control is not None:
            self._control.stranded_runs.add((run_id, token))
            self._control.kick()


async def keep_session(_conn: Conn) -> None:
    """Hand a connection back to the pool as it is.

    asyncpg's default resets every connection it gets back (``RESET ALL``,
    ``UNLISTEN *``...): one more round trip per call. The store's pool
    connections change no session state (no LISTEN, no SET, only
    transaction-level advisory locks), and an open transaction is still rolled
    back by asyncpg before this is called.
    """
