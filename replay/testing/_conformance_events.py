"""Conformance cases for events and waits, waking suspended runs, wake times and notices."""

from __future__ import annotations

from typing import Any

import pytest

from replay import journal as j
from replay.stores.base import RunUpdate, Status, Store
from replay.testing._conformance_kit import T0, W1, W2, Cases, Driven, Notices, begin, event, new_run

__all__ = ("EventCases",)


async def start_child(parent: Driven, child_id: str, *, at: float = T0) -> Driven:
    """Journal a child start in ``parent`` (creating the child) and claim the child."""
    child = new_run(child_id, at=at, parent_id=parent.run_id)
    data = {"name": child.workflow, "args": child.args, "run_id": child_id}
    await parent.append(j.CHILD_STARTED, data, at=at, update=RunUpdate(children=(child,)))
    driven = Driven(parent.store, child_id, child.workflow, token=0)
    await driven.reclaim(W2, now=at)
    return driven


class EventCases(Cases):
    """Events and waits, wake-ups, the news-while-suspending rule, wake times, notices."""

    # -- events --------------------------------------------------------------------------

    async def test_send_event_is_idempotent_on_its_id(self, store: Store) -> None:
        first, new = await store.send_event(event("e1", "paid", {"n": 1}, at=T0))
        assert new and (first.id, first.name, first.data, first.at) == ("e1", "paid", {"n": 1}, T0)
        again, new = await store.send_event(event("e1", "other", {"n": 2}, at=T0 + 1))
        assert not new and again == first

    async def test_event_positions_increase(self, store: Store) -> None:
        positions = [(await store.send_event(event(f"e{i}", "x")))[0].position for i in range(5)]
        assert positions == sorted(positions) and len(set(positions)) == 5

    # -- waits ---------------------------------------------------------------------------

    async def test_wait_sees_a_matching_event_sent_after_it(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        seq = await run.wait("shipped", {"order": "o-1"})
        assert await store.poll_waits("r1") == []
        sent, _ = await store.send_event(event("e1", "shipped", {"order": "o-1", "by": "ups"}, at=T0 + 1))
        assert await store.poll_waits("r1") == [(seq, sent)]

    async def test_wait_ignores_events_sent_before_it(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        await store.send_event(event("early", "shipped", {"order": "o-1"}))
        await run.wait("shipped", {"order": "o-1"})
        assert await store.poll_waits("r1") == []

    @pytest.mark.parametrize(
        ("name", "data", "matches"),
        [
            ("shipped", {"order": "o-1"}, True),
            ("shipped", {"order": "o-1", "extra": [1]}, True),
            ("shipped", {"order": "o-2"}, False),
            ("shipped", {}, False),
            ("other", {"order": "o-1"}, False),
            ("nested", {"a": {"b": 1, "c": 2}, "d": [1, 2]}, True),
            ("nested", {"a": {"b": 1}, "d": [1, 2]}, False),
            ("nested", {"a": {"b": 1, "c": 3}, "d": [1, 2]}, False),
            ("nested", {"a": {"b": 1, "c": 2}, "d": [1, 2, 3]}, False),
        ],
    )
    async def test_wait_matches_name_and_containment(
        self, store: Store, name: str, data: dict[str, Any], matches: bool
    ) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        match = {"order": "o-1"} if name != "nested" else {"a": {"c": 2}, "d": [1, 2]}
        await run.wait("shipped" if name != "nested" else "nested", match)
        await store.send_event(event("e1", name, data))
        assert bool(await store.poll_waits("r1")) is matches

    async def test_wait_gets_the_first_matching_event(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        seq = await run.wait("x", {"k": 1})
        await store.send_event(event("no", "x", {"k": 2}))
        first, _ = await store.send_event(event("first", "x", {"k": 1}, at=T0 + 1))
        await store.send_event(event("second", "x", {"k": 1}, at=T0 + 2))
        assert await store.poll_waits("r1") == [(seq, first)]

    async def test_wait_with_a_timeout_ignores_events_after_it(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        seq = await run.wait("x", {}, timeout_at=T0 + 50)
        await store.send_event(event("late", "x", at=T0 + 51))
        assert await store.poll_waits("r1") == []
        on_time, _ = await store.send_event(event("on-time", "x", at=T0 + 50))
        assert await store.poll_waits("r1") == [(seq, on_time)]

    async def test_poll_waits_reports_every_open_wait(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        a = await run.wait("a")
        await run.wait("b")
        c = await run.wait("c")
        ec, _ = await store.send_event(event("ec", "c"))
        ea, _ = await store.send_event(event("ea", "a"))
        assert sorted(await store.poll_waits("r1")) == sorted([(a, ea), (c, ec)])

    @pytest.mark.parametrize("kind", [j.EVENT_RECEIVED, j.WAIT_TIMED_OUT])
    async def test_wait_ends_with_its_outcome_entry(self, store: Store, kind: str) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        seq = await run.wait("x")
        other = await run.wait("x")
        sent, _ = await store.send_event(event("e1", "x"))
        data: dict[str, Any] = {"op": seq}
        if kind == j.EVENT_RECEIVED:
            data["event"] = {"id": sent.id, "name": sent.name, "data": sent.data, "at": sent.at}
        await run.append(kind, data)
        assert await store.poll_waits("r1") == [(other, sent)]

    async def test_waits_of_a_finished_run_are_gone(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        await run.wait("x")
        await run.finish("cancelled")
        await store.send_event(event("e1", "x"))
        assert await store.poll_waits("r1") == []

    async def test_a_parked_run_keeps_its_waits_for_a_retry(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        seq = await run.wait("x")
        error = {"type": "NonDeterminismError", "message": "diff", "traceback": ""}
        await run.update(RunUpdate(status="failed", error=error, release=True))  # parked: no end entry
        await store.send_event(event("e1", "x"))
        await store.requeue("r1", T0 + 1)
        assert [(s, e.id) for s, e in await store.poll_waits("r1")] == [(seq, "e1")]

    # -- waking suspended runs -----------------------------------------------------------

    async def test_matching_event_wakes_a_suspended_run(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        await run.wait("x", {"k": 1})
        await run.suspend()
        notices = Notices(store)
        await store.send_event(event("miss", "x", {"k": 2}, at=T0 + 5))
        assert notices.take() == []
        assert await store.claim(W1, [run.workflow], T0 + 1e9, 10) == []
        await store.send_event(event("hit", "x", {"k": 1}, at=T0 + 10))
        assert notices.take() == [("ready", "r1")]
        assert await store.claim(W1, [run.workflow], T0 + 9, 10) == []
        await run.reclaim(W1, now=T0 + 10)

    @pytest.mark.parametrize(
        ("timer", "sent", "wake"), [(T0 + 50, T0 + 100, T0 + 50), (T0 + 500, T0 + 10, T0 + 10)]
    )
    async def test_event_wakes_at_the_earlier_of_its_time_and_the_timer(
        self, store: Store, timer: float, sent: float, wake: float
    ) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        await run.wait("x")
        await run.suspend(wake_at=timer)
        await store.send_event(event("e1", "x", at=sent))
        info = await store.get_run("r1")
        assert info is not None and info.wake_at == wake
        assert await store.next_wake_at([run.workflow]) == wake

    async def test_event_for_a_running_run_is_news(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        await run.wait("x")
        notices = Notices(store)
        await store.send_event(event("e1", "x"))
        assert notices.take() == [("news", "r1")]

    async def test_runs_with_news_lists_each_owned_runs_undelivered_news(self, store: Store) -> None:
        await store.register_worker(W1)
        await store.register_worker(W2)
        quiet = await begin(store, "quiet")
        await quiet.wait("x", {"k": 1})
        cancelled = await begin(store, "cancelled")
        waiting = await begin(store, "waiting")
        await waiting.wait("x", {"k": 2})
        parent = await begin(store, "parent")
        child = await start_child(parent, "parent/2")  # owned by W2
        elsewhere = await begin(store, "elsewhere", worker=W2)
        assert await store.runs_with_news(W1) == []
        await store.request_cancel("cancelled", T0 + 1)
        await store.request_cancel("elsewhere", T0 + 1)
        await store.send_event(event("e1", "x", {"k": 2}))
        await child.finish("completed", result=3)
        assert sorted(await store.runs_with_news(W1)) == ["cancelled", "parent", "waiting"]
        assert await store.runs_with_news(W2) == ["elsewhere"]
        # Journaled news is news no more; a suspended run is not the worker's to hear it.
        await cancelled.append(j.CANCEL_REQUESTED)
        await waiting.suspend()
        await parent.append(j.CHILD_COMPLETED, {"op": 2, "run_id": "parent/2", "status": "completed"})
        assert await store.runs_with_news(W1) == []
        assert await store.runs_with_news(W2) == [elsewhere.run_id]

    @pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
    async def test_finished_child_wakes_its_suspended_parent(self, store: Store, status: Status) -> None:
        await store.register_worker(W1)
        await store.register_worker(W2)
        parent = await begin(store, "p")
        child = await start_child(parent, "p/2")
        await parent.suspend()
        notices = Notices(store)
        await child.finish(status, at=T0 + 7)
        assert notices.take() == [("finished", "p/2"), ("ready", "p")]
        await parent.reclaim(W1, now=T0 + 7)

    async def test_finished_child_is_news_for_its_running_parent(self, store: Store) -> None:
        await store.register_worker(W1)
        await store.register_worker(W2)
        parent = await begin(store, "p")
        child = await start_child(parent, "p/2")
        notices = Notices(store)
        await child.finish("completed", result=3)
        assert notices.take() == [("finished", "p/2"), ("news", "p")]

    async def test_request_cancel(self, store: Store) -> None:
        await store.register_worker(W1)
        assert await store.request_cancel("nope", T0) is None
        await begin(store, "running")
        suspended = await begin(store, "suspended")
        await suspended.suspend()
        done = await begin(store, "done")
        await done.finish("completed")
        await store.create_run(new_run("pending"))
        notices = Notices(store)
        for run_id in ("running", "suspended", "done", "pending"):
            info = await store.request_cancel(run_id, T0 + 3)
            assert info is not None and info.cancel_requested is (run_id != "done")
        assert notices.take() == [("finished", "pending"), ("news", "running"), ("ready", "suspended")]
        claim = await suspended.reclaim(W1, now=T0 + 3)
        assert claim.cancel_requested
        # A run that never began ends at once: there is no workflow code to tell.
        info = await store.get_run("pending")
        assert info is not None and info.status == "cancelled"
        assert [e.kind for e in await store.read_journal("pending")] == [
            j.WORKFLOW_STARTED,
            j.WORKFLOW_CANCELLED,
        ]
        assert await store.claim(W1, ["wf-pending"], T0, 1) == []
        info = await store.get_run("done")
        assert info is not None and (info.status, info.cancel_requested) == ("completed", False)
        await store.request_cancel("suspended", T0 + 4)  # a second request changes nothing
        assert notices.take() == []

    # -- news that arrives while the owner suspends ------------------------------------

    async def test_suspending_with_a_matching_event_waiting_wakes_at_once(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        await run.wait("x", {"k": 1})
        await store.send_event(event("e1", "x", {"k": 1}, at=T0 + 1))
        notices = Notices(store)
        await run.append(j.TIMER_STARTED, {"until": T0 + 1000}, at=T0 + 5)
        await run.append(j.SIDE_EFFECT, {"name": "n", "value": 1}, at=T0 + 6, update=_suspend(T0 + 1000))
        info = await store.get_run("r1")
        assert info is not None and (info.status, info.wake_at) == ("suspended", T0 + 6)
        assert notices.take() == [("ready", "r1")]
        await run.reclaim(W1, now=T0 + 6)

    async def test_suspending_with_news_and_no_timer_wakes_at_once(self, store: Store) -> None:
        await store.register_worker(W1)
        await store.register_worker(W2)
        parent = await begin(store, "p")
        child = await start_child(parent, "p/2", at=T0 + 1)
        await child.finish("completed", at=T0 + 2)
        await parent.append(j.SIDE_EFFECT, {"name": "n", "value": 1}, at=T0 + 3, update=_suspend(None))
        info = await store.get_run("p")
        assert info is not None and info.wake_at == T0 + 3
        await parent.reclaim(W1, now=T0 + 3)

    async def test_suspending_with_an_undelivered_cancel_wakes_at_once(self, store: Store) -> None:
        await store.register_worker(W1)
        run = await begin(store, "r1")
        await store.request_cancel("r1", T0 + 1)
        await run.append(j.SIDE_EFFECT, {"name": "n", "value": 1}, at=T0 + 2, update=_suspend(None))
        await run.reclaim(W1, now=T0 + 2)
        await run.append(j.CANCEL_REQUESTED, {}, at=T0 + 3)
        await run.append(j.SIDE_EFFECT, {"name": "n", "value": 2}, at=T0 + 4, update=_suspend(None))
        assert await store.claim(W1, [run.workflow], T0 + 1e9, 10) == []

    async def test_delivered_or_foreign_news_does_not_wake(self, store: Store) -> None:
        await store.register_worker(W1)
        await store.register_worker(W2)
        parent = await begin(store, "p")
        await store.send_event(event("before", "x"))
        await parent.wait("x")
        await parent.wait("y", timeout_at=T0 + 5)
        await store.send_event(event("late", "y", at=T0 + 6))
        await store.send_event(event("other", "z"))
        child = await start_child(parent, "p/9")
        await child.finish("completed", result=1)
        done = {"op": parent.seq, "run_id": "p/9", "status": "completed", "result": 1}
        await parent.append(j.CHILD_COMPLETED, done, at=T0 + 7, update=_suspend(None))
        info = await store.get_run("p")
        assert info is not None and (info.status, info.wake_at) == ("suspended", None)
        assert await store.claim(W1, [parent.workflow], T0 + 1e9, 10) == []

    # -- wake times and notices --------------------------------------------------------

    async def test_next_wake_at(self, store: Store) -> None:
        await store.register_worker(W1)
        a, b, c = [await begin(store, i) for i in "abc"]
        names = [a.workflow, b.workflow, c.workflow]
        assert await store.next_wake_at(names) is None
        await a.suspend(wake_at=T0 + 30)
        await b.suspend(wake_at=T0 + 20)
        await c.suspend()
        assert await store.next_wake_at(names) == T0 + 20
        assert await store.next_wake_at([a.workflow, c.workflow]) == T0 + 30
        assert await store.next_wake_at([c.workflow, "unknown"]) is None
        await b.reclaim(W1, now=T0 + 20)
        assert await store.next_wake_at(names) == T0 + 30

    async def test_notices_reach_listeners_in_this_process(self, store: Store) -> None:
        notices = Notices(store)
        await store.create_run(new_run("r1"))
        await store.create_run(new_run("r1"))  # not new: no notice
        assert notices.take() == [("ready", "r1")]
        await store.register_worker(W1)
        run = Driven(store, "r1", "wf-r1", token=0)
        await run.reclaim(W1)
        await run.wait("x")
        await run.suspend(wake_at=T0 + 10)
        assert notices.take() == [("ready", "r1")]
        await run.reclaim(W1, now=T0 + 10)
        await store.unregister_worker(W1)
        assert notices.take() == [("ready", "r1")]
        await store.register_worker(W2)
        await run.reclaim(W2)
        await run.suspend()  # nothing to wake it: no notice
        assert notices.take() == []
        await store.send_event(event("e1", "x", at=T0 + 11))
        assert notices.take() == [("ready", "r1")]
        await run.reclaim(W2, now=T0 + 11)
        await run.finish("completed", result=None)
        assert notices.take() == [("finished", "r1")]
        notices.unsubscribe()
        await store.create_run(new_run("r2"))
        assert notices.take() == []


def _suspend(wake_at: float | None) -> RunUpdate:
    return RunUpdate(status="suspended", wake_at=wake_at, release=True)
