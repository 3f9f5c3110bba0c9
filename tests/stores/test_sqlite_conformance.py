"""The SQLite store passes the store conformance suite, on a file in tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from replay.stores.sqlite import SqliteStore
from replay.testing import StoreConformance


class TestSqliteStore(StoreConformance):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SqliteStore]:
        store = SqliteStore(f"sqlite:///{tmp_path}/replay.db")
        await store.open()
        yield store
        await store.close()
