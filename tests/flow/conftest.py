"""Flow control runs on every store: each test here gets a TestEnv per store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import replay
from replay.stores.base import Store
from replay.stores.memory import MemoryStore
from replay.stores.sqlite import SqliteStore
from replay.testing import TestEnv

STORES = ["memory", "sqlite"]


@pytest.fixture(params=STORES)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """A function making a fresh (unopened) store of the parametrized kind."""
    count = iter(range(1_000_000))
    if request.param == "memory":
        return MemoryStore
    return lambda: SqliteStore(f"sqlite:///{tmp_path}/flow-{next(count)}.db")


@pytest.fixture
def env_for(store_factory: Callable[[], Store]) -> Callable[..., TestEnv]:
    """``env_for(app, **worker_options)``: a TestEnv on the parametrized store."""

    def make(app: replay.App, **options: Any) -> TestEnv:
        return TestEnv(app, store=store_factory(), **options)

    return make
