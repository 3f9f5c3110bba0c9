"""Fixtures for the CLI tests: a SQLite store in tmp_path, and runs made on it by tests.cli.flows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner, Result

from replay.cli._main import cli
from replay.stores.sqlite import SqliteStore
from tests.cli import flows

T = TypeVar("T")


class Cli:
    """Invokes ``replay`` in-process on one store."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.runner = CliRunner()

    def __call__(self, *args: str, store: bool = True, code: int | None = 0) -> Result:
        argv = [*args, "--store", self.url] if store else list(args)
        result = self.runner.invoke(cli, argv, prog_name="replay", catch_exceptions=False)
        if code is not None:
            assert result.exit_code == code, f"replay {' '.join(argv)} -> {result.exit_code}\n{result.output}"
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path}/replay.db"


@pytest.fixture
def replay_cli(url: str) -> Cli:
    return Cli(url)


@pytest.fixture(autouse=True)
def _fresh_flows() -> Iterator[None]:
    flows.ran.clear()
    flows.broken.clear()
    yield
    flows.ran.clear()
    flows.broken.clear()


@pytest.fixture
def on_flows(url: str) -> Callable[[Callable[[], Awaitable[T]]], T]:
    """Run a coroutine with tests.cli.flows's app on the test store and a worker, in a fresh loop."""

    def run(scenario: Callable[[], Awaitable[T]], worker: bool = True) -> T:
        async def main() -> T:
            store = SqliteStore(url)
            await store.open()
            previous = flows.app.use_store(store)
            try:
                if not worker:
                    return await scenario()
                async with flows.app.worker(poll_interval=0.02):
                    return await scenario()
            finally:
                flows.app.restore_store(previous)
                await store.close()

        return asyncio.run(main())

    return run
