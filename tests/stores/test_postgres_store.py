"""What the PostgreSQL store adds to the contract: URLs, schemas, leases, NOTIFY, lost connections.

Two stores on one schema stand in for two processes: each has its own pool, its
own LISTEN connection and its own heartbeats. Nothing sleeps for a fixed time:
a wait is on an event with a timeout, or a condition polled with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import pytest

import replay
from replay import journal as j
from replay.errors import LeaseLost, SchemaError, StoreError
from replay.journal import Entry
from replay.stores import _postgres_batch, _postgres_claims, _postgres_control, open_store
from replay.stores._postgres_schema import SCHEMA_VERSION
from replay.stores.base import EventRecord, Notice
from replay.stores.postgres import PostgresStore, parse_url
from replay.testing._conformance_kit import T0, new_run

WF = "wf"
DEADLINE = 30.0
T = TypeVar("T")


async def eventually(condition: Callable[[], Awaitable[T | None]], what: str) -> T:
    deadline = time.monotonic() + DEADLINE
    while True:
        got = await condition()
        if got is not None and got != []:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)  # a poll interval, not a wait for something to happen


async def heard(seen: list[Notice], notice: Notice, event: asyncio.Event) -> None:
    async with asyncio.timeout(DEADLINE):
        while notice not in seen:
            event.clear()
            await event.wait()


class Ear:
    """Records the notices a store's listeners hear, and wakes a waiter on each."""

    def __init__(self, store: PostgresStore) -> None:
        self.seen: list[Notice] = []
        self.event = asyncio.Event()
        store.subscribe(self._hear)

    def _hear(self, notice: Notice) -> None:
        self.seen.append(notice)
        self.event.set()

    async def hears(self, kind: str, run_id: str) -> None:
        await heard(self.seen, Notice(kind, run_id), self.event)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def opened(a: PostgresStore, b: PostgresStore) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one schema, as two processes would have; closed on the way out."""
    await a.open()
    try:
        await b.open()
        try:
            yield a, b
        finally:
            await b.close()
    finally:
        await a.close()


@pytest.fixture
async def two(postgres_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    async with opened(PostgresStore(postgres_url), PostgresStore(postgres_url)) as stores:
        yield stores


async def admin(url: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(parse_url(url)[0])
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


# -- URLs -----------------------------------------------------------------------------------


def test_url_options_are_replays_the_rest_goes_to_asyncpg() -> None:
    dsn, options = parse_url("postgres://u:p@db:5433/app?lease=2.5&schema=jobs&pool=4&sslmode=disable")
    assert dsn == "postgresql://u:p@db:5433/app?sslmode=disable"
    assert (options["lease"], options["schema"], options["pool"]) == (2.5, "jobs", 4)
    assert parse_url("postgresql://db/app")[1]["lease"] == 5.0
    for bad in ("lease=0", "lease=soon", "pool=-1", "schema="):
        with pytest.raises(ValueError, match=r"must be|empty"):
            parse_url(f"postgresql://db/app?{bad}")
    with pytest.raises(ValueError, match="PostgreSQL store URL"):
        parse_url("sqlite:///x.db")


def test_open_store_knows_both_schemes() -> None:
    for scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        store = open_store(f"{scheme}://db/app?lease=7")
        assert isinstance(store, PostgresStore) and store.lease == 7.0


def test_without_asyncpg_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    for name in [
        m for m in sys.modules if m.startswith("replay.stores._postgres") or m == "replay.stores.postgres"
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'replay\[postgresql\]'"):
        open_store("postgresql://db/app")


# -- schemas --------------------------------------------------------------------------------


async def test_a_newer_schema_is_refused_and_left_as_it_was(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    await store.close()
    schema = store.schema
    await admin(postgres_url, f'UPDATE "{schema}".replay_schema SET version = 99')
    with pytest.raises(SchemaError, match="newer replay"):
        await PostgresStore(postgres_url).open()
    [row] = await admin(postgres_url, f'SELECT version FROM "{schema}".replay_schema')
    assert row[0] == 99


async def test_a_schema_that_is_not_replays_is_refused_and_left_as_it_was(postgres_url: str) -> None:
    schema = parse_url(postgres_url)[1]["schema"]
    await admin(postgres_url, f'CREATE SCHEMA "{schema}"')
    await admin(postgres_url, f'CREATE TABLE "{schema}".orders (id int)')
    with pytest.raises(SchemaError, match="not replay's"):
        await PostgresStore(postgres_url).open()
    tables = await admin(
        postgres_url, "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
    )
    assert [row[0] for row in tables] == ["orders"]


async def test_workers_starting_at_once_migrate_once(postgres_url: str) -> None:
    stores = [PostgresStore(postgres_url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        [row] = await admin(postgres_url, f'SELECT version FROM "{stores[0].schema}".replay_schema')
        assert row[0] == SCHEMA_VERSION
    finally:
        await asyncio.gather(*(s.close() for s in stores))


# -- claims and leases ----------------------------------------------------------------------


async def test_concurrent_claims_never_overlap(two: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = two
    for i in range(40):
        await a.create_run(new_run(f"r{i}", workflow=WF))
    await a.register_worker("a")
    await b.register_worker("b")
    got: dict[str, set[str]] = {"a": set(), "b": set()}
    for _ in range(10):
        ca, cb = await asyncio.gather(a.claim("a", [WF], T0, 3), b.claim("b", [WF], T0, 2))
        got["a"] |= {c.run_id for c in ca}
        got["b"] |= {c.run_id for c in cb}
    assert not got["a"] & got["b"]
    assert got["a"] | got["b"] == {f"r{i}" for i in range(40)}
    assert await b.claim("b", [WF], T0 + 1e9, 100) == []  # a is alive: its runs stay its own


async def test_a_worker_past_its_lease_is_taken_over_and_fenced(postgres_url: str) -> None:
    async with opened(PostgresStore(postgres_url, lease=1), PostgresStore(postgres_url, lease=1)) as (a, b):
        await a.register_worker("a")
        await b.register_worker("b")
        await a.create_run(new_run("r1", workflow=WF))
        [claim] = await a.claim("a", [WF], T0, 10)
        assert await b.claim("b", [WF], T0, 10) == []
        assert a._control is not None
        # a pauses, as a process stopped by SIGSTOP does: no more heartbeats, but its
        # connections stay open, so only its lease running out gives it away.
        a._control.workers.clear()
        [taken] = await eventually(lambda: b.claim("b", [WF], T0, 10), "the lease of a to run out")
        assert taken.run_id == "r1" and taken.token > claim.token
        with pytest.raises(LeaseLost):
            await a.append("r1", claim.token, [Entry(2, j.SIDE_EFFECT, T0, {"name": "x", "value": 1})])
        await b.append("r1", taken.token, [Entry(2, j.SIDE_EFFECT, T0, {"name": "x", "value": 2})])
        assert [e.data.get("value") for e in await b.read_journal("r1")] == [None, 2]


async def test_a_worker_whose_process_died_is_taken_over_before_its_lease_ends(postgres_url: str) -> None:
    async with opened(PostgresStore(postgres_url, lease=600), PostgresStore(postgres_url)) as (a, b):
        await a.register_worker("a")
        await b.register_worker("b")
        await a.create_run(new_run("r1", workflow=WF))
        [claim] = await a.claim("a", [WF], T0, 10)
        assert await b.claim("b", [WF], T0, 10) == []
        await a.close()  # its sessions end, as a killed process's do; its row still says "a", alive
        [taken] = await eventually(lambda: b.claim("b", [WF], T0, 10), "the server to end a's session")
        assert taken.run_id == "r1" and taken.token > claim.token


async def test_a_worker_restarted_under_its_id_gets_its_dead_runs_back(postgres_url: str) -> None:
    async with opened(PostgresStore(postgres_url, lease=1), PostgresStore(postgres_url, lease=1)) as (a, b):
        await a.register_worker("stable")
        await a.create_run(new_run("r1", workflow=WF))
        [claim] = await a.claim("stable", [WF], T0, 10)
        await a.close()  # dies; its lease runs out, the run's row still says "stable"

        async def registered() -> bool | None:
            try:
                await b.register_worker("stable")  # the same id, as a restarted pod's
            except StoreError:
                return None
            return True

        await eventually(registered, "the lease of the dead worker to run out")
        [again] = await b.claim("stable", [WF], T0, 10)
        assert again.run_id == "r1" and again.token > claim.token


async def test_a_worker_whose_row_was_reaped_while_it_was_away_registers_again(postgres_url: str) -> None:
    # Paused for over a hundred leases, a worker owning no run has its row deleted by
    # another store's heartbeat. Back, it must register again: left unrenewed, every
    # claim (its own too) would take its new runs away from it, again and again.
    schema = parse_url(postgres_url)[1]["schema"]
    async with opened(PostgresStore(postgres_url), PostgresStore(postgres_url)) as (a, b):
        await a.register_worker("a")
        await b.register_worker("b")
        await admin(postgres_url, f"DELETE FROM {schema}.workers WHERE worker_id = 'a'")  # reaped
        await a.create_run(new_run("r1", workflow=WF))
        [claim] = await a.claim("a", [WF], T0, 10)  # its claim makes a row, already expired
        assert a._control is not None
        a._control.kick()  # its next heartbeat, now

        async def alive_again() -> bool | None:
            rows = await admin(
                postgres_url,
                f"SELECT 1 FROM {schema}.workers WHERE worker_id = 'a' AND expires_at > clock_timestamp()",
            )
            return True if rows else None

        await eventually(alive_again, "a to register again")
        assert await b.claim("b", [WF], T0, 10) == []  # a is alive: r1 stays a's
        assert await a.claim("a", [WF], T0, 10) == []  # nor does a take r1 from itself
        await a.append("r1", claim.token, [Entry(2, j.SIDE_EFFECT, T0, {"name": "x", "value": 1})])


async def test_a_live_worker_id_cannot_be_taken_by_another_store(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two
    await a.register_worker("w")
    with pytest.raises(StoreError, match="in use"):
        await b.register_worker("w")
    await a.unregister_worker("w")
    await b.register_worker("w")


# -- notices across processes ---------------------------------------------------------------


async def test_notices_reach_the_other_stores_and_not_their_sender(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two
    ear_a, ear_b = Ear(a), Ear(b)
    await a.create_run(new_run("r1", workflow=WF))
    await ear_b.hears("ready", "r1")
    await a.register_worker("a")
    [claim] = await a.claim("a", [WF], T0, 10)
    await a.append("r1", claim.token, [Entry(2, j.WAIT_STARTED, T0, {"name": "go", "match": {}})])
    await b.send_event(replay.stores.base.EventRecord("e1", "go", {}, T0))
    await ear_a.hears("news", "r1")
    update = replay.stores.base.RunUpdate(status="completed", result=1, release=True)
    await a.append("r1", claim.token, [Entry(3, j.WORKFLOW_COMPLETED, T0, {"result": 1})], update)
    await ear_b.hears("finished", "r1")
    assert ear_a.seen == [
        Notice("ready", "r1"),
        Notice("news", "r1"),
        Notice("event", "e1"),  # for the workers' event triggers
        Notice("finished", "r1"),
    ]


async def test_result_in_a_client_with_no_worker_hears_of_the_end(postgres_url: str) -> None:
    app = replay.App("client", store=postgres_url)
    worker_app = replay.App("client", store=postgres_url)  # its own store: another process, as it were

    for each in (app, worker_app):

        @each.workflow(name="double")
        async def double(ctx: replay.Context, n: int) -> int:
            return n * 2

    try:
        async with worker_app.worker():
            run = await app.start(app.workflows["double"], 21, run_id="d1")
            # Well under the 30 s re-read: the end arrived as a notice.
            assert await run.result(timeout=10) == 42
    finally:
        await app.close()
        await worker_app.close()


# -- lost connections -----------------------------------------------------------------------


async def test_the_store_reconnects_after_its_connections_are_killed(postgres_url: str) -> None:
    name = f"replay-test-{uuid.uuid4().hex[:8]}"
    async with opened(
        PostgresStore(f"{postgres_url}&application_name={name}"), PostgresStore(postgres_url)
    ) as (a, b):
        ear = Ear(a)
        await a.create_run(new_run("r1", workflow=WF))
        await a.register_worker("a")
        [claim] = await a.claim("a", [WF], T0, 10)
        killed = await admin(
            postgres_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            name,
        )
        assert len(killed) >= 2  # the pool's and the LISTEN connection
        await a.append("r1", claim.token, [Entry(2, j.SIDE_EFFECT, T0, {"name": "x", "value": 1})])
        assert len(await a.read_journal("r1")) == 2
        probes: list[str] = []

        async def listening_again() -> bool | None:
            probes.append(f"probe-{len(probes)}")  # notices sent while it was away are lost
            await b.create_run(new_run(probes[-1], workflow="probe"))
            return True if any(n.run_id.startswith("probe-") for n in ear.seen) else None

        await eventually(listening_again, "a to LISTEN again")


async def test_a_connection_killed_inside_a_transaction_is_tried_again(postgres_url: str) -> None:
    # The store's transaction waits on a lock held here; its session is then killed.
    # Rolling back on the dead connection fails too, and that error must not hide
    # the lost connection: the write is tried again on a new one, and lands once.
    name = f"replay-test-{uuid.uuid4().hex[:8]}"
    dsn, _ = parse_url(postgres_url)
    schema = parse_url(postgres_url)[1]["schema"]
    async with opened(
        PostgresStore(f"{postgres_url}&application_name={name}"), PostgresStore(postgres_url)
    ) as (a, _b):
        await a.create_run(new_run("r1", workflow=WF))
        holder = await asyncpg.connect(dsn)
        try:
            for lock, call in (
                (
                    f"SELECT pg_advisory_xact_lock({a._events_lock})",
                    lambda: a.send_event(EventRecord("e1", "go", {}, T0)),
                ),
                (
                    f"SELECT 1 FROM {schema}.runs WHERE run_id = 'r1' FOR UPDATE",
                    lambda: a.request_cancel("r1", T0),
                ),
            ):
                held = holder.transaction()
                await held.start()
                await holder.execute(lock)
                write = asyncio.ensure_future(call())

                async def waiting() -> list[Any] | None:
                    return await admin(
                        postgres_url,
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = $1 AND wait_event_type = 'Lock'",
                        name,
                    )

                await eventually(waiting, "the store's transaction to wait on the lock, and be killed")
                await held.rollback()
                async with asyncio.timeout(DEADLINE):
                    await write
        finally:
            await holder.close()
        assert [e.id for e in await a.events_after(0, ["go"], 10)] == ["e1"]
        info = await a.get_run("r1")
        assert info is not None and info.cancel_requested


async def test_a_session_idle_in_a_transaction_is_ended_and_its_locks_released(postgres_url: str) -> None:
    # A process paused (or cut off) in the middle of a transaction must not hold its
    # locks for as long as the pause: the server ends its session after two leases.
    schema = parse_url(postgres_url)[1]["schema"]
    store = PostgresStore(f"{postgres_url}&lease=0.5")
    await store.open()
    try:
        await store.create_run(new_run("r1", workflow=WF))
        async with store._open_pool().acquire() as conn:
            stalled = conn.transaction()
            await stalled.start()
            await conn.execute("SELECT 1 FROM runs WHERE run_id = 'r1' FOR UPDATE")  # and then nothing

            async def released() -> bool | None:
                free = await admin(postgres_url, f"SELECT 1 FROM {schema}.runs FOR UPDATE SKIP LOCKED")
                return True if free else None

            await eventually(released, "the server to end the idle session")
            # Its session is gone: whatever asyncpg makes of that, the commit fails.
            with pytest.raises(
                (
                    asyncpg.PostgresConnectionError,
                    asyncpg.InterfaceError,
                    asyncpg.exceptions.InternalClientError,
                )
            ):
                await stalled.commit()
    finally:
        await store.close()


async def test_an_event_loop_stall_during_a_heartbeat_does_not_make_a_live_worker_dead(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stall of half the lease (a GC pause, a step blocking the loop) while a heartbeat
    # is on the wire: the reply waits in the socket meanwhile. The store must not take
    # it for a stuck connection and end its session, which would mark its worker dead.
    lease = 3.0  # the old timeout, a third of it, is shorter than the stall; two thirds is not
    beats: list[float] = []
    real = _postgres_control.heartbeat

    async def beat_with_a_stall(conn: Any, *args: Any) -> Any:
        beat = asyncio.ensure_future(real(conn, *args))
        await asyncio.sleep(0)  # the query is sent
        if not beats:
            time.sleep(lease / 2)  # the event loop blocked: the stall under test, not a wait
        result = await beat
        beats.append(result[0])
        return result

    async with opened(PostgresStore(f"{postgres_url}&lease={lease}"), PostgresStore(postgres_url)) as (a, b):
        await a.register_worker("a")
        await b.register_worker("b")
        await a.create_run(new_run("r1", workflow=WF))
        [claim] = await a.claim("a", [WF], T0, 10)
        control = a._control
        assert control is not None
        session = control.session
        monkeypatch.setattr(_postgres_control, "heartbeat", beat_with_a_stall)

        async def beaten_twice() -> bool | None:
            control.kick()
            return True if len(beats) >= 2 else None  # the stalled beat, and one after it

        await eventually(beaten_twice, "a's stalled heartbeat and the next")
        assert control.session == session  # the same connection, never torn down
        assert await b.claim("b", [WF], T0, 10) == []  # a is alive: r1 stays a's
        await a.append("r1", claim.token, [Entry(2, j.SIDE_EFFECT, T0, {"name": "x", "value": 1})])


async def test_after_a_reconnect_runs_that_ended_meanwhile_are_announced(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two
    ear = Ear(a)
    await b.create_run(new_run("r1", workflow=WF))
    await b.register_worker("b")
    [claim] = await b.claim("b", [WF], T0, 10)
    assert a._control is not None
    await a._control.stop()  # a's LISTEN connection is down: the NOTIFY below is lost to it
    update = replay.stores.base.RunUpdate(status="completed", result=1, release=True)
    await b.append("r1", claim.token, [Entry(2, j.WORKFLOW_COMPLETED, T0, {"result": 1})], update)
    a._control.start()
    await ear.hears("finished", "r1")


async def test_appends_of_many_runs_share_a_statement_and_a_stale_one_fails_alone(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, _ = two
    for i in range(20):
        await a.create_run(new_run(f"r{i}", workflow=WF))
    await a.register_worker("a")
    tokens = {c.run_id: c.token for c in await a.claim("a", [WF], T0, 100)}
    tokens["r7"] -= 1  # as a worker that lost r7 would hold it

    async def append(run_id: str) -> object:
        entry = Entry(2, j.SIDE_EFFECT, T0, {"name": "x", "value": run_id})
        try:
            await a.append(run_id, tokens[run_id], [entry])
        except LeaseLost as exc:
            return exc
        return None

    outcomes = dict(zip(tokens, await asyncio.gather(*map(append, tokens)), strict=True))
    assert {r for r, o in outcomes.items() if o is not None} == {"r7"}
    for run_id in tokens:
        assert len(await a.read_journal(run_id)) == (1 if run_id == "r7" else 2)


async def test_a_write_whose_reply_was_lost_is_found_not_repeated(
    two: tuple[PostgresStore, PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = two
    await a.create_run(new_run("r1", workflow=WF))
    await a.register_worker("a")

    def lose_the_first_reply(fn: Any) -> Any:
        calls = []

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = await fn(*args, **kwargs)
            calls.append(1)
            if len(calls) == 1:  # it committed, but the caller hears only that the connection died
                raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
            return result

        return wrapper

    monkeypatch.setattr(_postgres_claims, "claim", lose_the_first_reply(_postgres_claims.claim))
    monkeypatch.setattr(_postgres_batch, "_append_many", lose_the_first_reply(_postgres_batch._append_many))
    [claim] = await a.claim("a", [WF], T0, 10)
    await a.append("r1", claim.token, [Entry(2, j.SIDE_EFFECT, T0, {"name": "x", "value": 1})])
    assert [e.seq for e in await a.read_journal("r1")] == [1, 2]


async def test_a_run_whose_write_failed_for_good_is_released(postgres_url: str, monkeypatch: Any) -> None:
    async with opened(PostgresStore(f"{postgres_url}&retry=0.2"), PostgresStore(postgres_url)) as (a, b):
        await a.create_run(new_run("r1", workflow=WF))
        await a.register_worker("a")
        await b.register_worker("b")
        [claim] = await a.claim("a", [WF], T0, 10)

        async def unreachable(*args: Any) -> None:
            raise ConnectionRefusedError(111, "Connect call failed")

        with monkeypatch.context() as patch:
            patch.setattr(_postgres_batch, "_append_many", unreachable)
            with pytest.raises(StoreError, match="unreachable"):
                await a.append("r1", claim.token, [Entry(2, j.SIDE_EFFECT, T0, {})])
        # a is alive and heartbeating, yet the run it dropped is released to others.
        [taken] = await eventually(lambda: b.claim("b", [WF], T0, 10), "the run to be released")
        assert taken.run_id == "r1"
