"""Real processes on one PostgreSQL schema: a worker killed with SIGKILL, the database restarted.

The workers are ``tests/recovery/postgres_worker.py`` in subprocesses; this
process is the client: it starts the runs and waits for their results, which
reach it through LISTEN/NOTIFY (it runs no worker). Each step attempt logs its
start and end, with its process id and the time, to its process's log, so the
logs tell exactly which process ran which step when. Nothing here sleeps for a
fixed time: every wait is on a process, a result or a condition polled with a
deadline.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pytest

from replay import journal as j
from replay.journal import Entry
from tests.recovery.postgres_worker import RUNS, STEPS, build, expected_result, run_ids

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 120.0  # seconds; generous for a loaded machine, never reached when all is well
LEASE = 3  # seconds: a takeover within a few seconds, and heartbeats every second
T = TypeVar("T")
Step = tuple[str, int]  # run id, the step's seq


class Execution(NamedTuple):
    """One step attempt, from a process's log; ``end`` is None if it was cut off."""

    run_id: str
    seq: int
    pid: int
    start: float
    end: float | None


def executions(logs: list[Path]) -> list[Execution]:
    found: dict[tuple[str, int, int, int], Execution] = {}
    for log in logs:
        if not log.exists():
            continue
        for line in log.read_text().splitlines():
            what, run_id, seq, attempt, pid, at = line.split()
            key = (run_id, int(seq), int(attempt), int(pid))
            if what == "start":
                found[key] = Execution(run_id, int(seq), int(pid), float(at), None)
            else:
                found[key] = found[key]._replace(end=float(at))
    return list(found.values())


async def poll(condition: Callable[[], Any], what: str) -> Any:
    """Await ``condition()`` until it returns something other than None; fail after DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    while True:
        got = await condition()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE} s waiting for {what}")
        await asyncio.sleep(0.01)  # a poll interval, not a wait for something to happen


@asynccontextmanager
async def workers(url: str, tmp_path: Path, n: int) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """``n`` worker processes on ``url``, each with its own log; killed on the way out if alive."""
    procs = []
    for i in range(n):
        out = open(tmp_path / f"worker-{i}.out", "wb")  # noqa: SIM115 - closed below
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.recovery.postgres_worker",
            url,
            str(tmp_path / f"log-{i}.txt"),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        procs.append(proc)
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


def output(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("worker-*.out")))


async def journals(store: Any) -> dict[str, list[Entry]]:
    return {info.run_id: await store.read_journal(info.run_id) for info in await store.list_runs(limit=1000)}


def completed(journal: dict[str, list[Entry]]) -> set[Step]:
    return {(r, e.data["op"]) for r, es in journal.items() for e in es if e.kind == j.STEP_COMPLETED}


async def finish(
    app: Any, handles: list[Any], procs: list[asyncio.subprocess.Process], tmp_path: Path
) -> None:
    """Every run ends with its result, every live worker exits 0, no run is left running."""
    results = await asyncio.gather(*(h.result(timeout=DEADLINE) for h in handles))
    assert results == [expected_result(h.run_id) for h in handles]
    for proc in procs:
        if proc.returncode is None:
            async with asyncio.timeout(DEADLINE):
                assert await proc.wait() == 0, output(tmp_path)
    store = await app.store()
    assert {info.status for info in await store.list_runs(limit=1000)} == {"completed"}
    for run_id, entries in (await journals(store)).items():
        ops = [e.data["op"] for e in entries if e.kind == j.STEP_COMPLETED]
        assert len(ops) == len(set(ops)) == STEPS, (run_id, entries)


async def started(url: str, tmp_path: Path) -> tuple[Any, list[Any]]:
    app, steps = build(url, str(tmp_path / "client.txt"))
    handles = [await app.start(steps, run_id=run_id) for run_id in run_ids()]
    return app, handles


async def test_a_worker_killed_with_sigkill_is_taken_over(postgres_url: str, tmp_path: Path) -> None:
    url = f"{postgres_url}&lease={LEASE}"
    logs = [tmp_path / f"log-{i}.txt" for i in range(3)]
    app, handles = await started(url, tmp_path)
    store = await app.store()
    try:
        async with workers(url, tmp_path, 3) as procs:
            pids = [proc.pid for proc in procs]

            async def some_done_some_running() -> int | None:
                if len(completed(await journals(store))) < RUNS * STEPS // 4:
                    return None
                running = Counter(e.pid for e in executions(logs) if e.end is None)
                return max(running, key=lambda pid: running[pid]) if running else None

            victim_pid = await poll(some_done_some_running, "a quarter of the steps done and more running")
            victim = procs[pids.index(victim_pid)]
            victim.send_signal(signal.SIGKILL)
            assert await victim.wait() == -signal.SIGKILL, output(tmp_path)
            killed_at = time.time()
            at_kill = completed(await journals(store))
            await finish(app, handles, procs, tmp_path)

        ran = executions(logs)
        in_flight = {(e.run_id, e.seq) for e in ran if e.pid == victim_pid} - at_kill
        assert any(e.pid == victim_pid and e.end is None for e in ran), "no step was in flight at the kill"
        counts = Counter((e.run_id, e.seq) for e in ran)
        again = {step for step, n in counts.items() if n > 1}
        assert not again & at_kill, f"steps completed before the kill ran again: {sorted(again & at_kill)}"
        assert max(counts.values()) == 2 and again <= in_flight, "only steps in flight at the kill run twice"
        # No run was ever executed by two workers at once: per run, the steps of
        # different processes never overlap (a cut-off step lasted until the kill).
        by_run: dict[str, list[Execution]] = {}
        for e in ran:
            by_run.setdefault(e.run_id, []).append(e)
        for run_id, steps in by_run.items():
            for a in steps:
                for b in steps:
                    if a.pid < b.pid:
                        a_end, b_end = a.end or killed_at, b.end or killed_at
                        assert a_end <= b.start or b_end <= a.start, f"{run_id}: {a} overlaps {b}"
    finally:
        await app.close()


def _cluster(url: str) -> list[str] | None:
    """``[version, name]`` of the local cluster serving ``url``, if this machine runs it."""
    parsed = urllib.parse.urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost") or shutil.which("pg_lsclusters") is None:
        return None
    listed = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False)
    for line in listed.stdout.splitlines():
        version, name, port, *_ = line.split()
        if int(port) == (parsed.port or 5432):
            return [version, name]
    return None


async def test_workers_ride_out_a_database_restart(postgres_url: str, tmp_path: Path) -> None:
    cluster = _cluster(postgres_url)
    if cluster is None or os.geteuid() != 0:
        message = "restarting the database needs root and the local cluster's pg_ctlcluster"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    url = f"{postgres_url}&lease={LEASE}"
    logs = [tmp_path / f"log-{i}.txt" for i in range(2)]
    app, handles = await started(url, tmp_path)
    store = await app.store()
    try:
        async with workers(url, tmp_path, 2) as procs:

            async def a_quarter_done() -> set[Step] | None:
                done = completed(await journals(store))
                return done if len(done) >= RUNS * STEPS // 4 else None

            before = await poll(a_quarter_done, "a quarter of the steps to complete")
            restart = await asyncio.create_subprocess_exec(
                "pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart"
            )
            async with asyncio.timeout(DEADLINE):
                assert await restart.wait() == 0
            await finish(app, handles, procs, tmp_path)

        counts = Counter((e.run_id, e.seq) for e in executions(logs))
        again = {step for step, n in counts.items() if n > 1}
        assert not again & before, f"steps completed before the restart ran again: {sorted(again & before)}"
        assert len(counts) == RUNS * STEPS
    finally:
        await app.close()
