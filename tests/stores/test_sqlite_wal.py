"""The writer sizes the WAL at open, so commits overwrite it; nothing already committed is lost."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from replay.stores._sqlite_wal import presize_wal
from replay.stores.sqlite import SqliteStore
from replay.testing._conformance_kit import new_run

FRAME = 4096 + 24

#: Commits rows to a replay database and dies without closing, so they stay in the WAL only.
DIE_WITH_A_FULL_WAL = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA wal_autocheckpoint = 0")
for i in range(50):
    conn.execute("INSERT INTO events (id, name, data, at) VALUES (?, 'x', x'7b7d', 1.0)", (f"e{i}",))
os._exit(0)
"""


def wal_size(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


async def test_a_fresh_store_opens_with_its_wal_at_the_checkpoint_size(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    try:
        assert wal_size(path) >= 1000 * FRAME
        await store.create_run(new_run("a"))
        assert wal_size(path) < 1001 * FRAME  # written over, from the start: not grown
        assert store._writer is not None and store._writer._conn is not None
        conn = store._writer._conn
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    finally:
        await store.close()
    reopened = SqliteStore(f"sqlite:///{path}")
    await reopened.open()
    try:
        assert await reopened.get_run("a") is not None
    finally:
        await reopened.close()


async def test_what_a_dead_process_left_in_the_wal_survives_the_sizing(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    await store.close()
    subprocess.run([sys.executable, "-c", DIE_WITH_A_FULL_WAL, str(path)], check=True)
    assert wal_size(path) > 0
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 50
    finally:
        conn.close()


async def test_the_sizing_is_skipped_while_another_connection_reads(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    await store.create_run(new_run("a"))
    await store.close()
    reader = sqlite3.connect(path, isolation_level=None)
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("PRAGMA journal_mode = WAL")
        reader.execute("BEGIN")
        assert reader.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1  # holds a snapshot
        writer.execute("INSERT INTO events (id, name, data, at) VALUES ('e', 'x', x'7b7d', 1.0)")
        assert not presize_wal(writer, str(path))
        assert writer.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
        reader.execute("COMMIT")
        assert presize_wal(writer, str(path))
        assert wal_size(path) >= 1000 * FRAME
        assert not presize_wal(writer, str(path))  # already sized
    finally:
        reader.close()
        writer.close()


async def test_durability_normal_leaves_the_wal_alone(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = SqliteStore(f"sqlite:///{path}", durability="normal")
    await store.open()
    try:
        assert wal_size(path) < 10 * FRAME
    finally:
        await store.close()
    assert not os.path.exists(f"{path}-wal")  # the last connection's close checkpointed and removed it


async def test_the_sizing_gives_way_to_a_writer_that_starts_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    await store.close()
    other = sqlite3.connect(path, isolation_level=None)
    writer = sqlite3.connect(path, isolation_level=None)

    def begin_elsewhere(sql: str) -> None:
        # Another process starts writing once the fill has begun, after its checkpoint.
        if sql.startswith("PRAGMA application_id =") and not other.in_transaction:
            other.execute("BEGIN IMMEDIATE")

    try:
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("PRAGMA busy_timeout = 0")
        writer.set_trace_callback(begin_elsewhere)
        assert not presize_wal(writer, str(path))  # skipped, not raised
        writer.set_trace_callback(None)
        assert other.in_transaction
        other.execute("COMMIT")
        assert writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL, as it was
    finally:
        other.close()
        writer.close()
