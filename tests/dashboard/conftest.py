"""Fixtures: the dashboard in-process (starlette's TestClient) over a populated TestEnv."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import pytest

pytest.importorskip("starlette", reason="the dashboard extra is not installed: pip install -e '.[dev]'")

from starlette.testclient import TestClient

from replay.dashboard import create_app
from replay.testing import TestEnv
from tests.dashboard.shop import app, populate

TOKEN = "s3cret-token"


@attrs.define
class Dashboard:
    """A client on the dashboard, the env behind it, and the ids of its runs by role."""

    client: TestClient
    env: TestEnv
    ids: dict[str, str]

    def call(self, fn: Any, *args: Any) -> Any:
        """Run an async function on the loop the app and its worker run on."""
        return self.client.portal.call(fn, *args)  # type: ignore[union-attr]

    def status(self, run_id: str) -> str:
        return str(self.call(app.get_run(run_id).status))

    def journal(self, run_id: str) -> list[Any]:
        return list(self.call(app.get_run(run_id).journal))

    def snapshot(self) -> list[Any]:
        """Every run and its journal: what "nothing changed" compares."""

        async def read() -> list[Any]:
            runs = await app.list_runs(limit=1000)
            return [(r, await app.get_run(r.run_id).journal()) for r in runs]

        return list(self.call(read))


def _dashboard(token: str | None) -> Iterator[Dashboard]:
    # 127.0.0.1: without a token the dashboard answers only loopback Host names.
    with TestClient(create_app(app, token=token), base_url="http://127.0.0.1") as client:
        env = TestEnv(app)
        assert client.portal is not None
        client.portal.call(env.__aenter__)
        try:
            yield Dashboard(client, env, client.portal.call(populate, env))
        finally:
            client.portal.call(env.__aexit__, None, None, None)


@pytest.fixture
def dash() -> Iterator[Dashboard]:
    """The dashboard without a token."""
    yield from _dashboard(None)


@pytest.fixture
def locked() -> Iterator[Dashboard]:
    """The dashboard with the token ``TOKEN``."""
    yield from _dashboard(TOKEN)
