"""Two SqliteStores on one file stand in for two processes; one test uses a real one.

Worker liveness is an OS lock per worker, held through an open file description,
so two stores in one process contend for it exactly as two processes would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from replay import journal as j
from replay.errors import LeaseLost, StoreError
from replay.journal import Entry
from replay.stores import _sqlite_writer as writer_module
from replay.stores._sqlite_locks import WorkerLocks
from replay.stores.sqlite import SqliteStore
from replay.testing._conformance_kit import T0, new_run

WF = "wf"


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteStore]]:
    a, b = (SqliteStore(f"sqlite:///{tmp_path}/shared.db") for _ in range(2))
    await a.open()
    await b.open()
    await a.register_worker("a")
    await b.register_worker("b")
    yield a, b
    await a.close()
    await b.close()


async def create(store: SqliteStore, n: int) -> set[str]:
    for i in range(n):
        await store.create_run(new_run(f"r{i}", workflow=WF))
    return {f"r{i}" for i in range(n)}


async def test_claims_do_not_overlap(two: tuple[SqliteStore, SqliteStore]) -> None:
    a, b = two
    ids = await create(a, 40)
    got_a: set[str] = set()
    got_b: set[str] = set()
    for _ in range(10):  # interleaved and concurrent claims, a few at a time
        ca, cb = await asyncio.gather(a.claim("a", [WF], T0, 3), b.claim("b", [WF], T0, 2))
        got_a |= {c.run_id for c in ca}
        got_b |= {c.run_id for c in cb}
    assert not got_a & got_b
    assert got_a | got_b == ids
    assert await b.claim("b", [WF], T0 + 1e9, 100) == []  # a is alive: its runs stay its own
    assert await a.claim("a", [WF], T0 + 1e9, 100) == []


async def test_runs_of_an_unregistered_worker_can_be_claimed(two: tuple[SqliteStore, SqliteStore]) -> None:
    a, b = two
    ids = await create(a, 5)
    claims = await a.claim("a", [WF], T0, 100)
    await a.unregister_worker("a")
    assert {c.run_id for c in await b.claim("b", [WF], T0, 100)} == ids
    with pytest.raises(LeaseLost):
        await a.append(claims[0].run_id, claims[0].token, [Entry(2, j.SIDE_EFFECT, T0, {})])


async def test_a_dead_owner_is_seen_at_once(tmp_path: Path) -> None:
    a, b = (SqliteStore(f"sqlite:///{tmp_path}/shared.db") for _ in range(2))
    await a.open()
    await b.open()
    try:
        await a.register_worker("a")
        await b.register_worker("b")
        ids = await create(a, 5)
        claims = await a.claim("a", [WF], T0, 100)
        assert await b.claim("b", [WF], T0, 100) == []
        await a.close()  # its lock goes, as a killed process's does; the rows still say "a"
        assert {c.run_id for c in await b.claim("b", [WF], T0, 100)} == ids
        reopened = SqliteStore(f"sqlite:///{tmp_path}/shared.db")
        await reopened.open()
        with pytest.raises(LeaseLost):
            await reopened.append(claims[0].run_id, claims[0].token, [Entry(2, j.SIDE_EFFECT, T0, {})])
        await reopened.close()
    finally:
        await a.close()
        await b.close()


async def test_a_live_worker_id_cannot_be_taken_twice(two: tuple[SqliteStore, SqliteStore]) -> None:
    a, b = two
    with pytest.raises(StoreError, match="in use"):
        await b.register_worker("a")
    await a.unregister_worker("a")
    await b.register_worker("a")


CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from replay.stores.sqlite import SqliteStore

    async def main():
        store = SqliteStore(sys.argv[1])
        await store.open()
        await store.register_worker("child")
        claims = await store.claim("child", ["wf"], 1000.0, 100)
        forked = ""
        if sys.argv[2:] == ["fork"]:  # a process of its own outlives it (a pool, a daemon)
            pid = os.fork()
            if pid == 0:  # off the pipes, which the test waits on, and alive until killed
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                signal.pause()
            forked = f" {pid}"
        print(" ".join(sorted(c.run_id for c in claims)) + forked, flush=True)
        sys.stdin.readline()  # hold the runs until killed

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("fork", [False, True], ids=["alone", "with-a-forked-child-alive"])
async def test_runs_of_a_killed_process_are_claimed_at_once(tmp_path: Path, fork: bool) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    store = SqliteStore(url)
    await store.open()
    forked: int | None = None
    try:
        await store.register_worker("parent")
        ids = await create(store, 4)
        args = [url, "fork"] if fork else [url]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        words = (await proc.stdout.readline()).decode().split()
        if fork:
            forked = int(words.pop())
        assert set(words) == ids
        assert await store.claim("parent", [WF], T0, 100) == []  # the child is alive
        proc.kill()
        await proc.wait()
        # Its own child, forked after it registered, still runs: the worker is dead all the same.
        assert {c.run_id for c in await store.claim("parent", [WF], T0, 100)} == ids
    finally:
        if forked is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(forked, signal.SIGKILL)
        await store.close()


async def test_a_live_owner_is_seen_through_a_symlink_to_its_file(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias.db").symlink_to(tmp_path / "real" / "shared.db")
    a = SqliteStore(f"sqlite:///{tmp_path}/real/shared.db")
    b = SqliteStore(f"sqlite:///{tmp_path}/alias.db")
    await a.open()
    await b.open()
    try:
        await a.register_worker("a")
        await b.register_worker("b")
        await create(a, 3)
        assert len(await a.claim("a", [WF], T0, 100)) == 3
        assert await b.claim("b", [WF], T0, 100) == []  # a is alive, whatever path b took
    finally:
        await a.close()
        await b.close()


async def died_under(url: str, worker_id: str, runs: int) -> tuple[set[str], SqliteStore]:
    """A process claims ``runs`` runs as ``worker_id`` and dies; the next one's store, opened."""
    first = SqliteStore(url)
    await first.open()
    ids = await create(first, runs)
    await first.register_worker(worker_id)
    assert len(await first.claim(worker_id, [WF], T0, 100)) == runs
    await first.close()  # dies: its lock goes, the rows still name the id
    second = SqliteStore(url)
    await second.open()
    return ids, second


async def test_a_worker_restarted_under_its_id_gets_its_dead_runs_back(tmp_path: Path) -> None:
    ids, second = await died_under(f"sqlite:///{tmp_path}/shared.db", "stable", 3)
    try:
        await second.register_worker("stable")  # the same id, as a restarted pod's
        assert {c.run_id for c in await second.claim("stable", [WF], T0, 100)} == ids
    finally:
        await second.close()


def full_disk(conn: object, size: int) -> None:
    """A ``before_commit`` hook: every group fails, as on a full disk."""
    raise OSError("disk full")


async def test_a_worker_whose_unregister_fails_still_lets_its_runs_go(
    two: tuple[SqliteStore, SqliteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two
    ids = await create(a, 2)
    assert len(await a.claim("a", [WF], T0, 100)) == 2
    monkeypatch.setattr(writer_module, "before_commit", full_disk)
    with pytest.raises(StoreError):
        await a.unregister_worker("a")
    monkeypatch.setattr(writer_module, "before_commit", None)
    assert {c.run_id for c in await b.claim("b", [WF], T0, 100)} == ids  # "a" is no longer alive


async def test_a_registration_whose_release_fails_can_be_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, second = await died_under(f"sqlite:///{tmp_path}/shared.db", "stable", 2)
    try:
        monkeypatch.setattr(writer_module, "before_commit", full_disk)
        with pytest.raises(StoreError):
            await second.register_worker("stable")
        monkeypatch.setattr(writer_module, "before_commit", None)
        await second.register_worker("stable")  # the release is not skipped this time
        assert {c.run_id for c in await second.claim("stable", [WF], T0, 100)} == ids
    finally:
        await second.close()


FORK_IN_THE_WINDOW = textwrap.dedent(
    """
    import fcntl, os, sys
    from replay.stores._sqlite_locks import WorkerLocks

    real_flock = fcntl.flock

    def flock_then_fork(fd, operation):
        # As another thread's fork would: after the lock is taken, before it is recorded.
        real_flock(fd, operation)
        fcntl.flock = real_flock
        pid = os.fork()
        if pid == 0:  # alive, off the test's pipes, until the test kills it
            null = os.open(os.devnull, os.O_RDWR)
            for std in (0, 1, 2):
                os.dup2(null, std)
            os.read(os.pipe()[0], 1)
        print(pid, flush=True)

    fcntl.flock = flock_then_fork
    WorkerLocks(sys.argv[1]).acquire("w")
    os._exit(0)  # dies holding the lock, as a killed worker
    """
)


def test_a_child_forked_while_a_lock_is_being_taken_does_not_keep_it(tmp_path: Path) -> None:
    directory = str(tmp_path / "shared.db-workers")
    out = subprocess.run(
        [sys.executable, "-c", FORK_IN_THE_WINDOW, directory], capture_output=True, text=True, check=True
    )
    child = int(out.stdout.split()[0])
    try:
        assert os.path.exists(WorkerLocks(directory).path("w"))  # its file is there, as a dead worker's
        assert not WorkerLocks(directory).alive("w")  # and the child, still alive, does not hold it
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
