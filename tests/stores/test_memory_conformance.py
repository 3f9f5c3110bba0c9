"""The memory store, the reference, passes the store conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from replay.stores.memory import MemoryStore
from replay.testing import StoreConformance


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    async def store(self) -> AsyncIterator[MemoryStore]:
        store = MemoryStore()
        await store.open()
        yield store
        await store.close()
