"""``replay runs ...`` and ``replay events send``, in-process on a SQLite file."""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import datetime, timedelta
from typing import Any

import pytest

import replay
from replay.stores.base import RunUpdate
from replay.stores.sqlite import SqliteStore
from tests.cli import flows
from tests.cli.conftest import Cli

COMMANDS = [
    ["worker"],
    ["runs"],
    ["runs", "list"],
    ["runs", "show"],
    ["runs", "cancel"],
    ["runs", "retry"],
    ["runs", "fork"],
    ["events", "send"],
    ["check"],
    ["demo"],
    ["dashboard"],
    [],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "replay")
def test_every_command_has_help_with_an_example(replay_cli: Cli, command: list[str]) -> None:
    out = replay_cli(*command, "--help", store=False).output
    assert "Example" in out and "Usage: replay" in out
    if command and command not in (["runs"], ["worker"], ["check"], ["dashboard"]):
        assert "--store" in out


def finished_letters(on_flows: Any, n: int = 2) -> list[str]:
    async def scenario() -> list[str]:
        ids = []
        for i in range(n):
            run = await flows.app.start(flows.letters, run_id=f"letters-{i}")
            assert await run.result(timeout=10) == ["A", "B", "C", "D"]
            ids.append(run.run_id)
        return ids

    result: list[str] = on_flows(scenario)
    return result


def test_runs_list_shows_a_table_and_json(replay_cli: Cli, on_flows: Any) -> None:
    finished_letters(on_flows)
    on_flows(lambda: flows.app.start(flows.napper, run_id="nap"), worker=False)
    table = replay_cli("runs", "list").stdout
    assert "letters-0" in table and "letters-1" in table and "nap" in table
    rows = replay_cli.json("runs", "list")
    assert [r["run_id"] for r in rows] == ["nap", "letters-1", "letters-0"]
    assert rows[1]["status"] == "completed" and rows[1]["result"] == ["A", "B", "C", "D"]
    assert [r["run_id"] for r in replay_cli.json("runs", "list", "--status", "pending")] == ["nap"]
    assert [r["run_id"] for r in replay_cli.json("runs", "list", "-w", "letters", "-n", "1")] == ["letters-1"]
    assert len(replay_cli.json("runs", "list", "--since", "1h")) == 3
    assert replay_cli.json("runs", "list", "--until", "1h") == []
    tomorrow = (datetime.now() + timedelta(days=1)).isoformat(timespec="seconds")
    assert replay_cli.json("runs", "list", "--since", tomorrow) == []
    assert "no runs match" in replay_cli("runs", "list", "--since", tomorrow).stdout


@pytest.mark.parametrize(
    "args",
    [["--since", "yesterday"], ["--until", "5 parsecs"], ["--status", "sleepy"], ["--limit", "0"]],
)
def test_runs_list_refuses_bad_filters(replay_cli: Cli, on_flows: Any, args: list[str]) -> None:
    finished_letters(on_flows, 1)
    assert "Invalid value" in replay_cli("runs", "list", *args, code=2).output


def test_a_missing_store_is_not_created_and_a_bad_url_is_refused(tmp_path: Any) -> None:
    missing = Cli(f"sqlite:///{tmp_path}/nothing-here.db")
    assert "no replay store at" in missing("runs", "list", code=2).output
    assert not os.path.exists(tmp_path / "nothing-here.db")
    assert "unknown store" in Cli("ftp://x")("runs", "list", code=2).output


def test_runs_show_prints_the_timeline_with_durations_and_tracebacks(replay_cli: Cli, on_flows: Any) -> None:
    flows.broken.add("c")

    async def scenario() -> None:
        run = await flows.app.start(flows.letters, run_id="broken")
        with pytest.raises(replay.StepFailed):
            await run.result(timeout=10)

    on_flows(scenario)
    text = replay_cli("runs", "show", "broken").stdout
    assert "broken" in text and "failed" in text
    assert "ValueError: c is broken" in text
    assert "Traceback (most recent call last)" in text and 'raise ValueError(f"{name} is broken")' in text

    shown = replay_cli.json("runs", "show", "broken")
    assert shown["run"]["status"] == "failed"
    rows = shown["timeline"]
    assert [r["kind"] for r in rows] == [
        "workflow_started",
        *["step_scheduled", "step_completed"] * 2,
        "step_scheduled",
        "step_failed",
        "workflow_failed",
    ]
    assert [r.get("step") for r in rows] == [None, 1, 1, 2, 2, 3, 3, None]
    assert [r.get("offset") >= 0 for r in rows] == [True] * len(rows)
    done = rows[2]
    assert (done["name"], done["op"], done["attempt"], done["output"]) == ("letter", 2, 1, "A")
    assert done["duration"] >= 0
    assert rows[1]["input"] == ["a"]
    failed = rows[6]
    assert failed["error"]["type"] == "ValueError" and "Traceback" in failed["error"]["traceback"]
    assert rows[-1]["error"]["type"] == "StepFailed"


def test_unknown_runs_exit_2(replay_cli: Cli, on_flows: Any) -> None:
    finished_letters(on_flows, 1)
    for command in (["show"], ["cancel"], ["retry"], ["fork", "--from-step", "1"]):
        out = replay_cli("runs", *command, "nope", code=2).output
        assert "no run with id 'nope'" in out
    assert len(replay_cli.json("runs", "list")) == 1


def test_runs_cancel_asks_a_run_to_stop(replay_cli: Cli, on_flows: Any) -> None:
    async def scenario() -> None:
        await flows.app.start(flows.napper, run_id="nap")
        while await flows.app.get_run("nap").status() != "suspended":
            await asyncio_sleep_tick()

    on_flows(scenario)
    info = replay_cli.json("runs", "cancel", "nap")
    assert info["run_id"] == "nap" and info["cancel_requested"] is True

    async def finish() -> str:
        with pytest.raises(replay.Cancelled):
            await flows.app.get_run("nap").result(timeout=10)
        return await flows.app.get_run("nap").status()

    assert on_flows(finish) == "cancelled"
    out = replay_cli("runs", "cancel", "nap", code=1).output
    assert "already cancelled" in out


async def asyncio_sleep_tick() -> None:
    import asyncio

    await asyncio.sleep(0.01)  # a poll tick while waiting for a condition, not a fixed wait


def test_runs_retry_resumes_only_a_parked_run(replay_cli: Cli, on_flows: Any, url: str) -> None:
    finished_letters(on_flows, 1)
    on_flows(lambda: flows.app.start(flows.napper, run_id="parked"), worker=False)

    async def park() -> None:  # what a worker does on a NonDeterminismError
        store = SqliteStore(url)
        await store.open()
        await store.register_worker("w")
        [claim] = await store.claim("w", ["napper"], time.time(), 1)
        error = {"type": "NonDeterminismError", "message": "diff", "traceback": ""}
        await store.append("parked", claim.token, [], RunUpdate(status="failed", error=error, release=True))
        await store.unregister_worker("w")
        await store.close()

    import asyncio

    asyncio.run(park())
    info = replay_cli.json("runs", "retry", "parked")
    assert (info["status"], info["error"]) == ("pending", None)
    out = replay_cli("runs", "retry", "letters-0", code=1).output
    assert "only a failed run can be retried" in out
    assert replay_cli.json("runs", "show", "letters-0")["run"]["status"] == "completed"


def test_runs_fork_reruns_the_steps_from_n_on_and_reuses_the_earlier_ones(
    replay_cli: Cli, on_flows: Any
) -> None:
    flows.broken.add("c")

    async def fail() -> None:
        run = await flows.app.start(flows.letters, run_id="old")
        with pytest.raises(replay.StepFailed):
            await run.result(timeout=10)

    on_flows(fail)
    assert flows.ran == ["a", "b", "c"]
    flows.broken.clear()  # the fix is deployed
    flows.ran.clear()
    forked = replay_cli.json("runs", "fork", "old", "--from-step", "3", "--run-id", "new")
    assert forked == {"run_id": "new", "forked_from": "old", "from_step": 3, "status": "pending"}
    assert replay_cli.json("runs", "show", "new")["run"]["status"] == "pending"

    async def finish() -> Any:
        return await flows.app.get_run("new").result(timeout=10)

    assert on_flows(finish) == ["A", "B", "C", "D"]
    assert flows.ran == ["c", "d"]  # a and b came from the journal
    old = replay_cli.json("runs", "show", "old")["timeline"]
    new = replay_cli.json("runs", "show", "new")["timeline"]
    assert [(r["kind"], r.get("output")) for r in new[1:5]] == [
        (r["kind"], r.get("output")) for r in old[1:5]
    ]
    assert "forked from old at step 3" in new[0]["note"]
    # The plain text form, and the hidden alias DESIGN.md uses.
    assert "forked from old at step 1" in replay_cli("runs", "fork", "old", "--from-step", "1").stdout
    assert "forked from old" in replay_cli("runs", "replay", "old", "--from-step", "2").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Missing option '--from-step'"),
        (["--from-step", "9"], "between 1 and 4"),
        (["--from-step", "0"], "counts steps from 1"),
        (["--from-step", "two"], "is not a valid integer"),
        (["--from-step", "1", "--run-id", "letters-0"], "already exists"),
    ],
)
def test_runs_fork_refuses_bad_input_and_changes_nothing(
    replay_cli: Cli, on_flows: Any, args: list[str], message: str
) -> None:
    finished_letters(on_flows, 1)
    assert message in replay_cli("runs", "fork", "letters-0", *args, code=2).output
    assert [r["run_id"] for r in replay_cli.json("runs", "list")] == ["letters-0"]


def test_events_send_wakes_a_waiting_run(replay_cli: Cli, on_flows: Any) -> None:
    async def wait() -> None:
        await flows.app.start(flows.shipper, "o-1", run_id="ship")
        while await flows.app.get_run("ship").status() != "suspended":
            await asyncio_sleep_tick()

    on_flows(wait)
    sent = replay_cli.json("events", "send", "order.shipped", '{"order_id": "o-1"}', "--id", "e1")
    assert sent == {"id": "e1", "name": "order.shipped", "data": {"order_id": "o-1"}}
    assert (
        "sent order.shipped (id e1)"
        in replay_cli("events", "send", "order.shipped", '{"order_id": "o-1"}', "--id", "e1").stdout
    )

    async def finish() -> Any:
        return await flows.app.get_run("ship").result(timeout=10)

    assert on_flows(finish) is True


@pytest.mark.parametrize(
    ("data", "message"),
    [("{oops", "is not valid JSON"), ("[1, 2]", "is a JSON object"), ("3", "JSON object")],
)
def test_events_send_refuses_bad_json_and_stores_nothing(
    replay_cli: Cli, on_flows: Any, tmp_path: Any, data: str, message: str
) -> None:
    finished_letters(on_flows, 1)
    assert message in replay_cli("events", "send", "order.shipped", data, code=2).output
    with sqlite3.connect(tmp_path / "replay.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone() == (0,)
