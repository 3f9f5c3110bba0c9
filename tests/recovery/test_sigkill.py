"""Real process deaths: a worker on a SQLite file is killed with SIGKILL, another takes over.

The worker is ``tests/recovery/sigkill_worker.py`` in a subprocess. Each step
attempt logs ``run_id:seq:attempt`` to a log file of its process before it sleeps
for real, so the logs tell exactly which steps ran in which process. After the
kill, the journal as the dead process left it is the line between "completed"
(its completion is durable: it must never run again) and "in flight" (it may,
and must, run again). Nothing here sleeps for a fixed time: every wait polls the
database or the process, with a deadline.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from replay import journal as j
from replay.journal import Entry, decode_entries
from tests.recovery.sigkill_worker import HANG_AT, RUNS, STEPS, expected_result, run_ids

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and flock are POSIX")

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0  # seconds; generous for a loaded machine, never reached when all is well
T = TypeVar("T")

Step = tuple[str, int]  # run id, the step's seq


def poll(condition: Callable[[], T | None], what: str, timeout: float = DEADLINE) -> T:
    """Call ``condition`` until it returns something other than None; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)  # a poll interval, not a wait for something to happen


@contextmanager
def worker(tmp_path: Path, log: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process on ``tmp_path/replay.db``; killed on the way out if still alive."""
    n = len(list(tmp_path.glob("worker-*.out")))
    with open(tmp_path / f"worker-{n}.out", "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.recovery.sigkill_worker",
                str(tmp_path / "replay.db"),
                str(log),
                *extra,
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(DEADLINE)


def output(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("worker-*.out")))


def journals(db: Path) -> dict[str, list[Entry]] | None:
    """Every run's journal, read from a read-only connection; None if the file is not ready yet."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.OperationalError:
        return None  # not created yet
    try:
        conn.execute("BEGIN")  # one snapshot
        rows = conn.execute("SELECT run_id, entry FROM journal ORDER BY run_id, seq").fetchall()
    except sqlite3.OperationalError:
        return None  # no schema yet
    finally:
        conn.close()
    out: dict[str, list[Entry]] = {}
    for run_id, blob in rows:
        out.setdefault(run_id, []).extend(decode_entries([blob]))
    return out


def statuses(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    try:
        return dict(conn.execute("SELECT run_id, status FROM runs").fetchall())
    finally:
        conn.close()


def check_runs_agree(db: Path, journal: dict[str, list[Entry]]) -> None:
    """A run's row and its journal are written in one transaction: they never disagree."""
    for run_id, status in statuses(db).items():
        entries = journal.get(run_id, [])
        assert entries, f"run {run_id} has a row but no journal"
        assert (status == "completed") == (entries[-1].kind == j.WORKFLOW_COMPLETED), (run_id, status)


def completed_steps(journal: dict[str, list[Entry]]) -> set[Step]:
    return {
        (run_id, e.data["op"]) for run_id, es in journal.items() for e in es if e.kind == j.STEP_COMPLETED
    }


def finished(journal: dict[str, list[Entry]]) -> set[str]:
    return {run_id for run_id, es in journal.items() if es and es[-1].kind in j.TERMINAL_KINDS}


def executions(log: Path) -> list[Step]:
    """The step attempts a process started, from its log: one (run id, seq) per attempt."""
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        run_id, seq, _attempt = line.split(":")
        out.append((run_id, int(seq)))
    return out


def run_to_completion(tmp_path: Path, log: Path) -> dict[str, list[Entry]]:
    """Start a fresh worker on the file and let it finish every run; returns the journals."""
    with worker(tmp_path, log) as proc:
        try:
            code = proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the recovering worker did not finish:\n{output(tmp_path)}") from None
        assert code == 0, output(tmp_path)
    final = journals(tmp_path / "replay.db")
    assert final is not None
    return final


def check_results(final: dict[str, list[Entry]]) -> None:
    """Every run completed with the right result, and every journal is seqs 1..n with no gap."""
    assert sorted(final) == run_ids()
    for run_id, entries in final.items():
        assert [e.seq for e in entries] == list(range(1, len(entries) + 1)), run_id
        last = entries[-1]
        assert last.kind == j.WORKFLOW_COMPLETED, (run_id, last)
        assert last.data["result"] == expected_result(run_id)
        # One completion per step, STEPS steps.
        completions = [e.data["op"] for e in entries if e.kind == j.STEP_COMPLETED]
        assert len(completions) == len(set(completions)) == STEPS, (run_id, entries)


def check_executions(
    at_kill: dict[str, list[Entry]], before: list[Step], after: list[Step], final: dict[str, list[Entry]]
) -> None:
    """Steps completed at the kill never ran again; only those in flight ran twice; each ran."""
    done_at_kill = completed_steps(at_kill)
    in_flight = set(before) - done_at_kill
    assert len(before) == len(set(before)), "a step ran twice in the first process"
    assert len(after) == len(set(after)), "a step ran twice in the second process"
    assert not set(after) & done_at_kill, (
        f"steps completed before the kill ran again: {sorted(set(after) & done_at_kill)}"
    )
    counts = Counter(before + after)
    assert max(counts.values()) <= 2
    assert {step for step, n in counts.items() if n == 2} == in_flight, "every step in flight runs again"
    assert set(counts) == completed_steps(final), "every step ran, and only steps ran"


def test_a_worker_killed_mid_step_is_taken_over(tmp_path: Path) -> None:
    db = tmp_path / "replay.db"
    log1, log2 = tmp_path / "log-1.txt", tmp_path / "log-2.txt"
    total = RUNS * STEPS

    def some_done_some_running() -> dict[str, list[Entry]] | None:
        now = journals(db)
        if now is None or len(completed_steps(now)) < total // 4:
            return None
        # HANG_AT never completes in this process: once logged, it is in flight until the kill.
        return now if HANG_AT in executions(log1) else None

    with worker(tmp_path, log1, "--hang") as first:
        seen = poll(some_done_some_running, f"a quarter of the {total} steps to complete, more running")
        first.send_signal(signal.SIGKILL)
        assert first.wait(DEADLINE) == -signal.SIGKILL, output(tmp_path)
    at_kill = journals(db)
    assert at_kill is not None
    done_at_kill = completed_steps(at_kill)
    assert completed_steps(seen) <= done_at_kill
    assert len(finished(at_kill)) < RUNS, "the worker finished everything before it was killed"
    check_runs_agree(db, at_kill)
    before = executions(log1)
    assert HANG_AT in set(before) - done_at_kill, "the hanging step was not in flight at the kill"

    final = run_to_completion(tmp_path, log2)

    check_results(final)
    check_executions(at_kill, before, executions(log2), final)


@pytest.mark.parametrize("first_group", [3, 25])
def test_a_worker_killed_inside_a_group_commit_loses_the_whole_group(
    tmp_path: Path, first_group: int
) -> None:
    db = tmp_path / "replay.db"
    log1, log2, report = tmp_path / "log-1.txt", tmp_path / "log-2.txt", tmp_path / "group.json"

    with worker(tmp_path, log1, "--kill-in-group", str(first_group), str(report)) as first:
        try:
            code = first.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker never killed itself:\n{output(tmp_path)}") from None
        assert code == -signal.SIGKILL, output(tmp_path)
    group = json.loads(report.read_text())
    before: set[tuple[Any, ...]] = {tuple(row) for row in group["before"]}
    inside: set[tuple[Any, ...]] = {tuple(row) for row in group["inside"]}
    added = inside - before
    assert group["jobs"] >= 2 and len({run_id for run_id, _, _ in added}) >= 2
    assert before < inside

    at_kill = journals(db)
    assert at_kill is not None
    on_disk = {(run_id, e.seq, e.kind) for run_id, es in at_kill.items() for e in es}
    # All or nothing: exactly what was committed before the group, none of the group.
    assert on_disk == before, f"half a group: {sorted(on_disk & added)}"
    check_runs_agree(db, at_kill)

    final = run_to_completion(tmp_path, log2)

    check_results(final)
    check_executions(at_kill, executions(log1), executions(log2), final)
