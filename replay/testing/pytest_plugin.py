"""replay's pytest plugin (the ``replay`` entry point of ``pytest11``): a ``replay_env`` fixture.

Tell it which app to run, with a ``replay_app`` fixture or a marker::

    @pytest.fixture
    def replay_app():
        return app

    async def test_checkout(replay_env):
        run = await app.start(checkout, "o-1", 500)
        await replay_env.advance(timedelta(days=1))

    @pytest.mark.replay_app(other_app)
    async def test_other(replay_env): ...

The fixture is async: it needs pytest-asyncio (``pip install 'replay[testing]'``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import pytest

from replay.testing.env import TestEnv

__all__ = ("replay_env",)

_F = TypeVar("_F", bound=Callable[..., Any])

try:
    import pytest_asyncio

    _fixture: Any = pytest_asyncio.fixture
except ImportError:  # pragma: no cover - without pytest-asyncio the fixture cannot run anyway
    _fixture = pytest.fixture


def _async_fixture(fn: _F) -> _F:
    return cast(_F, _fixture(fn))


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``replay_app`` marker."""
    config.addinivalue_line("markers", "replay_app(app): the replay.App that the replay_env fixture runs")


@_async_fixture
async def replay_env(request: pytest.FixtureRequest) -> AsyncIterator[TestEnv]:
    """A running ``TestEnv`` (memory store, virtual clock, background worker) for the test's app."""
    marker = request.node.get_closest_marker("replay_app")
    if marker is not None and marker.args:
        app = marker.args[0]
    elif "replay_app" in request.fixturenames or _has_fixture(request, "replay_app"):
        app = request.getfixturevalue("replay_app")
    else:
        raise pytest.UsageError(
            "replay_env needs to know which app to run: define a `replay_app` fixture "
            "returning it, or mark the test with @pytest.mark.replay_app(app)"
        )
    async with TestEnv(app) as env:
        yield env


def _has_fixture(request: pytest.FixtureRequest, name: str) -> bool:
    try:
        request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        return False
    return True
