"""Group commit: concurrent writes share one transaction and one commit; reads never wait."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from replay import journal as j
from replay.errors import LeaseLost, ReplayInternalError, StoreError
from replay.journal import Entry, decode_entries
from replay.stores import _sqlite_writer as writer_module
from replay.stores.base import Notice, RunUpdate
from replay.stores.sqlite import SqliteStore
from replay.testing._conformance_kit import T0, W1, W2, Driven, Notices, begin, event, new_run


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(f"sqlite:///{tmp_path}/r.db")
    await store.open()
    await store.register_worker(W1)
    yield store
    await store.close()


@contextmanager
def write_locked(path: str) -> Iterator[sqlite3.Connection]:
    """Hold the database's write lock from another connection, as another process would."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")
        conn.close()


def committed_seqs(path: str, run_id: str) -> list[int]:
    """The seqs of the run's journal as another connection sees it: committed entries only."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT entry FROM journal WHERE run_id = ? ORDER BY seq", (run_id,))
        return [e.seq for e in decode_entries([r[0] for r in rows])]
    finally:
        conn.close()


async def turns_until(condition: Callable[[], bool]) -> None:
    """Let the event loop run a few turns (no time passes) until ``condition`` holds."""
    for _ in range(10):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition did not come true within 10 loop turns")


async def runs(store: SqliteStore, n: int) -> list[Driven]:
    return [await begin(store, f"r{i}") for i in range(n)]


def step(run: Driven) -> Entry:
    return Entry(run.seq + 1, j.SIDE_EFFECT, T0, {"name": "n", "value": run.run_id})


async def test_concurrent_appends_share_commits_and_resume_after_them(store: SqliteStore) -> None:
    owned = await runs(store, 50)
    resumed_with: dict[str, list[int]] = {}

    async def append(run: Driven) -> None:
        await store.append(run.run_id, run.token, [step(run)])
        # Resumed: the entry must already be committed, visible to any other connection.
        resumed_with[run.run_id] = committed_seqs(store.path, run.run_id)

    before = store.commits
    with write_locked(store.path):  # the writer stalls on its first group; the rest queue
        tasks = [asyncio.create_task(append(run)) for run in owned]
        await asyncio.sleep(0)  # one loop turn: every task has queued its append
        assert not resumed_with
    await asyncio.gather(*tasks)
    assert store.commits - before <= 2 < len(owned)
    assert resumed_with == {run.run_id: [1, 2] for run in owned}


async def test_a_stale_token_fails_alone_in_its_group(store: SqliteStore) -> None:
    owned = await runs(store, 10)
    stale = owned[3]
    old_token = stale.token
    await stale.suspend(wake_at=T0)  # released, then taken by another worker: old_token is stale
    await store.register_worker(W2)
    await stale.reclaim(W2)
    before = store.commits
    with write_locked(store.path):
        tasks = [
            asyncio.create_task(
                store.append(run.run_id, old_token if run is stale else run.token, [step(run)])
            )
            for run in owned
        ]
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert store.commits - before <= 2
    assert isinstance(results[3], LeaseLost)
    assert committed_seqs(store.path, stale.run_id) == [1, 2]
    for run, result in zip(owned, results, strict=True):
        if run is not stale:
            assert result is None
            assert committed_seqs(store.path, run.run_id) == [1, 2]


def _end(store: SqliteStore, run: Driven, token: int | None = None) -> asyncio.Task[None]:
    """Append the run's ``workflow_completed`` with the update a worker sends with it."""
    entry = Entry(run.seq + 1, j.WORKFLOW_COMPLETED, T0 + 5, {"result": run.run_id})
    update = RunUpdate(status="completed", result=run.run_id, release=True)
    token = run.token if token is None else token
    return asyncio.create_task(store.append(run.run_id, token, [entry], update))


async def test_runs_ending_in_one_group_each_end_as_if_alone(store: SqliteStore) -> None:
    parent = await begin(store, "parent")
    await parent.suspend()  # waits for its child: a child's end wakes it
    kid = await begin(store, "kid", parent_id="parent")
    owned = [kid, *await runs(store, 4)]
    await owned[1].wait("paid")  # a side-table row that the run's end clears
    notices = Notices(store)
    before = store.commits
    with write_locked(store.path):  # one group, one batch, for all of them
        tasks = [_end(store, run) for run in owned]
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert store.commits - before <= 2
    for run in owned:
        info = await store.get_run(run.run_id)
        assert info is not None
        assert (info.status, info.result, info.updated_at) == ("completed", run.run_id, T0 + 5)
        assert committed_seqs(store.path, run.run_id)[-1] == run.seq + 1
        assert await store.claim(W2, [run.workflow], T0 + 5, 10) == []  # released, and ended
    with sqlite3.connect(store.path) as conn:  # its wait went with it
        assert conn.execute("SELECT COUNT(*) FROM waits").fetchone() == (0,)
    woken = await store.get_run("parent")
    assert woken is not None and woken.wake_at == T0 + 5
    assert notices.take() == sorted([*(("finished", run.run_id) for run in owned), ("ready", "parent")])


async def test_a_stale_token_fails_alone_among_runs_ending_in_one_group(store: SqliteStore) -> None:
    owned = await runs(store, 4)
    stale = owned[2]
    old_token = stale.token
    await stale.suspend(wake_at=T0)
    await store.register_worker(W2)
    await stale.reclaim(W2)
    with write_locked(store.path):
        tasks = [_end(store, run, old_token if run is stale else None) for run in owned]
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[2], LeaseLost)
    statuses = [info.status for info in [await store.get_run(run.run_id) for run in owned] if info]
    assert statuses == ["completed", "completed", "running", "completed"]
    assert committed_seqs(store.path, stale.run_id) == [1, 2]


async def test_runs_started_in_one_group_are_created_as_if_alone(store: SqliteStore) -> None:
    existing, _ = await store.create_run(new_run("old", args=[1]))
    with sqlite3.connect(store.path) as conn:  # a start that joined "old" (as a debounce does)
        conn.execute("INSERT INTO run_aliases (alias, run_id) VALUES ('joined', 'old')")
    notices = Notices(store)
    before = store.commits
    ids = ["a", "old", "b", "joined", "c"]
    with write_locked(store.path):  # one group, one batch
        tasks = [asyncio.create_task(store.create_run(new_run(i, args=[2]))) for i in ids]
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks)
    assert store.commits - before <= 2
    assert [new for _, new in results] == [True, False, True, False, True]
    assert results[1][0] == results[3][0] == existing  # the run that exists, as it was
    for run_id, (info, _) in zip(ids, results, strict=True):
        if run_id in ("a", "b", "c"):
            assert info == await store.get_run(run_id)
            assert (info.status, info.args) == ("pending", [2])
            assert [e.kind for e in await store.read_journal(run_id)] == [j.WORKFLOW_STARTED]
    assert await store.get_run("joined") is None
    assert notices.take() == [("ready", "a"), ("ready", "b"), ("ready", "c")]


async def test_reads_do_not_wait_for_the_writer(store: SqliteStore) -> None:
    [run] = await runs(store, 1)
    with write_locked(store.path):
        pending = asyncio.create_task(store.append(run.run_id, run.token, [step(run)]))
        await turns_until(lambda: store._writer is not None and store._writer.lock_waits == 1)
        info = await store.get_run(run.run_id)  # served while the writer waits for the lock
        assert info is not None and info.status == "running"
        assert [e.seq for e in await store.read_journal(run.run_id)] == [1]
        assert not pending.done()
    await pending
    assert [e.seq for e in await store.read_journal(run.run_id)] == [1, 2]


async def test_a_job_that_fails_after_writing_is_undone_alone(store: SqliteStore) -> None:
    owned = await runs(store, 3)

    def half_done(conn: sqlite3.Connection, notices: list[Notice]) -> None:
        conn.execute("INSERT INTO events (id, name, data, at) VALUES ('half', 'x', '{}', 1.0)")
        notices.append(Notice("ready", "nobody"))
        conn.execute("SELECT * FROM no_such_table")

    assert store._writer is not None
    heard = Notices(store)
    before = store.commits
    with write_locked(store.path):
        tasks = [asyncio.create_task(store.append(run.run_id, run.token, [step(run)])) for run in owned]
        tasks.insert(1, asyncio.create_task(store._writer.submit(half_done)))
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert store.commits - before <= 2
    assert isinstance(results[1], StoreError) and "no_such_table" in str(results[1])
    assert [r for i, r in enumerate(results) if i != 1] == [None, None, None]
    assert (await store.send_event(event("half", "y")))[1]  # the half-done insert was undone
    assert ("ready", "nobody") not in heard.take()
    for run in owned:
        assert committed_seqs(store.path, run.run_id) == [1, 2]


async def test_the_writer_recovers_from_a_group_cancelled_mid_way(store: SqliteStore) -> None:
    first, second = await runs(store, 2)
    writer = store._writer
    assert writer is not None
    with write_locked(store.path):
        cancelled = asyncio.create_task(store.append(first.run_id, first.token, [step(first)]))
        await turns_until(lambda: writer.lock_waits == 1)
        assert writer._drain is not None
        writer._drain.cancel()  # as a loop shutting down would, while the thread waits for the lock
        with pytest.raises(asyncio.CancelledError):
            await cancelled
    # The thread's BEGIN went through once the lock was free; the next group rolls it back.
    await store.append(second.run_id, second.token, [step(second)])
    assert committed_seqs(store.path, second.run_id) == [1, 2]
    assert committed_seqs(store.path, first.run_id) == [1]
    await store.append(first.run_id, first.token, [step(first)])
    assert committed_seqs(store.path, first.run_id) == [1, 2]


async def test_several_failures_in_one_group_each_fail_alone_and_the_rest_run_once(
    store: SqliteStore,
) -> None:
    # The writer runs a group without isolating its jobs; when one raises it rolls the
    # group back and runs it again, each job in a SAVEPOINT. What the first run of the
    # others produced (rows, notices, results) must count once, and a second failure,
    # met only on the second run, must fail alone too.
    owned = await runs(store, 4)
    calls: dict[str, int] = {}

    def job(name: str, fail: bool) -> Callable[[sqlite3.Connection, list[Notice]], str]:
        def run(conn: sqlite3.Connection, notices: list[Notice]) -> str:
            calls[name] = calls.get(name, 0) + 1
            conn.execute("INSERT INTO events (id, name, data, at) VALUES (?, 'x', '{}', 1.0)", (name,))
            notices.append(Notice("news", name))
            if fail:
                raise LeaseLost(f"{name} lost")
            return name

        return run

    assert store._writer is not None
    writer = store._writer
    heard = Notices(store)
    before = store.commits
    with write_locked(store.path):
        tasks = [
            asyncio.create_task(writer.submit(job("a", False))),
            asyncio.create_task(writer.submit(job("bad1", True))),
            asyncio.create_task(writer.submit(job("b", False))),
            asyncio.create_task(writer.submit(job("bad2", True))),
            *(asyncio.create_task(store.append(run.run_id, run.token, [step(run)])) for run in owned),
        ]
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert store.commits - before <= 2
    assert results[0] == "a" and results[2] == "b"
    assert isinstance(results[1], LeaseLost) and isinstance(results[3], LeaseLost)
    assert results[4:] == [None] * len(owned)
    assert heard.take() == [("news", "a"), ("news", "b")]  # each once; none of the failed ones
    assert not (await store.send_event(event("a", "y")))[1]  # kept
    assert (await store.send_event(event("bad1", "y")))[1]  # undone
    assert (await store.send_event(event("bad2", "y")))[1]  # undone
    for run in owned:
        assert committed_seqs(store.path, run.run_id) == [1, 2]
    assert calls["bad1"] == 1  # the job that raised first is not run again


async def test_plain_appends_of_one_run_in_one_group_land_in_order(store: SqliteStore) -> None:
    # Plain appends run many to a statement, but two of one run cannot share one:
    # the second must see the first's entry as the journal's last.
    [run] = await runs(store, 1)
    first = Entry(2, j.SIDE_EFFECT, T0, {"name": "n", "value": 1})
    second = Entry(3, j.SIDE_EFFECT, T0, {"name": "n", "value": 2})
    before = store.commits
    with write_locked(store.path):
        tasks = [
            asyncio.create_task(store.append(run.run_id, run.token, [first])),
            asyncio.create_task(store.append(run.run_id, run.token, [second])),
        ]
        await asyncio.sleep(0)
    assert await asyncio.gather(*tasks) == [None, None]
    assert store.commits - before <= 2
    assert [e.data["value"] for e in (await store.read_journal(run.run_id))[1:]] == [1, 2]


async def test_an_append_out_of_sequence_fails_alone_in_its_batch(store: SqliteStore) -> None:
    owned = await runs(store, 5)
    bad = owned[2]
    with write_locked(store.path):
        tasks = [
            asyncio.create_task(
                store.append(
                    run.run_id,
                    run.token,
                    [Entry(run.seq + (5 if run is bad else 1), j.SIDE_EFFECT, T0, {"name": "n", "value": 0})],
                )
            )
            for run in owned
        ]
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[2], ReplayInternalError)
    assert [r for i, r in enumerate(results) if i != 2] == [None] * 4
    assert committed_seqs(store.path, bad.run_id) == [1]
    for run in owned:
        if run is not bad:
            assert committed_seqs(store.path, run.run_id) == [1, 2]


async def test_waits_appended_in_one_batch_each_get_their_event(store: SqliteStore) -> None:
    owned = await runs(store, 4)
    with write_locked(store.path):
        tasks = [asyncio.create_task(run.wait("paid", {"order": run.run_id})) for run in owned]
        await asyncio.sleep(0)
    seqs = await asyncio.gather(*tasks)
    for run in owned:
        await store.send_event(event(f"e-{run.run_id}", "paid", {"order": run.run_id}))
    for run, seq in zip(owned, seqs, strict=True):
        [(got_seq, got)] = await store.poll_waits(run.run_id)
        assert (got_seq, got.id) == (seq, f"e-{run.run_id}")


class _Batched:
    """A job type the writer batches, whose batch fails without saying which job is to blame."""

    def __init__(self, name: str, fail: bool, calls: list[str]) -> None:
        self.key = name
        self.fail = fail
        self.calls = calls

    def __call__(self, conn: sqlite3.Connection, notices: list[Notice]) -> str:
        self.calls.append(self.key)
        conn.execute("INSERT INTO events (id, name, data, at) VALUES (?, 'x', '{}', 1.0)", (self.key,))
        if self.fail:
            raise LeaseLost(f"{self.key} lost")
        return self.key

    @staticmethod
    def run_many(conn: sqlite3.Connection, jobs: list[_Batched], notices: list[list[Notice]]) -> None:
        conn.execute("INSERT INTO events (id, name, data, at) VALUES ('partial', 'x', '{}', 1.0)")
        raise RuntimeError("one of these failed")


async def test_a_batch_that_fails_as_a_whole_is_run_again_job_by_job(store: SqliteStore) -> None:
    writer = store._writer
    assert writer is not None
    calls: list[str] = []
    with write_locked(store.path):
        tasks = [
            asyncio.create_task(writer.submit(_Batched(name, name == "b", calls))) for name in ("a", "b", "c")
        ]
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == "a" and results[2] == "c"
    assert isinstance(results[1], LeaseLost)
    assert sorted(calls) == ["a", "b", "c"]  # each alone, once
    assert (await store.send_event(event("partial", "y")))[1]  # the batch's own write was undone
    assert not (await store.send_event(event("a", "y")))[1]  # kept
    assert (await store.send_event(event("b", "y")))[1]  # undone


async def test_a_group_commits_on_the_writer_thread_and_a_lone_job_on_the_loop(store: SqliteStore) -> None:
    first, second = await runs(store, 2)
    writer = store._writer
    assert writer is not None and writer._conn is not None
    commits: list[str] = []

    def trace(sql: str) -> None:
        if sql == "COMMIT":
            commits.append(threading.current_thread().name)

    writer._conn.set_trace_callback(trace)
    await asyncio.gather(*(store.append(r.run_id, r.token, [step(r)]) for r in (first, second)))
    await store.append(first.run_id, first.token, [Entry(3, j.SIDE_EFFECT, T0, {"name": "n", "value": 3})])
    writer._conn.set_trace_callback(None)
    assert [name.startswith("replay-sqlite-writer") for name in commits] == [True, False]
    assert committed_seqs(store.path, first.run_id) == [1, 2, 3]


async def test_the_loop_does_not_wait_for_a_writer_thread_that_cannot_start(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loop hands a group's COMMIT to the thread and waits, GIL released, for the
    # thread to take it: a bounded wait. Here the thread is busy until a loop callback
    # frees it, so the appends complete only if the loop went on.
    first, second = await runs(store, 2)
    writer = store._writer
    assert writer is not None and writer._thread is not None
    free = threading.Event()
    busy = writer._thread.submit(free.wait)
    loop = asyncio.get_running_loop()
    handed: list[int] = []

    freed_by: list[str] = []

    def free_from(who: str) -> None:
        if not free.is_set():
            freed_by.append(who)
            free.set()

    def before_commit(conn: sqlite3.Connection, jobs: int) -> None:
        handed.append(jobs)
        loop.call_soon(free_from, "loop")  # runs once the loop is back from handing the COMMIT over

    monkeypatch.setattr(writer_module, "before_commit", before_commit)
    watchdog = threading.Timer(10, free_from, ["watchdog"])  # a blocked loop would hang the test
    watchdog.start()
    try:
        await asyncio.gather(*(store.append(r.run_id, r.token, [step(r)]) for r in (first, second)))
    finally:
        watchdog.cancel()
    assert handed == [2]
    assert freed_by == ["loop"]
    assert busy.result() is True
    assert committed_seqs(store.path, first.run_id) == committed_seqs(store.path, second.run_id) == [1, 2]


async def test_a_write_whose_caller_was_cancelled_before_its_group_ran_is_not_run(
    store: SqliteStore, tmp_path: Path
) -> None:
    # A claim cancelled while queued (a worker draining, say) must not take runs
    # that no driver would then drive.
    await store.create_run(new_run("r1", workflow="wf"))
    with write_locked(f"{tmp_path}/r.db"):
        ahead = asyncio.create_task(store.create_run(new_run("r0", workflow="other")))
        await turns_until(lambda: store._writer is not None and store._writer.lock_waits == 1)
        claim = asyncio.create_task(store.claim(W1, ["wf"], T0, 10))
        await turns_until(lambda: store._writer is not None and len(store._writer._queue) == 1)
        claim.cancel()
    await ahead
    with pytest.raises(asyncio.CancelledError):
        await claim
    info = await store.get_run("r1")
    assert info is not None and info.status == "pending"
    [again] = await store.claim(W1, ["wf"], T0, 10)
    assert again.run_id == "r1" and again.token == 1
