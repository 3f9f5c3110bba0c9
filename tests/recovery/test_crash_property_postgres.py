"""The proof again, on PostgreSQL: generated programs survive a crash at every journal append.

The same programs as ``test_crash_property``, but every run of every crash point
gets a fresh ``PostgresStore`` on a schema of its own, so the fenced appends in
SQL, the claims with SKIP LOCKED and the releases on unregister are all in the
path of the simulated process death. The schemas are dropped afterwards.

The stores run with ``synchronous_commit=off``: it changes only whether a commit
waits for its WAL flush, which matters for a power loss of the database server,
not for the worker's process death simulated here; it halves the test's time.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, note, settings

from replay.testing import explore_crashes
from tests.conftest import drop_schemas, fresh_schema, with_schema
from tests.programs import app, prog, programs, responder


def test_every_crash_point_recovers_on_postgres(postgres_server: str) -> None:
    from replay.stores.postgres import PostgresStore

    @settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(programs)
    def explore(program: list[Any]) -> None:
        note(f"program: {program}")
        schemas: list[str] = []

        def fresh() -> PostgresStore:
            schemas.append(fresh_schema())
            return PostgresStore(with_schema(postgres_server, schemas[-1], synchronous_commit="off"))

        async def run() -> None:
            report = await explore_crashes(app, prog, program, events=responder(program), store_factory=fresh)
            assert report.points or report.appends == 0

        try:
            asyncio.run(run())
        finally:
            drop_schemas(postgres_server, schemas)

    explore()
