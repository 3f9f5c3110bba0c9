"""The PostgreSQL store passes the store conformance suite, on a schema of each test's own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from replay.testing import StoreConformance


class TestPostgresStore(StoreConformance):
    @pytest.fixture
    async def store(self, postgres_url: str) -> AsyncIterator[object]:
        from replay.stores.postgres import PostgresStore

        store = PostgresStore(postgres_url)
        await store.open()
        yield store
        await store.close()
