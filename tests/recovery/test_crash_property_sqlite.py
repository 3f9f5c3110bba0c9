"""The proof again, on SQLite: generated programs survive a crash at every journal append.

The same programs as ``test_crash_property``, but every run of every crash point
gets a fresh ``SqliteStore`` in a new file, so the writer's group commit, its
savepoints, the lease fencing in SQL and the OS worker locks are all in the path
of the simulated process death.

Most examples run with ``durability="normal"``: it changes only when SQLite
fsyncs (at checkpoints rather than at every commit), which matters for a power
loss but not for a process death, the only thing simulated here; it keeps the
test's cost at about half a second per example. A few examples run on the default
``durability="full"`` so that the configuration users get is proven too.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import HealthCheck, given, note, settings

from replay.stores.sqlite import Durability, SqliteStore
from replay.testing import explore_crashes
from tests.programs import app, prog, programs, responder


@contextmanager
def fresh_stores(durability: Durability) -> Iterator[Callable[[], SqliteStore]]:
    """A factory of SQLite stores, each in a new file of one temporary directory.

    On exit, checks that no store left a file open in the directory (every store
    was closed), then removes the directory.
    """
    with tempfile.TemporaryDirectory(prefix="replay-crash-") as directory:
        made: list[SqliteStore] = []

        def fresh() -> SqliteStore:
            store = SqliteStore(f"sqlite:///{directory}/attempt-{len(made)}.db", durability=durability)
            made.append(store)
            return store

        yield fresh
        assert made, "explore_crashes asked for no store"
        assert not open_files_under(directory), "a store was left open"


def open_files_under(directory: str) -> list[str]:
    """Files under ``directory`` that this process holds open (Linux; elsewhere none are seen)."""
    fds = "/proc/self/fd"
    if not os.path.isdir(fds):
        return []
    found = []
    for fd in os.listdir(fds):
        try:
            target = os.readlink(os.path.join(fds, fd))
        except OSError:
            continue  # closed since listdir
        if target.startswith(directory + os.sep):
            found.append(target)
    return found


def explore_on_sqlite(program: list[Any], durability: Durability) -> None:
    note(f"program: {program}")
    with fresh_stores(durability) as fresh:

        async def explore() -> None:
            report = await explore_crashes(app, prog, program, events=responder(program), store_factory=fresh)
            assert report.points or report.appends == 0

        asyncio.run(explore())


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs)
def test_every_crash_point_recovers_on_sqlite(program: list[Any]) -> None:
    explore_on_sqlite(program, "normal")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs)
def test_every_crash_point_recovers_on_sqlite_with_full_durability(program: list[Any]) -> None:
    explore_on_sqlite(program, "full")
