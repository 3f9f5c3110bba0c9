"""``replay worker``: a real worker process, driven until its runs complete, then drained by SIGTERM."""

from __future__ import annotations

import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cli import flows

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEADLINE = 30.0  # seconds any one wait below may take before the test fails


class WorkerProcess:
    """``python -m replay.cli worker tests.cli.flows:app`` with its stderr read line by line."""

    def __init__(self, url: str, folder: pathlib.Path, *args: str) -> None:
        env = {**os.environ, "REPLAY_STORE": url, "REPLAY_TEST_DIR": str(folder)}
        command = [sys.executable, "-m", "replay.cli", "worker", "tests.cli.flows:app", *args]
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def expect(self, text: str) -> None:
        """Wait for a line of stderr holding ``text``."""
        end = time.monotonic() + DEADLINE
        while True:
            try:
                line = self.lines.get(timeout=max(end - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"no {text!r} from the worker; it said:\n{''.join(self.seen)}") from None
            self.seen.append(line)
            if text in line:
                return

    def wait(self) -> int:
        code = self.proc.wait(timeout=DEADLINE)
        self._reader.join(timeout=DEADLINE)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=DEADLINE)


@pytest.fixture
def folder(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv("REPLAY_TEST_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def worker_process(url: str, folder: pathlib.Path) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(url, folder, "--poll-interval", "0.02", "--drain-timeout", str(DEADLINE))
    try:
        proc.expect("running gated, letters, napper, shipper")
        yield proc
    finally:
        proc.kill()


def wait_for(path: pathlib.Path) -> None:
    end = time.monotonic() + DEADLINE
    while not path.exists():  # polls a condition, with a deadline
        assert time.monotonic() < end, f"{path.name} never appeared"
        time.sleep(0.01)


def test_the_worker_runs_the_app_and_drains_on_sigterm_without_cutting_a_step_off(
    worker_process: WorkerProcess, folder: pathlib.Path, on_flows: Any
) -> None:
    async def complete() -> list[Any]:
        runs = [await flows.app.start(flows.letters, run_id=f"letters-{i}") for i in range(3)]
        return [await run.result(timeout=DEADLINE) for run in runs]

    # No worker in this process: the worker process does the work.
    assert on_flows(complete, worker=False) == [["A", "B", "C", "D"]] * 3
    on_flows(lambda: flows.app.start(flows.gated, run_id="gated"), worker=False)
    wait_for(folder / "started")  # the gate step is in flight in the worker process

    worker_process.proc.send_signal(signal.SIGTERM)
    worker_process.expect("SIGTERM: draining")
    (folder / "release").touch()  # the step in flight may finish now
    assert worker_process.wait() == 0, "".join(worker_process.seen)
    assert any("drained" in line for line in worker_process.seen)

    async def journal() -> tuple[str, list[str]]:
        run = flows.app.get_run("gated")
        return await run.status(), [e.kind for e in await run.journal()]

    status, kinds = on_flows(journal, worker=False)
    # The step in flight finished and was journaled; the next one was not started.
    assert kinds == ["workflow_started", "step_scheduled", "step_completed"]
    assert status == "running"  # released: the next worker takes it over at once
    ran = (folder / "ran.txt").read_text().splitlines()
    assert ran.count("gate one") == 1 and ran.count("gate one done") == 1
    assert "after" not in ran

    async def resume() -> Any:
        return await flows.app.get_run("gated").result(timeout=DEADLINE)

    assert on_flows(resume) == ["one", "AFTER"]
    ran = (folder / "ran.txt").read_text().splitlines()
    assert ran.count("gate one") == 1  # journaled, so never run again


def test_a_drain_past_its_timeout_exits_1_and_names_the_step_cut_off(
    url: str, folder: pathlib.Path, on_flows: Any
) -> None:
    proc = WorkerProcess(url, folder, "--poll-interval", "0.02", "--drain-timeout", "0")
    try:
        proc.expect("running")
        on_flows(lambda: flows.app.start(flows.gated, run_id="gated"), worker=False)
        wait_for(folder / "started")
        proc.proc.send_signal(signal.SIGINT)
        assert proc.wait() == 1
        said = "".join(proc.seen)
        assert "gated step 'gate'" in said and "will run again" in said
    finally:
        (folder / "release").touch()
        proc.kill()
