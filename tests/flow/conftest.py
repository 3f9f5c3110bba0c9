"""Flow control runs on every store: each test here gets a TestEnv per store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import replay
from replay.stores.base import Store
from replay.stores.memory import MemoryStore
from replay.stores.sqlite import SqliteStore
from replay.testing import TestEnv
from tests.conftest import drop_schemas, fresh_schema, with_schema

STORES = ["memory", "sqlite", "postgresql"]


@pytest.fixture(params=STORES)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """A function making a fresh (unopened) store of the parametrized kind."""
    count = iter(range(1_000_000))
    if request.param == "memory":
        yield MemoryStore
    elif request.param == "sqlite":
        yield lambda: SqliteStore(f"sqlite:///{tmp_path}/flow-{next(count)}.db")
    else:
        from replay.stores.postgres import PostgresStore

        server = request.getfixturevalue("postgres_server")
        schemas: list[str] = []

        def make() -> Store:
            schemas.append(fresh_schema())
            return PostgresStore(with_schema(server, schemas[-1]))

        yield make
        drop_schemas(server, schemas)


@pytest.fixture
def env_for(store_factory: Callable[[], Store]) -> Callable[..., TestEnv]:
    """``env_for(app, **worker_options)``: a TestEnv on the parametrized store."""

    def make(app: replay.App, **options: Any) -> TestEnv:
        return TestEnv(app, store=store_factory(), **options)

    return make
