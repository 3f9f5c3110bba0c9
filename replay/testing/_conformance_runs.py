"""Conformance cases for runs: create, read, list, claim, fenced appends and run updates."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from replay import journal as j
from replay.errors import LeaseLost, ReplayInternalError, SerializationError
from replay.journal import Entry
from replay.stores.base import NewRun, RunUpdate, Store
from replay.testing._conformance_kit import (
    T0,
    W1,
    W2,
    Cases,
    Notices,
    begin,
    claimed_ids,
    event,
    new_run,
)

__all__ = ("RunCases",)


class RunCases(Cases):
    """Runs and journals, claims and leases, appends and run updates."""

    # -- create_run ----------------------------------------------------------------------

    async def test_create_run_makes_a_pending_run(self, store: Store) -> None:
        info, new = await store.create_run(new_run("r1", at=T0, args=[1, {"a": "b"}]))
        assert new
        assert (info.run_id, info.workflow, info.status) == ("r1", "wf-r1", "pending")
        assert info.args == [1, {"a": "b"}]
        assert info.created_at == info.updated_at == T0
        assert (info.parent_id, info.wake_at, info.cancel_requested) == (None, None, False)
        assert await store.get_run("r1") == info

    async def test_create_run_writes_workflow_started_with_the_run(self, store: Store) -> None:
        run = new_run("r1")
        await store.create_run(run)
        assert await store.read_journal("r1") == [run.first]

    async def test_create_run_is_idempotent_on_the_run_id(self, store: Store) -> None:
        first, _ = await store.create_run(new_run("r1", at=T0, args=[1]))
        again, new = await store.create_run(new_run("r1", at=T0 + 5, args=[2]))
        assert not new
        assert again == first
        journal = await store.read_journal("r1")
        assert len(journal) == 1 and journal[0].data["args"] == [1]

    async def test_create_run_that_cannot_be_stored_leaves_nothing(self, store: Store) -> None:
        run = new_run("r1")
        bad = Entry(1, j.WORKFLOW_STARTED, T0, {**run.first.data, "oops": object()})
        with pytest.raises(SerializationError):
            await store.create_run(NewRun(run.run_id, run.workflow, run.args, bad))
        assert await store.get_run("r1") is None
        assert await store.read_journal("r1") == []

    async def test_create_run_with_a_journal_writes_it_as_appends_would(self, store: Store) -> None:
        run = new_run("f1", at=T0)
        rest = (
            Entry(2, j.STEP_SCHEDULED, T0 + 1, {"name": "s", "args": []}),
            Entry(3, j.STEP_COMPLETED, T0 + 2, {"op": 2, "attempt": 1, "result": 7}),
            Entry(4, j.WAIT_STARTED, T0 + 3, {"name": "done", "match": {}}),
            Entry(5, j.WAIT_STARTED, T0 + 3, {"name": "go", "match": {"k": 1}}),
            Entry(6, j.EVENT_RECEIVED, T0 + 4, {"op": 4, "event": {"id": "e0", "name": "done"}}),
        )
        forked = attrs.evolve(run, journal=rest, created_at=T0 + 50)
        info, new = await store.create_run(forked)
        assert new
        assert (info.status, info.created_at, info.updated_at) == ("pending", T0 + 50, T0 + 50)
        assert await store.get_run("f1") == info
        assert await store.read_journal("f1") == [run.first, *rest]
        # The open wait (seq 5) was registered; the closed one (seq 4) was not.
        await store.send_event(event("e1", "done", at=T0 + 51))
        sent, _ = await store.send_event(event("e2", "go", {"k": 1}, at=T0 + 51))
        assert await store.poll_waits("f1") == [(5, sent)]
        await store.register_worker(W1)
        assert await claimed_ids(store, W1, [run.workflow], T0 + 51) == {"f1"}

    async def test_create_run_with_a_delivered_cancellation_is_cancel_requested(self, store: Store) -> None:
        rest = (Entry(2, j.CANCEL_REQUESTED, T0, {}),)
        info, _ = await store.create_run(attrs.evolve(new_run("f1"), journal=rest))
        assert info.cancel_requested
        assert await store.get_run("f1") == info

    @pytest.mark.parametrize(
        "rest",
        [
            (Entry(3, j.SIDE_EFFECT, T0, {"name": "x", "value": 1}),),
            (Entry(2, j.WORKFLOW_COMPLETED, T0, {"result": 1}),),
            (Entry(2, j.SIDE_EFFECT, T0, {"name": "x", "value": object()}),),
        ],
        ids=["gap", "terminal", "unencodable"],
    )
    async def test_create_run_with_a_bad_journal_writes_nothing(self, store: Store, rest: Any) -> None:
        with pytest.raises((ReplayInternalError, SerializationError)):
            await store.create_run(attrs.evolve(new_run("f1"), journal=rest))
        assert await store.get_run("f1") is None
        assert await store.read_journal("f1") == []

    async def test_unknown_run_reads_as_none_and_empty(self, store: Store) -> None:
        assert await store.get_run("nope") is None
        assert await store.read_journal("nope") == []
        assert await store.poll_waits("nope") == []

    # -- list_runs -----------------------------------------------------------------------

    async def test_list_runs_newest_first(self, store: Store) -> None:
        for i, at in enumerate([T0 + 1, T0 + 3, T0 + 2]):
            await store.create_run(new_run(f"r{i}", at=at))
        await store.create_run(new_run("tie", at=T0 + 3))  # same time: the later start first
        assert [r.run_id for r in await store.list_runs()] == ["tie", "r1", "r2", "r0"]
        assert [r.run_id for r in await store.list_runs(limit=2)] == ["tie", "r1"]

    async def test_list_runs_filters(self, store: Store) -> None:
        for i in range(4):
            await store.create_run(new_run(f"a{i}", at=T0 + i, workflow="a"))
        await store.create_run(new_run("b0", at=T0 + 1, workflow="b"))
        await store.register_worker(W1)
        await store.claim(W1, ["b"], T0, 10)

        def ids(runs: list[Any]) -> list[str]:
            return [r.run_id for r in runs]

        assert ids(await store.list_runs(workflow="a")) == ["a3", "a2", "a1", "a0"]
        assert ids(await store.list_runs(status="running")) == ["b0"]
        assert ids(await store.list_runs(status="pending", workflow="b")) == []
        assert ids(await store.list_runs(since=T0 + 1, until=T0 + 2)) == ["a2", "b0", "a1"]
        assert ids(await store.list_runs(workflow="a", since=T0 + 2, limit=1)) == ["a3"]

    # -- claim ---------------------------------------------------------------------------

    async def test_claim_takes_a_pending_run(self, store: Store) -> None:
        await store.create_run(new_run("r1", workflow="wf"))
        await store.register_worker(W1)
        [claim] = await store.claim(W1, ["wf"], T0 + 1, 10)
        assert (claim.run_id, claim.workflow, claim.cancel_requested) == ("r1", "wf", False)
        info = await store.get_run("r1")
        assert info is not None and info.status == "running"
        assert await store.claim(W1, ["wf"], T0 + 1, 10) == []

    async def test_claim_only_listed_workflows(self, store: Store) -> None:
        await store.create_run(new_run("a", workflow="a"))
        await store.create_run(new_run("b", workflow="b"))
        await store.register_worker(W1)
        assert await claimed_ids(store, W1, ["b", "c"], T0) == {"b"}
        assert await store.claim(W1, [], T0, 10) == []

    async def test_claim_respects_limit(self, store: Store) -> None:
        for i in range(5):
            await store.create_run(new_run(f"r{i}", workflow="wf"))
        await store.register_worker(W1)
        assert await store.claim(W1, ["wf"], T0, 0) == []
        got = [await claimed_ids(store, W1, ["wf"], T0, 2) for _ in range(4)]
        assert [len(g) for g in got] == [2, 2, 1, 0]
        assert set().union(*got) == {f"r{i}" for i in range(5)}

    async def test_suspended_run_is_claimable_when_due_and_not_before(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        await run.suspend(wake_at=T0 + 100)
        info = await store.get_run("r1")
        assert info is not None and (info.status, info.wake_at) == ("suspended", T0 + 100)
        assert await store.claim(W1, [run.workflow], T0 + 99.5, 10) == []
        claim = await run.reclaim(W1, now=T0 + 100)
        info = await store.get_run("r1")
        assert info is not None and (info.status, info.wake_at) == ("running", None)
        assert claim.token == run.token

    async def test_suspended_run_without_wake_at_is_not_claimable(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        await run.suspend()
        assert await store.claim(W1, [run.workflow], T0 + 1e9, 10) == []

    async def test_never_claims_a_run_owned_by_a_live_worker(self, store: Store) -> None:
        await store.register_worker(W1)
        await store.register_worker(W2)
        run = await begin(store, "r1", worker=W1)
        assert await store.claim(W2, [run.workflow], T0 + 1e9, 10) == []
        assert await store.claim(W1, [run.workflow], T0 + 1e9, 10) == []

    async def test_running_run_of_an_unregistered_worker_is_claimable(self, store: Store) -> None:
        await store.register_worker(W1)
        await store.register_worker(W2)
        run = await begin(store, "r1", worker=W1)
        old = run.token
        await store.unregister_worker(W1)
        await run.reclaim(W2)
        assert run.token != old
        with pytest.raises(LeaseLost):
            await store.append("r1", old, [Entry(2, j.SIDE_EFFECT, T0, {"name": "x", "value": 1})])
        await run.append(j.SIDE_EFFECT, {"name": "x", "value": 2})

    async def test_running_run_of_a_worker_never_registered_is_claimable(self, store: Store) -> None:
        await store.register_worker(W2)
        await store.create_run(new_run("r1", workflow="wf"))
        assert await claimed_ids(store, "ghost", ["wf"], T0) == {"r1"}
        assert await claimed_ids(store, W2, ["wf"], T0) == {"r1"}

    async def test_each_claim_hands_out_a_fresh_token(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        tokens = {run.token}
        for i in range(3):
            await run.suspend(wake_at=T0 + i, at=T0 + i)
            await run.reclaim(W1, now=T0 + i)
            tokens.add(run.token)
        assert len(tokens) == 4

    async def test_a_claim_that_carries_the_journal_carries_all_of_it(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        await store.create_run(new_run("r2", workflow=run.workflow))
        entries = [
            Entry(2, j.STEP_SCHEDULED, T0 + 1, {"name": "charge", "args": [1]}),
            Entry(3, j.STEP_COMPLETED, T0 + 2, {"op": 2, "attempt": 1, "result": "ok"}),
        ]
        await store.append("r1", run.token, entries[:1])
        await store.append(
            "r1", run.token, entries[1:], RunUpdate(status="suspended", wake_at=T0, release=True)
        )
        claims = await store.claim(W1, [run.workflow], T0 + 1, 10)
        assert {c.run_id for c in claims} == {"r1", "r2"}
        for claim in claims:
            if claim.journal is not None:  # optional: None leaves the read to the worker
                assert claim.journal == await store.read_journal(claim.run_id)
        carried = {c.run_id: c.journal for c in claims}
        if carried["r1"] is not None:
            assert [e.seq for e in carried["r1"]] == [1, 2, 3]

    async def test_a_journal_the_claim_cannot_decode_fails_no_other_claim(self, store: Store) -> None:
        # A run a newer replay started (a rolling deploy): this replay cannot read its journal.
        await store.register_worker(W1)
        newer = new_run("r1", workflow="wf")
        newer = attrs.evolve(newer, first=newer.first._replace(data={**newer.first.data, "journal": 10**6}))
        await store.create_run(newer)
        await store.create_run(new_run("r2", workflow="wf"))
        claims = {c.run_id: c for c in await store.claim(W1, ["wf"], T0 + 1, 10)}
        assert set(claims) == {"r1", "r2"}
        assert claims["r1"].journal is None  # the worker's own read fails this run alone
        if claims["r2"].journal is not None:
            assert [e.seq for e in claims["r2"].journal] == [1]

    async def test_registering_an_id_releases_the_runs_a_dead_worker_left_under_it(
        self, store: Store
    ) -> None:
        # A worker restarted under a stable id: the runs its dead predecessor claimed
        # are no live worker's, and go back to be claimed (with a new token).
        await store.create_run(new_run("r1", workflow="wf"))
        [first] = await store.claim(W1, ["wf"], T0, 10)  # by W1, which no live worker holds
        await store.register_worker(W1)
        [again] = await store.claim(W1, ["wf"], T0, 10)
        assert again.run_id == "r1" and again.token > first.token
        with pytest.raises(LeaseLost):
            await store.append("r1", first.token, [Entry(2, j.SIDE_EFFECT, T0, {"name": "n", "value": 1})])

    # -- append --------------------------------------------------------------------------

    async def test_append_continues_the_journal_in_order(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        entries = [
            Entry(2, j.STEP_SCHEDULED, T0 + 1, {"name": "charge", "args": [1]}),
            Entry(3, j.STEP_COMPLETED, T0 + 2, {"op": 2, "attempt": 1, "result": {"ok": [1, 2]}}),
        ]
        await store.append("r1", run.token, entries)
        await store.append("r1", run.token, [Entry(4, j.SIDE_EFFECT, T0 + 3, {"name": "n", "value": 0.5})])
        journal = await store.read_journal("r1")
        assert [e.seq for e in journal] == [1, 2, 3, 4]
        assert journal[1:3] == entries
        assert journal[3].data == {"name": "n", "value": 0.5}

    async def test_append_with_a_stale_token_raises_and_writes_nothing(self, store: Store) -> None:
        await store.register_worker(W1)
        await store.register_worker(W2)
        run = await begin(store, "r1", worker=W1)
        stale = run.token
        await store.unregister_worker(W1)
        await run.reclaim(W2)
        before = await store.get_run("r1")
        update = RunUpdate(status="completed", result=1, release=True)
        with pytest.raises(LeaseLost):
            await store.append("r1", stale, [Entry(2, j.WORKFLOW_COMPLETED, T0, {"result": 1})], update)
        assert [e.seq for e in await store.read_journal("r1")] == [1]
        assert await store.get_run("r1") == before

    async def test_append_to_an_unknown_run_raises_lease_lost(self, store: Store) -> None:
        with pytest.raises(LeaseLost):
            await store.append("nope", 1, [Entry(2, j.SIDE_EFFECT, T0, {})])

    async def test_append_after_release_raises_lease_lost(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        await run.suspend(wake_at=T0 + 10)
        with pytest.raises(LeaseLost):
            await store.append("r1", run.token, [Entry(3, j.SIDE_EFFECT, T0, {})])
        assert len(await store.read_journal("r1")) == 2

    @pytest.mark.parametrize("seqs", [[3], [1], [2, 4], [2, 2]])
    async def test_append_must_continue_the_journal(self, store: Store, seqs: list[int]) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        entries = [Entry(s, j.SIDE_EFFECT, T0, {"name": "x", "value": s}) for s in seqs]
        with pytest.raises(ReplayInternalError):
            await store.append("r1", run.token, entries, RunUpdate(status="completed", release=True))
        assert [e.seq for e in await store.read_journal("r1")] == [1]
        info = await store.get_run("r1")
        assert info is not None and info.status == "running"

    async def test_append_of_an_unencodable_entry_writes_nothing(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        entries = [
            Entry(2, j.SIDE_EFFECT, T0, {"value": 1}),
            Entry(3, j.SIDE_EFFECT, T0, {"value": object()}),
        ]
        with pytest.raises(SerializationError):
            await store.append("r1", run.token, entries)
        assert [e.seq for e in await store.read_journal("r1")] == [1]

    # -- run updates ---------------------------------------------------------------------

    async def test_update_sets_status_and_wake_at_and_updated_at(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        await run.suspend(wake_at=T0 + 60, at=T0 + 5)
        info = await store.get_run("r1")
        assert info is not None
        assert (info.status, info.wake_at, info.updated_at, info.created_at) == (
            "suspended",
            T0 + 60,
            T0 + 5,
            T0,
        )

    async def test_update_completed_keeps_the_result(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        await run.finish("completed", at=T0 + 1, result={"receipt": "x", "n": [1, 2]})
        info = await store.get_run("r1")
        assert info is not None
        assert (info.status, info.result, info.error) == ("completed", {"receipt": "x", "n": [1, 2]}, None)
        assert (await store.read_journal("r1"))[-1].kind == j.WORKFLOW_COMPLETED

    async def test_update_failed_keeps_the_error(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        error = {"type": "NonDeterminismError", "message": "diff", "traceback": "tb"}
        await run.update(RunUpdate(status="failed", error=error, release=True))  # parked: no entry
        info = await store.get_run("r1")
        assert info is not None and (info.status, info.error) == ("failed", error)
        assert len(await store.read_journal("r1")) == 1
        assert await store.claim(W1, [run.workflow], T0 + 1e9, 10) == []

    async def test_update_creates_children_idempotently(self, store: Store) -> None:
        await store.register_worker(W1)
        parent = await begin(store, "p")
        child = new_run("p/2", at=T0 + 1, args=["first"], parent_id="p")
        start = {"name": child.workflow, "args": ["first"], "run_id": "p/2"}
        await parent.append(j.CHILD_STARTED, start, at=T0 + 1, update=RunUpdate(children=(child,)))
        info = await store.get_run("p/2")
        assert info is not None
        assert (info.status, info.parent_id, info.args, info.workflow) == (
            "pending",
            "p",
            ["first"],
            child.workflow,
        )
        assert await store.read_journal("p/2") == [child.first]
        again = new_run("p/2", at=T0 + 2, args=["second"], parent_id="p")
        await parent.append(j.SIDE_EFFECT, {"name": "x", "value": 1}, update=RunUpdate(children=(again,)))
        assert await store.get_run("p/2") == info
        assert await store.read_journal("p/2") == [child.first]
        assert await claimed_ids(store, W1, [child.workflow], T0 + 2) == {"p/2"}

    async def test_requeue_puts_a_parked_run_back_to_pending(self, store: Store) -> None:
        await store.register_worker(W1)
        assert await store.requeue("nope", T0) is None
        run = await begin(store, "r1")
        error = {"type": "NonDeterminismError", "message": "diff", "traceback": "tb"}
        await run.update(RunUpdate(status="failed", error=error, release=True))
        done = await begin(store, "done")
        await done.finish("completed", result=1)
        notices = Notices(store)
        info = await store.requeue("r1", T0 + 5)
        assert info is not None and (info.status, info.error, info.updated_at) == ("pending", None, T0 + 5)
        assert notices.take() == [("ready", "r1")]
        info = await store.requeue("done", T0 + 5)  # only failed runs move
        assert info is not None and info.status == "completed"
        assert notices.take() == []
        assert await claimed_ids(store, W1, [run.workflow], T0 + 5) == {"r1"}
