"""The PostgreSQL store's schema: its tables, its versioned migrations, and the checks on open.

All of replay's tables live in one PostgreSQL schema (``replay`` unless the URL
says ``?schema=...``), so replay can share a database with the application and
two deployments can share one database without seeing each other.

Opening migrates in ONE transaction under a transaction-level advisory lock
taken on the schema's name: when ten workers start at once, one migrates and
the others wait for its commit, then find nothing to do. Before anything is
written the schema is checked: a schema that holds tables but no
``replay_schema`` table belongs to someone else, and one whose version is newer
than this release knows was written by a newer replay. Both raise
``SchemaError`` and leave the database exactly as it was.
"""

from __future__ import annotations

from typing import Final

from replay.errors import SchemaError
from replay.stores._postgres_reads import Conn

__all__ = ("SCHEMA_VERSION", "prepare")

#: MIGRATIONS[v] takes a schema at version v to v + 1. Statements are separated by
#: ";\n" and run one by one inside the migration's transaction.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE replay_schema (version integer NOT NULL);
    INSERT INTO replay_schema (version) VALUES (0);
    CREATE TABLE runs (
        run_id text PRIMARY KEY,
        -- creation order, for list_runs and claims among equal created_at
        n bigint GENERATED ALWAYS AS IDENTITY,
        workflow text NOT NULL,
        status text NOT NULL CHECK (status IN
            ('pending', 'running', 'suspended', 'completed', 'failed', 'cancelled')),
        args bytea NOT NULL,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        result bytea,
        error bytea,
        parent_id text,
        wake_at double precision,
        cancel_requested boolean NOT NULL DEFAULT false,
        cancel_delivered boolean NOT NULL DEFAULT false,
        -- the lease: a fresh token per claim; every append names it
        token bigint NOT NULL DEFAULT 0,
        owner text,
        -- the seq of the journal's last entry: appends continue it in the fencing UPDATE
        seq integer NOT NULL DEFAULT 0,
        -- the id of the last write that fenced on this row (an append or a claim), so a
        -- write whose COMMIT was cut off can tell on retry whether it landed
        op_id bigint,
        -- the database's clock when the run ended: LISTEN catches up from it
        ended_at timestamptz
    );
    CREATE INDEX runs_pending ON runs (created_at, n) WHERE status = 'pending';
    CREATE INDEX runs_due ON runs (wake_at) WHERE status = 'suspended';
    CREATE INDEX runs_running ON runs (owner) WHERE status = 'running';
    CREATE INDEX runs_created ON runs (created_at, n);
    CREATE INDEX runs_ended ON runs (ended_at) WHERE ended_at IS NOT NULL;
    CREATE TABLE journal (
        run_id text NOT NULL,
        seq integer NOT NULL,
        entry bytea NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    CREATE TABLE events (
        position bigint PRIMARY KEY,  -- given by send_event, in commit order
        id text NOT NULL UNIQUE,
        name text NOT NULL,
        data bytea NOT NULL,
        at double precision NOT NULL
    );
    CREATE INDEX events_name ON events (name, position);
    CREATE TABLE waits (
        run_id text NOT NULL,
        seq integer NOT NULL,
        name text NOT NULL,
        match bytea NOT NULL,
        after bigint NOT NULL,
        timeout_at double precision,
        PRIMARY KEY (run_id, seq)
    );
    CREATE INDEX waits_name ON waits (name);
    CREATE TABLE awaited_children (
        run_id text NOT NULL,
        child_id text NOT NULL,
        PRIMARY KEY (run_id, child_id)
    );
    CREATE TABLE workers (
        worker_id text PRIMARY KEY,
        -- which store instance registered it: a live id cannot be taken by another
        instance text NOT NULL,
        heartbeat_at timestamptz NOT NULL,
        -- the database's clock: past it, the worker's running runs may be taken over
        expires_at timestamptz NOT NULL,
        -- the session of the store's LISTEN connection, and the server it is on: when
        -- that session is gone from that server, so is the worker's process
        backend_pid integer,
        server_start timestamptz
    )
    """,
    """
    ALTER TABLE runs ADD COLUMN priority integer NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN concurrency_key text;
    ALTER TABLE runs ADD COLUMN concurrency_limit integer;
    ALTER TABLE runs ADD COLUMN throttle_key text;
    ALTER TABLE runs ADD COLUMN begin_at double precision;
    ALTER TABLE runs ADD COLUMN rate_key text;
    ALTER TABLE runs ADD COLUMN debounce_key text;
    DROP INDEX runs_pending;
    CREATE INDEX runs_pending ON runs (priority DESC, n) WHERE status = 'pending';
    CREATE INDEX runs_pending_due ON runs (wake_at) WHERE status = 'pending' AND wake_at IS NOT NULL;
    CREATE INDEX runs_concurrency ON runs (concurrency_key)
        WHERE status = 'running' AND concurrency_key IS NOT NULL;
    CREATE INDEX runs_throttle ON runs (throttle_key, begin_at) WHERE throttle_key IS NOT NULL;
    CREATE INDEX runs_rate ON runs (rate_key, created_at) WHERE rate_key IS NOT NULL;
    CREATE INDEX runs_debounce ON runs (debounce_key, n)
        WHERE status = 'pending' AND debounce_key IS NOT NULL;
    CREATE TABLE cancel_on (
        run_id text NOT NULL,
        name text NOT NULL,
        match bytea NOT NULL,
        after bigint NOT NULL
    );
    CREATE INDEX cancel_on_name ON cancel_on (name);
    CREATE INDEX cancel_on_run ON cancel_on (run_id);
    CREATE TABLE run_aliases (
        alias text PRIMARY KEY,
        run_id text NOT NULL
    );
    CREATE TABLE schedules (
        name text PRIMARY KEY,
        tick double precision NOT NULL
    )
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

# pg_advisory_xact_lock's key space is shared by the whole database: this prefix keeps
# replay's keys apart from the application's own.
_LOCK_PREFIX = "replay:migrate:"


async def prepare(conn: Conn, schema: str) -> None:
    """Check ``schema`` and bring it up to date, in one transaction.

    Raises:
        SchemaError: the schema belongs to something else or was written by a
            newer replay. Nothing was changed.
    """
    if await _version(conn, schema) == SCHEMA_VERSION:
        return  # the common case: no lock, no transaction
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _LOCK_PREFIX + schema)
        # Another process may have migrated while we waited: look again under the lock.
        version = await _version(conn, schema)
        if version == SCHEMA_VERSION:
            return
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
        await conn.execute(f"SET LOCAL search_path TO {quote(schema)}")
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step].split(";\n"):
                if statement.strip():
                    await conn.execute(statement)
            await conn.execute("UPDATE replay_schema SET version = $1", step + 1)


async def _version(conn: Conn, schema: str) -> int:
    """The schema's version: 0 when it does not exist or is empty."""
    tables = {
        row[0]
        for row in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
    }
    if not tables:
        return 0
    if "replay_schema" not in tables:
        held = ", ".join(sorted(tables))
        raise SchemaError(
            f"PostgreSQL schema {schema!r} is not replay's (it holds {held}); "
            "give replay a schema of its own with ?schema=name in the store URL"
        )
    row = await conn.fetchrow(f"SELECT version FROM {quote(schema)}.replay_schema")
    if row is None:
        raise SchemaError(f"PostgreSQL schema {schema!r} has no schema version: it is damaged")
    version: int = row[0]
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"PostgreSQL schema {schema!r} was written by a newer replay (schema version "
            f"{version}; this replay knows up to {SCHEMA_VERSION}): upgrade replay to use it"
        )
    return version


def quote(identifier: str) -> str:
    """``identifier`` as a quoted SQL identifier."""
    return '"' + identifier.replace('"', '""') + '"'
