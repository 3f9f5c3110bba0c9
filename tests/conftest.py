"""Fixtures shared by the whole suite: the PostgreSQL server, a fresh schema on it per test,
and a TestEnv on each store (``store_factory``, ``env_for``).

The PostgreSQL tests run against the server named by ``REPLAY_TEST_POSTGRES``
(``tests/run`` sets it, and starts the local server if it is down). When no
server answers, they skip and say why; in CI (``CI=true``) they fail instead, so
a missing server can never pass for a green run.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import replay
from replay.stores.base import Store
from replay.stores.memory import MemoryStore
from replay.stores.sqlite import SqliteStore
from replay.testing import TestEnv

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def _probe(url: str) -> str | None:
    """None if the server at ``url`` answers, else why not."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install -e '.[dev]')"

    async def connect() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        await conn.close()

    problem: list[str] = []

    def run() -> None:  # a thread of its own: the caller may be inside an event loop
        try:
            asyncio.run(connect())
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
            problem.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return problem[0] if problem else None


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL server's URL; skips (fails in CI) when none answers."""
    url = os.environ.get("REPLAY_TEST_POSTGRES", DEFAULT_POSTGRES)
    problem = _probe(url)
    if problem is not None:
        message = f"no PostgreSQL server at {url} ({problem}); bash tests/run starts the local one"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


def drop_schemas(server: str, schemas: list[str]) -> None:
    """Drop these schemas, and everything in them, from the server."""
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(server, timeout=10)
        try:
            for schema in schemas:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    thread = threading.Thread(target=lambda: asyncio.run(drop()))
    thread.start()
    thread.join()


def fresh_schema() -> str:
    """A new schema name, unique to one test."""
    return f"replay_test_{uuid.uuid4().hex[:12]}"


def with_schema(server: str, schema: str, **options: object) -> str:
    """The store URL for ``schema`` on ``server``, with more query options."""
    query = "&".join([f"schema={schema}", *(f"{k}={v}" for k, v in options.items())])
    return f"{server}{'&' if '?' in server else '?'}{query}"


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A store URL on a schema of this test's own, dropped afterwards."""
    schema = fresh_schema()
    yield with_schema(postgres_server, schema)
    drop_schemas(postgres_server, [schema])


# -- every store: for tests that must hold on each (flow control, claims) ----------

#: The stores ``store_factory`` runs a test on.
STORES = ["memory", "sqlite", "postgresql"]


@pytest.fixture(params=STORES)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """A function making a fresh (unopened) store of the parametrized kind."""
    count = iter(range(1_000_000))
    if request.param == "memory":
        yield MemoryStore
    elif request.param == "sqlite":
        yield lambda: SqliteStore(f"sqlite:///{tmp_path}/store-{next(count)}.db")
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
