"""The differential state machine: SQLite agrees with the memory store, operation by operation."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from hypothesis import HealthCheck, settings

from replay.stores.base import Store
from replay.stores.sqlite import SqliteStore
from replay.testing.stateful import StoreAgreement

_TMP = tempfile.TemporaryDirectory(prefix="replay-agreement-")


class SqliteAgreement(StoreAgreement):
    def make_store(self) -> Store:
        # durability=normal: agreement is about semantics, not fsync; it keeps the run short.
        return SqliteStore(f"sqlite:///{Path(_TMP.name) / uuid.uuid4().hex}.db", durability="normal")


class MemoryAgreement(StoreAgreement):
    def make_store(self) -> Store:
        from replay.stores.memory import MemoryStore

        return MemoryStore()


SqliteAgreement.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
MemoryAgreement.TestCase.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)

TestSqliteAgreesWithMemory = SqliteAgreement.TestCase
TestMemoryAgreesWithItself = MemoryAgreement.TestCase
