"""The SQLite store's schema: its tables, its versioned migrations, and the checks on open.

Opening a file checks, before writing anything, that it is either empty or a
replay database whose schema this release can use, and that SQLite finds no
damage in it. Anything else raises ``SchemaError`` and leaves the file as it was.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Final

from replay.errors import SchemaError

__all__ = ("APPLICATION_ID", "SCHEMA_VERSION", "check_read_only", "prepare")

#: ``PRAGMA application_id`` of a replay database: "RPLY".
APPLICATION_ID: Final = 0x52504C59

#: MIGRATIONS[v] takes a database at schema version v to v + 1.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE replay_schema (version INTEGER NOT NULL);
    INSERT INTO replay_schema (version) VALUES (0);
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        workflow TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN
            ('pending', 'running', 'suspended', 'completed', 'failed', 'cancelled')),
        args BLOB NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        result BLOB,
        error BLOB,
        parent_id TEXT,
        wake_at REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        cancel_delivered INTEGER NOT NULL DEFAULT 0,
        token INTEGER NOT NULL DEFAULT 0,
        owner TEXT
    );
    -- claim: pending runs, suspended runs by wake time, running runs; next_wake_at.
    CREATE INDEX runs_claim ON runs (status, wake_at);
    -- owners of running runs (liveness checks) and unregister_worker.
    CREATE INDEX runs_owner ON runs (owner, status) WHERE owner IS NOT NULL;
    CREATE INDEX runs_created ON runs (created_at);
    CREATE TABLE journal (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        entry BLOB NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        data BLOB NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX events_name ON events (name, position);
    CREATE TABLE waits (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        match BLOB NOT NULL,
        after INTEGER NOT NULL,
        timeout_at REAL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID;
    -- send_event: the waits for an event's name.
    CREATE INDEX waits_name ON waits (name);
    -- children a run's journal started and has not yet seen finish.
    CREATE TABLE awaited_children (
        run_id TEXT NOT NULL,
        child_id TEXT NOT NULL,
        PRIMARY KEY (run_id, child_id)
    ) WITHOUT ROWID;
    """,
    """
    -- flow control (see replay.stores.base.Flow)
    ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN concurrency_key TEXT;
    ALTER TABLE runs ADD COLUMN concurrency_limit INTEGER;
    ALTER TABLE runs ADD COLUMN throttle_key TEXT;
    ALTER TABLE runs ADD COLUMN begin_at REAL;
    ALTER TABLE runs ADD COLUMN rate_key TEXT;
    ALTER TABLE runs ADD COLUMN debounce_key TEXT;
    -- claim: pending runs by priority, then in creation order.
    CREATE INDEX runs_pending ON runs (status, priority DESC);
    -- claim: how many runs of each concurrency key are running.
    CREATE INDEX runs_concurrency ON runs (status, concurrency_key) WHERE concurrency_key IS NOT NULL;
    CREATE INDEX runs_throttle ON runs (throttle_key, begin_at) WHERE throttle_key IS NOT NULL;
    CREATE INDEX runs_rate ON runs (rate_key, created_at) WHERE rate_key IS NOT NULL;
    CREATE INDEX runs_debounce ON runs (debounce_key, status) WHERE debounce_key IS NOT NULL;
    -- the events that cancel a run (CancelOn), until it ends.
    CREATE TABLE cancel_on (
        run_id TEXT NOT NULL,
        name TEXT NOT NULL,
        match BLOB NOT NULL,
        after INTEGER NOT NULL
    );
    CREATE INDEX cancel_on_name ON cancel_on (name);
    CREATE INDEX cancel_on_run ON cancel_on (run_id);
    -- starts that joined a debounced run: creating them again returns that run.
    CREATE TABLE run_aliases (
        alias TEXT PRIMARY KEY,
        run_id TEXT NOT NULL
    ) WITHOUT ROWID;
    -- workers' cursors: the last cron tick fired, the last event position triggered.
    CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        tick REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    """
    -- A journal row may hold several consecutive entries: those one append wrote,
    -- their encodings joined by commas, keyed by the last one's seq (see
    -- replay.stores._sqlite_journal.row_blob). The tables do not change; the version
    -- does, so that an older replay refuses the file instead of misreading such a row.
    """,
    """
    -- The journal as a log: rows kept in the order they were appended (the rowid),
    -- found by run through an index. Keyed by (run_id, seq) itself, the rows of the
    -- runs hot together lay spread over the table, and a group commit of one row per
    -- run rewrote a page per run; appended at the table's end, the rows fill a few
    -- pages, and only the index's small entries are spread (W1: 55% fewer WAL pages).
    CREATE TABLE journal_log (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        entry BLOB NOT NULL
    );
    INSERT INTO journal_log (run_id, seq, entry) SELECT run_id, seq, entry FROM journal ORDER BY run_id, seq;
    DROP TABLE journal;
    ALTER TABLE journal_log RENAME TO journal;
    CREATE UNIQUE INDEX journal_run ON journal (run_id, seq);
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def prepare(conn: sqlite3.Connection, path: str, *, checked: bool = False) -> None:
    """Check the database behind ``conn`` and bring its schema up to date.

    ``conn`` must be in autocommit mode (``isolation_level=None``). ``checked``:
    ``check_read_only`` already ran SQLite's integrity check on the file.

    Raises:
        SchemaError: the file is not a replay database, is corrupt, or was
            written by a newer replay. Nothing was written to it.
    """
    try:
        version = _version(conn, path)
        if version > 0 and not checked:
            _check_integrity(conn, path)
    except sqlite3.DatabaseError as exc:
        raise _unreadable(path, exc) from None
    if version < SCHEMA_VERSION:
        _migrate(conn, path)


def check_read_only(path: str) -> bool:
    """Refuse, before any write connection, a file that opening read-write would change.

    A file cut short: SQLite reads the missing pages as zeros, its integrity
    check may pass, and the first checkpoint writes the file back to full size,
    the damage then made for good. The file's header says how long it is;
    checked when no write-ahead log is beside the file (with one, the newest
    pages may be in the log, and the header is not yet up to date).

    A file with a write-ahead log beside it (its writer died before a
    checkpoint): a read-write connection would, on closing, fold that WAL into
    the file, so another program's database, or a damaged one, would be
    refused, yet changed. Its version and integrity are checked read-only,
    which leaves the file and its WAL as they were; only the ``-shm``, SQLite's
    index of the WAL that any reader rebuilds, is rewritten. Returns whether
    the integrity check ran here.

    Raises:
        SchemaError: as ``prepare``.
    """
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return False
    wal = path + "-wal"
    if not os.path.exists(wal) or os.path.getsize(wal) == 0:
        _check_length(path)
        return False
    try:
        conn = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return False  # not openable read-only (no access to its -shm, say): prepare will say why
    try:
        if _version(conn, path) > 0:
            _check_integrity(conn, path)
            return True
        return False
    except sqlite3.DatabaseError as exc:
        raise _unreadable(path, exc) from None
    finally:
        conn.close()


#: The first bytes of every SQLite database file.
_MAGIC: Final = b"SQLite format 3\x00"


def _check_length(path: str) -> None:
    """Refuse a file shorter than its header says, or not a whole number of pages."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(_MAGIC):
        return  # not an SQLite file at all: opening it says so
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return  # a damaged header: opening it says so
    pages = int.from_bytes(header[28:32], "big")
    # The page count is valid when the "version valid for" number matches the change counter.
    counted = pages > 0 and header[92:96] == header[24:28]
    if size % page_size or (counted and size < pages * page_size):
        expected = f"{pages * page_size:,} bytes" if counted else f"a multiple of {page_size:,} bytes"
        raise SchemaError(
            f"{path} is a corrupt database: it holds {size:,} bytes where its header says "
            f"{expected} (the file was cut short)"
        )


def _unreadable(path: str, exc: sqlite3.DatabaseError) -> SchemaError:
    if "not a database" in str(exc):
        return SchemaError(
            f"{path} is not a replay database: it is not an SQLite file, or its header is damaged"
        )
    return SchemaError(f"{path} is a corrupt database: SQLite says {exc}")


def _version(conn: sqlite3.Connection, path: str) -> int:
    """The file's schema version: 0 for an empty database."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    user_version = conn.execute("PRAGMA user_version").fetchone()[0]
    objects = conn.execute("SELECT type, name FROM sqlite_master").fetchall()
    tables = {name for kind, name in objects if kind == "table"}
    if not objects and app_id == 0 and user_version == 0:
        return 0  # a new file (or one with nothing in it): replay's to fill
    if app_id != APPLICATION_ID or "replay_schema" not in tables:
        held = ", ".join(sorted(tables) or sorted(f"{kind} {name}" for kind, name in objects))
        if not held:
            held = f"no tables, but user_version {user_version}" if user_version else "no tables"
        raise SchemaError(
            f"{path} is not a replay database (it holds {held}); "
            "point the store at a new file or at one replay created"
        )
    row = conn.execute("SELECT version FROM replay_schema").fetchone()
    if row is None or not isinstance(row[0], int):
        raise SchemaError(f"{path} is a replay database without a schema version: it is corrupt")
    version: int = row[0]
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{path} was written by a newer replay (schema version {version}; this replay "
            f"knows up to {SCHEMA_VERSION}): upgrade replay to open it"
        )
    return version


def _check_integrity(conn: sqlite3.Connection, path: str) -> None:
    # quick_check reads every page once: a damaged file fails here, on open,
    # rather than in the middle of a run.
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise SchemaError(f"{path} is a corrupt replay database: SQLite reports {'; '.join(problems)}")


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated since we looked: read again under the lock.
        version = _version(conn, path)
        for step in range(version, SCHEMA_VERSION):
            for statement in _statements(MIGRATIONS[step]):
                conn.execute(statement)
            conn.execute("UPDATE replay_schema SET version = ?", (step + 1,))
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    # executescript would commit the open transaction; run each statement in it instead.
    out: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip():
        out.append(current.strip())
    return out
