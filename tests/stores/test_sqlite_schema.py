"""The SQLite store's file: URLs, options, persistence, and files it must refuse unchanged."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from replay import journal as j
from replay.errors import ReplayInternalError, SchemaError, StoreError
from replay.journal import Entry
from replay.stores import open_store
from replay.stores._sqlite_schema import SCHEMA_VERSION
from replay.stores.sqlite import SqliteStore, parse_url
from replay.testing._conformance_kit import new_run


def url(path: Path) -> str:
    return f"sqlite:///{path}"


async def make_db(path: Path, runs: int = 1) -> None:
    store = SqliteStore(url(path))
    await store.open()
    for i in range(runs):
        await store.create_run(new_run(f"run-{i}", args=["x" * 200]))
    await store.close()


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


async def refused(path: Path, match: str) -> None:
    before = snapshot(path.parent)
    store = SqliteStore(url(path))
    with pytest.raises(SchemaError, match=match):
        await store.open()
    assert snapshot(path.parent) == before


# -- URLs and options -----------------------------------------------------------------------


def test_parse_url_relative_absolute_and_options() -> None:
    assert parse_url("sqlite:///replay.db") == ("replay.db", {})
    assert parse_url("sqlite:///data/r.db?durability=normal") == ("data/r.db", {"durability": "normal"})
    assert parse_url("sqlite:////var/lib/r.db") == ("/var/lib/r.db", {})


@pytest.mark.parametrize(
    "bad", ["sqlite://", "sqlite:///", "sqlite://host/r.db", "memory://", "sqlite:///r.db?x=1"]
)
def test_bad_urls_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        SqliteStore(bad)


def test_bad_durability_is_refused() -> None:
    with pytest.raises(ValueError, match="durability"):
        SqliteStore("sqlite:///r.db?durability=sometimes")
    with pytest.raises(ValueError, match="durability"):
        SqliteStore("sqlite:///r.db", durability="")  # type: ignore[arg-type]


def test_open_store_picks_sqlite(tmp_path: Path) -> None:
    store = open_store(url(tmp_path / "r.db"))
    assert isinstance(store, SqliteStore) and store.path == str(tmp_path / "r.db")


async def test_relative_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = SqliteStore("sqlite:///here.db")
    await store.open()
    await store.close()
    assert (tmp_path / "here.db").is_file()


@pytest.mark.parametrize(("option", "level"), [("", 2), ("?durability=full", 2), ("?durability=normal", 1)])
async def test_durability_sets_synchronous(tmp_path: Path, option: str, level: int) -> None:
    store = SqliteStore(url(tmp_path / "r.db") + option)
    await store.open()
    try:
        assert store._writer is not None
        pragmas = await store._writer.submit(
            lambda conn, _: (
                conn.execute("PRAGMA synchronous").fetchone()[0],
                conn.execute("PRAGMA journal_mode").fetchone()[0],
            )
        )
        assert pragmas == (level, "wal")
    finally:
        await store.close()


async def test_a_store_must_be_open(tmp_path: Path) -> None:
    store = SqliteStore(url(tmp_path / "r.db"))
    with pytest.raises(StoreError, match="not open"):
        await store.get_run("r1")
    with pytest.raises(StoreError, match="not open"):
        await store.create_run(new_run("r1"))


async def test_a_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    store = SqliteStore(url(tmp_path / "missing" / "r.db"))
    with pytest.raises(StoreError, match=r"cannot open .* its directory .*missing does not exist"):
        await store.open()


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    await make_db(tmp_path / "r.db", runs=3)
    store = SqliteStore(url(tmp_path / "r.db"))
    await store.open()
    try:
        assert [r.run_id for r in await store.list_runs()] == ["run-2", "run-1", "run-0"]
        assert len(await store.read_journal("run-1")) == 1
    finally:
        await store.close()


async def test_an_empty_file_becomes_a_replay_database(tmp_path: Path) -> None:
    (tmp_path / "r.db").write_bytes(b"")
    await make_db(tmp_path / "r.db")
    with sqlite3.connect(tmp_path / "r.db") as conn:
        assert conn.execute("SELECT version FROM replay_schema").fetchone() == (SCHEMA_VERSION,)


# -- files it refuses, unchanged ------------------------------------------------------------


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    await make_db(path)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE replay_schema SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    await refused(path, "newer replay")


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 100)
    await refused(path, "not a replay database: it is not an SQLite file")


async def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.close()
    await refused(path, r"not a replay database \(it holds users\)")


def leave_wal(path: Path, *statements: str) -> None:
    """Run ``statements`` on ``path`` in a process that dies before any checkpoint."""
    script = (
        "import os, sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('PRAGMA journal_mode = WAL')\n"
        "conn.execute('PRAGMA wal_autocheckpoint = 0')\n"
        "for statement in sys.argv[2:]:\n"
        "    conn.execute(statement)\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path), *statements], check=True)


def test_another_applications_database_with_its_wal_left_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    # The other program died with its last writes still in its WAL (no checkpoint).
    leave_wal(
        path,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
        "INSERT INTO users (name) VALUES ('ada')",
    )
    kept = {name: (tmp_path / name).read_bytes() for name in ("other.db", "other.db-wal")}
    store = SqliteStore(url(path))
    with pytest.raises(SchemaError, match=r"not a replay database \(it holds users\)"):
        asyncio.run(store.open())
    # The file and its WAL as they were (only the -shm, the WAL's index, is rebuilt).
    assert {name: (tmp_path / name).read_bytes() for name in kept} == kept


@pytest.mark.parametrize("damage", ["pages", "truncated", "header", "cut_short", "last_page_gone"])
async def test_a_corrupt_file_is_refused(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "r.db"
    await make_db(path, runs=300)
    raw = bytearray(path.read_bytes())
    rng = random.Random(7)
    if damage == "pages":
        raw[4096 * 3 : 4096 * 5] = rng.randbytes(4096 * 2)
    elif damage == "truncated":
        del raw[len(raw) // 2 :]
    elif damage == "cut_short":
        # Less than a page: SQLite reads the rest as zeros and its own check may pass.
        del raw[-100:]
    elif damage == "last_page_gone":
        del raw[-4096:]
    else:
        raw[:100] = bytes(100)
    path.write_bytes(bytes(raw))
    await refused(path, "corrupt|header is damaged")


def test_a_corrupt_file_with_its_wal_left_is_refused_untouched(tmp_path: Path) -> None:
    # The state a crash leaves: the newest writes in the WAL. Refusing the file
    # must not fold that WAL into it (which closing a write connection would do).
    path = tmp_path / "r.db"
    asyncio.run(make_db(path, runs=300))
    leave_wal(path, "UPDATE runs SET updated_at = 2")
    raw = bytearray(path.read_bytes())
    raw[4096 * 3 : 4096 * 5] = random.Random(7).randbytes(4096 * 2)
    path.write_bytes(bytes(raw))
    kept = {name: (tmp_path / name).read_bytes() for name in ("r.db", "r.db-wal")}
    with pytest.raises(SchemaError, match="corrupt"):
        asyncio.run(SqliteStore(url(path)).open())
    assert {name: (tmp_path / name).read_bytes() for name in kept} == kept


@pytest.mark.parametrize(
    ("statement", "held"),
    [("CREATE VIEW answers AS SELECT 42", "view answers"), ("PRAGMA user_version = 7", "user_version 7")],
)
async def test_a_database_without_tables_is_not_taken_for_a_new_one(
    tmp_path: Path, statement: str, held: str
) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(statement)
    conn.close()
    await refused(path, f"not a replay database \\(it holds [^)]*{held}")


async def test_a_version_1_file_is_migrated_with_its_runs_intact(tmp_path: Path) -> None:
    from replay.stores import _sqlite_schema as schema

    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for statement in schema._statements(schema.MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("UPDATE replay_schema SET version = 1")
    conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
    conn.execute(
        "INSERT INTO runs (run_id, workflow, status, args, created_at, updated_at) "
        "VALUES ('old', 'wf', 'pending', '[1]', 1.0, 1.0)"
    )
    # Up to version 2, one row per entry.
    conn.executemany(
        "INSERT INTO journal (run_id, seq, entry) VALUES ('old', ?, ?)",
        [
            (1, b'[1,"workflow_started",1.0,{"workflow":"wf","args":[1],"journal":1}]'),
            (2, b'[2,"step_scheduled",1.0,{"name":"s","args":[]}]'),
            (3, b'[3,"step_completed",1.0,{"op":2,"attempt":1,"result":7}]'),
        ],
    )
    conn.close()
    store = SqliteStore(url(path))
    await store.open()
    try:
        info = await store.get_run("old")
        assert info is not None and info.args == [1] and info.status == "pending"
        [claim] = await store.claim("w", ["wf"], 2.0, 10)
        assert claim.run_id == "old"
        assert await store.advance_schedule("cron:wf", None, 5.0, None)  # a version-2 table
        # Version 3: one row per append, after the old rows.
        more = [
            Entry(4, j.STEP_SCHEDULED, 3.0, {"name": "s", "args": []}),
            Entry(5, j.STEP_COMPLETED, 3.0, {"op": 4, "attempt": 1, "result": 8}),
        ]
        await store.append("old", claim.token, more)
        journal = await store.read_journal("old")
        assert [(e.seq, e.kind) for e in journal] == [
            (1, j.WORKFLOW_STARTED),
            (2, j.STEP_SCHEDULED),
            (3, j.STEP_COMPLETED),
            (4, j.STEP_SCHEDULED),
            (5, j.STEP_COMPLETED),
        ]
        assert journal[4].data["result"] == 8
        with pytest.raises(ReplayInternalError):  # the fence still knows the last seq
            await store.append(
                "old", claim.token, [Entry(5, j.STEP_SCHEDULED, 4.0, {"name": "s", "args": []})]
            )
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM replay_schema").fetchone() == (SCHEMA_VERSION,) == (4,)
    assert [r[0] for r in conn.execute("SELECT seq FROM journal WHERE run_id = 'old' ORDER BY seq")] == [
        1,
        2,
        3,
        5,
    ]
    # Version 4: the journal is a log in append order (its rowid), found by run through an index.
    assert [r[0] for r in conn.execute("SELECT seq FROM journal ORDER BY rowid")] == [1, 2, 3, 5]
    [plan] = conn.execute("EXPLAIN QUERY PLAN SELECT entry FROM journal WHERE run_id = 'old' ORDER BY seq")
    assert "journal_run" in plan[-1]
    conn.close()
