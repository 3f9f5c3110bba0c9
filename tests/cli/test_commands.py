"""``replay check``, ``replay demo``, ``replay dashboard`` and the missing-extra message."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from replay import stores
from tests.cli import flows
from tests.cli.conftest import Cli
from tests.cli.test_runs import finished_letters

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_check_passes_when_every_run_replays(replay_cli: Cli, on_flows: Any) -> None:
    finished_letters(on_flows)
    assert "every run replays" in replay_cli("check", "tests.cli.flows:app").stdout
    assert replay_cli.json("check", "tests.cli.flows:app") == []


def test_check_exits_1_and_lists_each_run_that_would_break(replay_cli: Cli, on_flows: Any) -> None:
    finished_letters(on_flows)
    out = replay_cli("check", "tests.cli.flows_changed:app", code=1).stdout
    assert "letters-0" in out and "letters-1" in out and "2 run(s) would break" in out
    assert "step_scheduled 'letter'" in out and "'shout'" in out  # the side-by-side diff
    problems = json.loads(replay_cli("check", "tests.cli.flows_changed:app", "--json", code=1).stdout)
    assert sorted(p["run_id"] for p in problems) == ["letters-0", "letters-1"]
    assert {p["kind"] for p in problems} == {"nondeterminism"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.cli.nowhere:app", "no module named 'tests.cli.nowhere'"),
        ("tests.cli.flows:missing", "has no attribute 'missing'"),
        ("tests.cli.flows:not_an_app", "not a replay.App"),
        ("not a module", "expected MODULE:APP"),
    ],
)
def test_check_and_worker_refuse_a_bad_module_path(replay_cli: Cli, spec: str, message: str) -> None:
    assert message in replay_cli("check", spec, code=2).output
    assert message in replay_cli("worker", spec, code=2).output


def test_demo_runs_and_leaves_runs_to_look_at(replay_cli: Cli) -> None:
    out = replay_cli("demo").stdout
    assert "demo-order-1: completed" in out
    rows = replay_cli.json("runs", "list")
    assert sorted(r["run_id"] for r in rows) == [
        "demo-order-1",
        "demo-order-2",
        "demo-order-3",
        "demo-order-4",
    ]
    assert [r["status"] for r in sorted(rows, key=lambda r: r["run_id"])] == ["completed"] * 3 + ["failed"]
    assert "payment provider unavailable" in out


def test_dashboard_serves_the_store_on_loopback(
    replay_cli: Cli, on_flows: Any, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import replay.dashboard

    finished_letters(on_flows, 1)
    served: list[dict[str, Any]] = []

    def serve(app: Any, **options: Any) -> None:
        served.append({"app": app, **options})

    monkeypatch.setattr(replay.dashboard, "serve", serve)
    replay_cli("dashboard", "--port", "9123")
    [call] = served
    assert (call["host"], call["port"], call["token"]) == ("127.0.0.1", 9123, None)
    assert call["app"]._store.url == url  # a bare app on --store
    replay_cli("dashboard", "--app", "tests.cli.flows:app", "--host", "0.0.0.0", "--token", "s3", store=False)
    assert served[1]["app"] is flows.app and served[1]["token"] == "s3"


def test_dashboard_refuses_an_exposed_address_without_a_token(replay_cli: Cli, on_flows: Any) -> None:
    finished_letters(on_flows, 1)
    assert "without a token" in replay_cli("dashboard", "--host", "0.0.0.0", code=2).output
    out = replay_cli("dashboard", "--app", "tests.cli.flows:app", code=2).output
    assert "drop --store" in out


def test_without_click_the_command_says_which_extra_to_install() -> None:
    code = "import sys; sys.modules['click'] = None; from replay.cli import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert proc.returncode == 2
    assert "pip install 'replay[cli]'" in proc.stderr


def test_flows_app_is_what_the_worker_test_runs() -> None:
    assert set(flows.app.workflows) == {"letters", "napper", "shipper", "gated"}


def test_worker_refuses_an_app_without_workflows_and_a_bad_store(replay_cli: Cli) -> None:
    assert "registers no workflow" in replay_cli("worker", "tests.cli.flows:empty", code=2).output
    out = replay_cli("worker", "tests.cli.flows:app", "--store", "ftp://nowhere", store=False, code=2).output
    assert "unknown store" in out
    # The app's own store (from REPLAY_STORE, or named in its code) is as bad: a message, no traceback.
    out = replay_cli("worker", "tests.cli.flows:misplaced", store=False, code=2).output
    assert "the store of <App 'cli-misplaced'>: a store URL looks like" in out


def test_a_store_whose_driver_is_missing_names_the_extra(replay_cli: Cli, monkeypatch: Any) -> None:
    real = importlib.import_module

    def without_asyncpg(name: str, package: str | None = None) -> Any:
        if name == "replay.stores.postgres":
            raise ModuleNotFoundError("No module named 'asyncpg'", name="asyncpg")
        return real(name, package)

    monkeypatch.setattr(stores.importlib, "import_module", without_asyncpg)
    out = Cli("postgresql://u@localhost/db")("runs", "list", code=2).output
    assert "pip install 'replay[postgresql]'" in out
