"""Conformance cases for flow control: delays, concurrency, priority, limits, cancel_on, triggers, cron."""

from __future__ import annotations

from typing import Any

import attrs

from replay import journal as j
from replay.stores.base import DebounceRule, Flow, Gate, NewRun, Notice, RunUpdate, Store
from replay.testing._conformance_kit import T0, W1, W2, Cases, Driven, Notices, event, new_run

__all__ = ("FlowCases",)

WF = "flowed"


def flowed(run_id: str, flow: Flow, *, at: float = T0, args: list[Any] | None = None) -> NewRun:
    """A run of the shared workflow ``WF`` under ``flow``."""
    return attrs.evolve(new_run(run_id, at=at, workflow=WF, args=args), flow=flow)


async def claim_ids(store: Store, now: float = T0, limit: int = 100, worker: str = W1) -> list[str]:
    """Claim what can be claimed of ``WF``; the run ids, in claim order."""
    return [c.run_id for c in await store.claim(worker, [WF], now, limit)]


class FlowCases(Cases):
    """Flow control as ``replay.stores.base`` describes it."""

    # -- concurrency and priority ----------------------------------------------------------

    async def test_concurrency_caps_running_runs_per_key(self, store: Store) -> None:
        await store.register_worker(W1)
        gate = Flow(concurrency=Gate(f"{WF}:a", 2))
        for i in range(4):
            await store.create_run(flowed(f"a{i}", gate))
        await store.create_run(flowed("b0", Flow(concurrency=Gate(f"{WF}:b", 2))))
        await store.create_run(flowed("free", Flow()))
        assert await claim_ids(store) == ["a0", "a1", "b0", "free"]
        assert await claim_ids(store) == []  # a2 and a3 wait for a slot

    async def test_a_slot_frees_when_a_run_suspends_or_ends(self, store: Store) -> None:
        await store.register_worker(W1)
        gate = Flow(concurrency=Gate(WF, 1))
        for i in range(3):
            await store.create_run(flowed(f"r{i}", gate))
        [claim] = await store.claim(W1, [WF], T0, 10)
        first = Driven(store, claim.run_id, WF, claim.token)
        notices = Notices(store)
        await first.suspend(T0 + 10)
        assert Notice("ready", "r0") in notices.seen  # a waiting run may take the slot
        assert await claim_ids(store) == ["r1"]
        assert await claim_ids(store, now=T0 + 10) == []  # r0 is due but r1 holds the slot

    async def test_a_run_of_a_dead_worker_keeps_its_slot(self, store: Store) -> None:
        await store.register_worker(W1)
        gate = Flow(concurrency=Gate(WF, 1))
        await store.create_run(flowed("held", gate))
        await store.create_run(flowed("waiting", gate))
        assert await claim_ids(store) == ["held"]
        await store.unregister_worker(W1)
        await store.register_worker(W2)
        assert await claim_ids(store, worker=W2) == ["held"]

    async def test_pending_runs_are_claimed_by_priority_then_in_order(self, store: Store) -> None:
        await store.register_worker(W1)
        for run_id, priority in [("low1", 0), ("high1", 5), ("low2", 0), ("mid", 1), ("high2", 5)]:
            await store.create_run(flowed(run_id, Flow(priority=priority)))
        assert await claim_ids(store, limit=2) == ["high1", "high2"]
        assert await claim_ids(store) == ["mid", "low1", "low2"]

    # -- delayed starts ----------------------------------------------------------------------

    async def test_throttle_spaces_begins_by_period(self, store: Store) -> None:
        await store.register_worker(W1)
        throttle = Flow(throttle=Gate(WF, 2, 60.0))
        wakes = [(await store.create_run(flowed(f"t{i}", throttle)))[0].wake_at for i in range(5)]
        assert wakes == [None, None, T0 + 60, T0 + 60, T0 + 120]
        assert await claim_ids(store) == ["t0", "t1"]
        assert await store.next_wake_at([WF]) == T0 + 60
        assert await claim_ids(store, now=T0 + 59) == []
        assert await claim_ids(store, now=T0 + 60) == ["t2", "t3"]

    async def test_rate_limit_drops_starts_beyond_the_limit(self, store: Store) -> None:
        rate = Flow(rate_limit=Gate(WF, 2, 60.0))
        notices = Notices(store)
        for i in range(2):
            info, new = await store.create_run(flowed(f"ok{i}", rate, at=T0 + i))
            assert new and info.status == "pending"
        info, new = await store.create_run(flowed("dropped", rate, at=T0 + 30))
        assert new and info.status == "cancelled"
        assert info.error is not None and "rate limit of 2" in info.error["message"]
        assert Notice("finished", "dropped") in notices.seen
        journal = await store.read_journal("dropped")
        assert [e.kind for e in journal] == [j.WORKFLOW_STARTED, j.WORKFLOW_CANCELLED]
        assert journal[1].data["reason"] == "rate_limit"
        again, new = await store.create_run(flowed("dropped", rate, at=T0 + 31))
        assert not new and again == info
        later, _ = await store.create_run(flowed("later", rate, at=T0 + 60))  # ok0 has left the window
        assert later.status == "pending"

    async def test_debounce_joins_a_run_that_has_not_begun(self, store: Store) -> None:
        await store.register_worker(W1)
        rule = Flow(debounce=DebounceRule(f"{WF}:k", 5.0, timeout=12.0))
        first, new = await store.create_run(flowed("d1", rule, args=[1]))
        assert new and first.wake_at == T0 + 5
        joined, new = await store.create_run(flowed("d2", rule, at=T0 + 4, args=[2]))
        assert not new and joined.run_id == "d1" and joined.args == [2] and joined.wake_at == T0 + 9
        capped, _ = await store.create_run(flowed("d3", rule, at=T0 + 8, args=[3]))
        assert capped.run_id == "d1" and capped.wake_at == T0 + 12  # the timeout caps the delay
        assert await store.get_run("d2") is None and await store.get_run("d3") is None
        assert (await store.read_journal("d1"))[0].data["args"] == [3]
        other, new = await store.create_run(flowed("o1", Flow(debounce=DebounceRule(f"{WF}:other", 5.0))))
        assert new and other.run_id == "o1"
        assert await claim_ids(store, now=T0 + 11) == ["o1"]
        assert await claim_ids(store, now=T0 + 12) == ["d1"]
        fresh, new = await store.create_run(flowed("d4", rule, at=T0 + 13, args=[4]))
        assert new and fresh.run_id == "d4"  # d1 began: a new start makes a new run

    async def test_a_run_joined_by_a_start_takes_that_starts_priority_and_keys(self, store: Store) -> None:
        await store.register_worker(W1)
        busy = Flow(concurrency=Gate(f"{WF}:t2", 1))
        await store.create_run(flowed("holder", busy))
        assert await claim_ids(store) == ["holder"]  # t2's only slot is taken
        rule = DebounceRule(f"{WF}:doc", 5.0)
        await store.create_run(flowed("d1", Flow(debounce=rule, concurrency=Gate(f"{WF}:t1", 1)), args=[1]))
        late = Flow(debounce=rule, concurrency=Gate(f"{WF}:t2", 1), priority=9)
        joined, new = await store.create_run(flowed("d2", late, at=T0 + 1, args=[2]))
        assert not new and joined.run_id == "d1" and joined.args == [2]
        await store.create_run(flowed("other", Flow(priority=5), at=T0 + 2))
        # d1 now runs with the last start's arguments, so under its key (t2, whose slot
        # is taken) and its priority (9, before "other"'s 5) once the slot is free.
        assert await claim_ids(store, now=T0 + 6) == ["other"]

    async def test_a_start_that_joins_a_debounced_run_is_not_rate_limited(self, store: Store) -> None:
        both = Flow(debounce=DebounceRule(f"{WF}:doc", 5.0), rate_limit=Gate(WF, 1, 60.0))
        await store.create_run(flowed("d1", both, args=[1]))
        joined, new = await store.create_run(flowed("d2", both, at=T0 + 1, args=[2]))
        assert not new and joined.run_id == "d1" and joined.args == [2]  # it adds no run to the count
        dropped, new = await store.create_run(flowed("d3", Flow(rate_limit=Gate(WF, 1, 60.0)), at=T0 + 2))
        assert new and dropped.status == "cancelled"  # a start that makes a run still counts

    # -- events --------------------------------------------------------------------------------

    async def test_cancel_on_cancels_matching_runs_for_later_events(self, store: Store) -> None:
        rule = Flow(cancel_on=(("order.cancelled", {"order": "o-1"}),))
        await store.send_event(event("before", "order.cancelled", {"order": "o-1"}))
        await store.create_run(flowed("r1", rule))
        assert not (await store.get_run("r1")).cancel_requested  # type: ignore[union-attr]
        await store.send_event(event("other", "order.cancelled", {"order": "o-2"}))
        assert not (await store.get_run("r1")).cancel_requested  # type: ignore[union-attr]
        await store.send_event(event("this", "order.cancelled", {"order": "o-1", "why": "x"}))
        assert (await store.get_run("r1")).cancel_requested  # type: ignore[union-attr]

    async def test_an_event_creates_the_runs_it_starts_once(self, store: Store) -> None:
        starts = [new_run("a:e1", workflow="a"), new_run("b:e1", workflow="b")]
        notices = Notices(store)
        _, new = await store.send_event(event("e1", "order.created"), starts)
        assert new
        assert {Notice("ready", "a:e1"), Notice("ready", "b:e1")} <= set(notices.seen)
        assert [r.run_id for r in await store.list_runs()] == ["b:e1", "a:e1"] or len(
            await store.list_runs()
        ) == 2
        _, new = await store.send_event(event("e1", "order.created"), [new_run("c:e1", workflow="c")])
        assert not new and await store.get_run("c:e1") is None

    async def test_a_start_that_joined_a_debounced_run_is_an_alias_of_it(self, store: Store) -> None:
        rule = Flow(debounce=DebounceRule(f"{WF}:k", 5.0))
        await store.create_run(flowed("d1", rule, args=[1]))
        joined, _ = await store.create_run(flowed("d2", rule, at=T0 + 1, args=[2]))
        again, new = await store.create_run(flowed("d2", rule, at=T0 + 3, args=[3]))
        assert not new and again == joined  # nothing changed: not joined a second time
        assert (await store.get_run("d1")).args == [2]  # type: ignore[union-attr]

    async def test_events_after_a_position(self, store: Store) -> None:
        assert await store.last_event_position() == 0
        notices = Notices(store)
        sent = [(await store.send_event(event(f"e{i}", "ab"[i % 2])))[0] for i in range(5)]
        assert Notice("event", "e0") in notices.seen
        assert await store.last_event_position() == sent[-1].position
        assert await store.events_after(0, ["a"], 10) == [sent[0], sent[2], sent[4]]
        assert await store.events_after(sent[0].position, ["a", "b"], 2) == sent[1:3]
        assert await store.events_after(sent[-1].position, ["a", "b"], 10) == []

    # -- schedules -----------------------------------------------------------------------------

    async def test_schedules_move_by_compare_and_set(self, store: Store) -> None:
        assert await store.get_schedule("cron:x") is None
        assert await store.advance_schedule("cron:x", None, T0, None)
        assert not await store.advance_schedule("cron:x", None, T0 + 1, None)
        tick = new_run("x:cron:1", workflow="x")
        assert await store.advance_schedule("cron:x", T0, T0 + 60, tick)
        assert await store.get_schedule("cron:x") == T0 + 60
        assert await store.get_run("x:cron:1") is not None
        assert not await store.advance_schedule("cron:x", T0, T0 + 60, new_run("x:cron:dup", workflow="x"))
        assert await store.get_run("x:cron:dup") is None

    async def test_an_update_can_start_an_unrelated_run(self, store: Store) -> None:
        await store.register_worker(W1)
        await store.create_run(new_run("failing", workflow="f"))
        [claim] = await store.claim(W1, ["f"], T0, 1)
        handler = new_run("failing:on_failure", workflow="h", args=["failing", {"message": "boom"}])
        error = {"type": "ValueError", "message": "boom", "traceback": ""}
        entry = j.Entry(2, j.WORKFLOW_FAILED, T0, {"error": error})
        await store.append(
            "failing",
            claim.token,
            [entry],
            RunUpdate("failed", error=error, release=True, children=(handler,)),
        )
        started = await store.get_run("failing:on_failure")
        assert started is not None and started.parent_id is None and started.status == "pending"
