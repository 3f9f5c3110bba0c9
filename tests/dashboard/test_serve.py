"""``serve``: loopback by default, a token for anything else, checked before binding."""

from __future__ import annotations

import importlib
import sys
from typing import Any, ClassVar

import pytest
import uvicorn

import replay
from replay.dashboard import check_address, serve


class RecordingServer:
    """Stands in for uvicorn.Server: records its config and serves nothing."""

    configs: ClassVar[list[Any]] = []

    def __init__(self, config: Any) -> None:
        RecordingServer.configs.append(config)

    async def serve(self) -> None:
        return None


@pytest.fixture
def no_binding(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    RecordingServer.configs = []
    monkeypatch.setattr(uvicorn, "Server", RecordingServer)
    return RecordingServer.configs


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "replay.example.com", "[::]"])
def test_serve_refuses_an_exposed_address_without_a_token_before_binding(
    no_binding: list[Any], host: str
) -> None:
    with pytest.raises(ValueError, match="without a token") as info:
        serve(replay.App("d", store="memory://"), host=host, port=1)
    assert "bind 127.0.0.1" in str(info.value)
    assert no_binding == []  # no server was even configured


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.9", "localhost", "::1", "[::1]"])
def test_loopback_needs_no_token(host: str) -> None:
    check_address(host, None)


def test_serve_runs_uvicorn_on_the_address_given_with_a_token(no_binding: list[Any]) -> None:
    serve(replay.App("d", store="memory://"), host="0.0.0.0", port=8123, token="t0ken")
    (config,) = no_binding
    assert (config.host, config.port) == ("0.0.0.0", 8123)
    serve(replay.App("d", store="memory://"))
    assert (no_binding[1].host, no_binding[1].port) == ("127.0.0.1", 8000)


def test_without_the_extra_the_import_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "replay.dashboard" or m.startswith("replay.dashboard.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "starlette", None)
    with pytest.raises(ImportError, match=r"pip install 'replay\[dashboard\]'"):
        importlib.import_module("replay.dashboard")
