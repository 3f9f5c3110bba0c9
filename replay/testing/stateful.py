"""``StoreAgreement``: a store and the memory store (the oracle), driven alike by hypothesis.

A state machine applies the same operations to both and checks they agree.

Subclass it once per store, giving ``make_store``, and run it as a test::

    class SqliteAgreement(StoreAgreement):
        def make_store(self) -> Store:
            return SqliteStore(f"sqlite:///{tmp}/{uuid4().hex}.db")

    TestSqliteAgreement = SqliteAgreement.TestCase

Every operation of the ``Store`` interface is drawn: creating runs, registering
and unregistering workers, claims, fenced appends (waits, events received,
cancellations, ends), suspensions, events, cancellation requests, requeues.
After each one, every run, journal, open wait and the next wake time must be the
same in both stores. Lease tokens are compared by what they allow (an append
with a stale token fails in both), not by value.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from replay import journal as j
from replay.errors import LeaseLost
from replay.journal import Entry
from replay.stores.base import NO_FLOW, DebounceRule, EventRecord, Flow, Gate, NewRun, RunUpdate, Store
from replay.stores.memory import MemoryStore

__all__ = ("StoreAgreement",)

RUNS = ("a", "b", "c")
WORKERS = ("w1", "w2")
WORKFLOWS = ("wf1", "wf2")
NAMES = ("paid", "shipped")
T0 = 1_000.0
FLOWS = (
    NO_FLOW,
    Flow(priority=3),
    Flow(concurrency=Gate("k", 1)),
    Flow(concurrency=Gate("k", 1), priority=1),
    Flow(throttle=Gate("t", 1, 30.0)),
    Flow(rate_limit=Gate("r", 1, 30.0)),
    Flow(debounce=DebounceRule("d", 10.0, 25.0)),
    Flow(cancel_on=(("paid", {"key": 1}),)),
)


class StoreAgreement(RuleBasedStateMachine):
    """Drives ``make_store()`` and a ``MemoryStore`` alike; see the module docstring."""

    def make_store(self) -> Store:
        """The store under test, fresh and not yet opened. Override this."""
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.stores: tuple[Store, Store] = (MemoryStore(), self.make_store())
        for store in self.stores:
            self._run(store.open())
        self.now = T0
        self.tokens: list[dict[str, int]] = [{}, {}]  # per store: run id -> last token it handed out
        self.events = 0

    def teardown(self) -> None:
        for store in self.stores:
            self._run(store.close())
        self.loop.close()

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def _both(self, call: Any) -> tuple[Any, Any]:
        """Run ``call(store, index)`` on both stores; each result, or the exception's type."""
        results = []
        for index, store in enumerate(self.stores):
            try:
                results.append(self._run(call(store, index)))
            except LeaseLost:
                results.append(LeaseLost)
        return results[0], results[1]

    def _agree(self, call: Any) -> Any:
        oracle, other = self._both(call)
        assert other == oracle, f"the store gives {other!r}, the memory store {oracle!r}"
        return oracle

    # -- rules -------------------------------------------------------------------------

    @rule(run_id=st.sampled_from(RUNS), workflow=st.sampled_from(WORKFLOWS), flow=st.sampled_from(FLOWS))
    def create_run(self, run_id: str, workflow: str, flow: Flow) -> None:
        data = {"workflow": workflow, "args": [run_id], "journal": j.FORMAT_VERSION}
        first = Entry(1, j.WORKFLOW_STARTED, self.now, data)
        run = NewRun(run_id, workflow, [run_id], first, flow=flow)
        self._agree(lambda s, i: s.create_run(run))

    @rule(worker=st.sampled_from(WORKERS), alive=st.booleans())
    def worker(self, worker: str, alive: bool) -> None:
        self._agree(lambda s, i: s.register_worker(worker) if alive else s.unregister_worker(worker))

    @rule(
        worker=st.sampled_from(WORKERS),
        workflows=st.sampled_from([WORKFLOWS, WORKFLOWS[:1]]),
        limit=st.sampled_from([1, 2, 100]),
    )
    def claim(self, worker: str, workflows: tuple[str, ...], limit: int) -> None:
        async def call(store: Store, index: int) -> list[tuple[str, bool]]:
            claims = await store.claim(worker, workflows, self.now, limit)
            for c in claims:
                self.tokens[index][c.run_id] = c.token
            return [(c.run_id, c.cancel_requested) for c in claims]

        self._agree(call)

    @rule(seconds=st.sampled_from([1.0, 30.0, 3600.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    def _append(self, run_id: str, kind: str, data: dict[str, Any], update: RunUpdate | None = None) -> None:
        async def call(store: Store, index: int) -> None:
            journal = await store.read_journal(run_id)
            token = self.tokens[index].get(run_id, -1)
            entry = Entry(len(journal) + 1, kind, self.now, data)
            await store.append(run_id, token, [entry], update)

        self._agree(call)

    @precondition(lambda self: self.tokens[0])
    @rule(data=st.data(), name=st.sampled_from(NAMES), key=st.sampled_from([None, 1, 2]))
    def wait(self, data: st.DataObject, name: str, key: int | None) -> None:
        run_id = data.draw(st.sampled_from(sorted(self.tokens[0])))
        match = {} if key is None else {"key": key}
        self._append(run_id, j.WAIT_STARTED, {"name": name, "match": match, "timeout_at": self.now + 60})

    @precondition(lambda self: self.tokens[0])
    @rule(data=st.data(), timed_out=st.booleans())
    def end_wait(self, data: st.DataObject, timed_out: bool) -> None:
        run_id = data.draw(st.sampled_from(sorted(self.tokens[0])))
        waits = self._agree(lambda s, i: s.poll_waits(run_id))
        if waits and not timed_out:
            seq, event = waits[0]
            ev = {"id": event.id, "name": event.name, "data": event.data, "at": event.at}
            self._append(run_id, j.EVENT_RECEIVED, {"op": seq, "event": ev})
        else:
            journal = self._run(self.stores[0].read_journal(run_id))
            open_waits = [e.seq for e in journal if e.kind == j.WAIT_STARTED]
            if open_waits:
                self._append(run_id, j.WAIT_TIMED_OUT, {"op": open_waits[-1]})

    @precondition(lambda self: self.tokens[0])
    @rule(data=st.data(), wake=st.sampled_from([None, 10.0, 100.0]))
    def suspend(self, data: st.DataObject, wake: float | None) -> None:
        run_id = data.draw(st.sampled_from(sorted(self.tokens[0])))
        wake_at = None if wake is None else self.now + wake
        update = RunUpdate(status="suspended", wake_at=wake_at, release=True)
        self._append(run_id, j.SIDE_EFFECT, {"name": "mark", "value": self.now}, update)

    @precondition(lambda self: self.tokens[0])
    @rule(data=st.data(), status=st.sampled_from(["completed", "failed", "cancelled", "parked"]))
    def finish(self, data: st.DataObject, status: str) -> None:
        run_id = data.draw(st.sampled_from(sorted(self.tokens[0])))
        error = {"type": "ValueError", "message": "boom", "traceback": ""}
        if status == "parked":  # a NonDeterminismError: no end entry
            update = RunUpdate(status="failed", error=error, release=True)
            self._agree(lambda s, i: s.append(run_id, self.tokens[i].get(run_id, -1), [], update))
        elif status == "completed":
            self._append(
                run_id,
                j.WORKFLOW_COMPLETED,
                {"result": 1},
                RunUpdate(status="completed", result=1, release=True),
            )
        elif status == "failed":
            update = RunUpdate(status="failed", error=error, release=True)
            self._append(run_id, j.WORKFLOW_FAILED, {"error": error}, update)
        else:
            self._append(run_id, j.WORKFLOW_CANCELLED, {}, RunUpdate(status="cancelled", release=True))

    @rule(name=st.sampled_from(NAMES), key=st.sampled_from([1, 2]), reuse=st.booleans())
    def send_event(self, name: str, key: int, reuse: bool) -> None:
        if not reuse or self.events == 0:
            self.events += 1
        event = EventRecord(f"e{self.events}", name, {"key": key, "n": self.events}, self.now)
        self._agree(lambda s, i: s.send_event(event))

    @rule(run_id=st.sampled_from(RUNS), requeue=st.booleans())
    def cancel_or_requeue(self, run_id: str, requeue: bool) -> None:
        self._agree(
            lambda s, i: s.requeue(run_id, self.now) if requeue else s.request_cancel(run_id, self.now)
        )

    # -- what must agree after every step ------------------------------------------------

    @invariant()
    def runs_journals_and_waits_agree(self) -> None:
        for run_id in RUNS:
            self._agree(lambda s, i, run_id=run_id: s.get_run(run_id))
            self._agree(lambda s, i, run_id=run_id: s.read_journal(run_id))
            self._agree(lambda s, i, run_id=run_id: s.poll_waits(run_id))
        self._agree(lambda s, i: s.next_wake_at(WORKFLOWS))
        self._agree(lambda s, i: s.list_runs(limit=10))
