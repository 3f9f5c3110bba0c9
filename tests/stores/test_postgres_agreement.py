"""The differential state machine on PostgreSQL: it agrees with the memory store, operation by operation.

Each example gets a fresh schema; every schema is dropped when the test ends.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from replay.stores.base import Store
from replay.testing.stateful import StoreAgreement
from tests.conftest import drop_schemas, fresh_schema, with_schema


def test_postgres_agrees_with_memory(postgres_server: str) -> None:
    from replay.stores.postgres import PostgresStore

    schemas: list[str] = []

    class PostgresAgreement(StoreAgreement):
        def make_store(self) -> Store:
            schemas.append(fresh_schema())
            return PostgresStore(with_schema(postgres_server, schemas[-1]))

    try:
        run_state_machine_as_test(
            PostgresAgreement,
            settings=settings(
                max_examples=60,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        drop_schemas(postgres_server, schemas)
