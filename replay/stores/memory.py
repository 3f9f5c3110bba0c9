"""``memory://``: a store in dicts, for tests and ``TestEnv``.

Same semantics as the durable stores, no durability. Journals are kept encoded,
as on disk, so a value read back is a fresh copy in its JSON form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from replay import journal as j
from replay.errors import LeaseLost, ReplayInternalError
from replay.journal import Entry, decode_carried, decode_entries, encode_entry
from replay.stores._flow import debounce_wake, dropped, not_begun, throttle_begin
from replay.stores.base import (
    NO_FLOW,
    TERMINAL_STATUSES,
    Claim,
    EventRecord,
    Flow,
    Gate,
    NewRun,
    RunInfo,
    RunUpdate,
    Store,
    contains,
)

__all__ = ("MemoryStore",)


@attrs.define(eq=False)
class _Run:
    info: RunInfo
    journal: list[bytes]
    token: int = 0
    owner: str | None = None
    cancel_delivered: bool = False
    children: set[str] = attrs.Factory(set)  # child runs the journal still awaits
    flow: Flow = NO_FLOW
    order: int = 0  # creation order, for claims
    begin_at: float | None = None  # when it may begin, under a throttle
    admitted: bool = False  # counted by its rate limit


@attrs.define(eq=False)
class _Wait:
    name: str
    match: dict[str, Any]
    after: int
    timeout_at: float | None


_CATEGORY = {"running": 0, "suspended": 1, "pending": 2}


def _claim_order(run: _Run) -> tuple[int, float, int]:
    """Runs that began go first: orphaned ones, then due ones by wake time; then new ones.

    Orphaned and new runs go by priority, then age.
    """
    info = run.info
    category = _CATEGORY[info.status]
    if category == 1:
        return (1, info.wake_at or 0.0, run.order)
    return (category, -run.flow.priority, run.order)


class MemoryStore(Store):
    """A store held in this process's memory. See the module docstring."""

    def __init__(self, url: str = "memory://") -> None:
        super().__init__()
        self.url = url
        self._runs: dict[str, _Run] = {}
        self._events: list[EventRecord] = []
        self._event_ids: dict[str, EventRecord] = {}
        self._waits: dict[str, dict[int, _Wait]] = {}
        self._cancel_on: dict[str, list[_Wait]] = {}  # run id -> the events that cancel it
        self._workers: set[str] = set()
        self._schedules: dict[str, float] = {}
        self._aliases: dict[str, str] = {}  # a start that joined a debounced run -> that run

    # -- clients -----------------------------------------------------------------------

    async def create_run(self, run: NewRun) -> tuple[RunInfo, bool]:
        """Create a run unless one has that id."""
        return self._create(run)

    def _create(self, run: NewRun) -> tuple[RunInfo, bool]:
        existing = self._runs.get(self._aliases.get(run.run_id, run.run_id))
        if existing is not None:
            return existing.info, False
        entries = run.entries()
        encoded = [encode_entry(e) for e in entries]  # may raise: nothing changes
        flow, at = run.flow, run.started_at
        if flow.debounce is not None:
            joined = self._debounce(run, encoded[0], at)
            if joined is not None:
                return joined, False  # no new run: nothing for a rate limit to count
        if flow.rate_limit is not None and self._rate_limited(flow.rate_limit, at):
            return self._drop(run, encoded, flow.rate_limit), True
        info = run.pending()
        created = _Run(info, encoded, flow=flow, order=len(self._runs), admitted=flow.rate_limit is not None)
        wake = None
        if flow.debounce is not None:
            wake = debounce_wake(at, flow.debounce, at)
        if flow.throttle is not None:
            created.begin_at = throttle_begin(wake or at, self._begins(flow.throttle.key), flow.throttle)
            wake = created.begin_at
        if wake is not None and wake > at:
            created.info = attrs.evolve(info, wake_at=wake)
        self._runs[run.run_id] = created
        self._track(created, run.journal)
        for name, match in flow.cancel_on:
            self._cancel_on.setdefault(run.run_id, []).append(_Wait(name, match, len(self._events), None))
        if created.cancel_delivered:
            created.info = attrs.evolve(created.info, cancel_requested=True)
        self.notify("ready", run.run_id)
        return created.info, True

    def _rate_limited(self, gate: Gate, at: float) -> bool:
        recent = sum(
            1
            for r in self._runs.values()
            if r.admitted
            and r.flow.rate_limit is not None
            and r.flow.rate_limit.key == gate.key
            and r.info.created_at > at - gate.period
        )
        return recent >= gate.limit

    def _drop(self, run: NewRun, encoded: list[bytes], gate: Gate) -> RunInfo:
        entry, error = dropped(run.run_id, run.first, gate)
        at = run.started_at
        info = RunInfo(
            run.run_id, run.workflow, "cancelled", run.args, at, at, error=error, parent_id=run.parent_id
        )
        self._runs[run.run_id] = _Run(info, [encoded[0], encode_entry(entry)], order=len(self._runs))
        self.notify("finished", run.run_id)
        return info

    def _debounce(self, run: NewRun, first: bytes, at: float) -> RunInfo | None:
        rule = run.flow.debounce
        assert rule is not None
        for r in self._runs.values():
            debounce = r.flow.debounce
            if debounce is None or debounce.key != rule.key or r.info.status != "pending" or r.token:
                continue
            r.journal[0] = first
            r.flow = run.flow
            self._aliases[run.run_id] = r.info.run_id
            self._cancel_on.pop(r.info.run_id, None)
            for name, match in run.flow.cancel_on:
                self._cancel_on.setdefault(r.info.run_id, []).append(
                    _Wait(name, match, len(self._events), None)
                )
            wake = debounce_wake(at, rule, r.info.created_at)
            if r.flow.throttle is not None:
                begins = [b for b in self._begins(r.flow.throttle.key) if b != r.begin_at]
                r.begin_at = wake = throttle_begin(wake, begins, r.flow.throttle)
            r.info = attrs.evolve(r.info, args=run.args, wake_at=wake, updated_at=at)
            return r.info
        return None

    def _begins(self, key: str) -> list[float]:
        return sorted(
            (
                r.begin_at
                for r in self._runs.values()
                if r.begin_at is not None and r.flow.throttle is not None and r.flow.throttle.key == key
            ),
            reverse=True,
        )

    async def get_run(self, run_id: str) -> RunInfo | None:
        """The run with that id, if any."""
        run = self._runs.get(run_id)
        return run.info if run else None

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[RunInfo]:
        """Runs, newest first, filtered."""
        found = [
            r.info
            for r in self._runs.values()
            if (workflow is None or r.info.workflow == workflow)
            and (status is None or r.info.status == status)
            and (since is None or r.info.created_at >= since)
            and (until is None or r.info.created_at <= until)
        ]
        found.reverse()
        found.sort(key=lambda i: i.created_at, reverse=True)
        return found[:limit]

    async def read_journal(self, run_id: str) -> list[Entry]:
        """A run's journal, in order."""
        run = self._runs.get(run_id)
        return decode_entries(run.journal) if run else []

    async def request_cancel(self, run_id: str, at: float) -> RunInfo | None:
        """Flag a run for cancellation and wake it."""
        run = self._runs.get(run_id)
        if run is None:
            return None
        if run.info.status in TERMINAL_STATUSES or run.info.cancel_requested:
            return run.info
        if run.info.status == "pending" and run.token == 0 and len(run.journal) == 1:
            # It never began: no workflow code to tell, so it ends here.
            entry = not_begun(run.info.run_id, at)
            run.journal.append(encode_entry(entry))
            self._track(run, [entry])
            run.info = attrs.evolve(run.info, cancel_requested=True, wake_at=None)
            self._update(run, RunUpdate(status="cancelled"), at)
            return run.info
        run.info = attrs.evolve(run.info, cancel_requested=True)
        self._wake(run, at)
        return run.info

    async def requeue(self, run_id: str, at: float) -> RunInfo | None:
        """Put a failed run back to pending."""
        run = self._runs.get(run_id)
        if run is None:
            return None
        if run.info.status == "failed":
            run.info = attrs.evolve(run.info, status="pending", error=None, wake_at=None, updated_at=at)
            run.owner = None
            self.notify("ready", run_id)
        return run.info

    async def send_event(self, event: EventRecord, starts: Sequence[NewRun] = ()) -> tuple[EventRecord, bool]:
        """Store an event, create the runs it triggers and wake the runs waiting for it."""
        existing = self._event_ids.get(event.id)
        if existing is not None:
            return existing, False
        for run in starts:
            run.entries()  # check them all before anything changes
            for e in run.entries():
                encode_entry(e)
        stored = attrs.evolve(event, position=len(self._events) + 1)
        self._events.append(stored)
        self._event_ids[stored.id] = stored
        for run_id, waits in list(self._waits.items()):
            if any(self._matches(w, stored) for w in waits.values()):
                self._wake(self._runs[run_id], stored.at)
        for run_id, cancels in list(self._cancel_on.items()):
            if any(self._matches(w, stored) for w in cancels):
                await self.request_cancel(run_id, stored.at)
        for run in starts:
            self._create(run)
        self.notify("event", stored.id)
        return stored, True

    async def events_after(self, position: int, names: Sequence[str], limit: int) -> list[EventRecord]:
        """Events with these names after ``position``, in order."""
        wanted = set(names)
        return [e for e in self._events[max(position, 0) :] if e.name in wanted][:limit]

    async def last_event_position(self) -> int:
        """The latest event's position."""
        return len(self._events)

    async def get_schedule(self, name: str) -> float | None:
        """The schedule's last tick."""
        return self._schedules.get(name)

    async def advance_schedule(
        self, name: str, previous: float | None, tick: float, run: NewRun | None
    ) -> bool:
        """Move the schedule's cursor and create the tick's run, unless another worker did."""
        if self._schedules.get(name) != previous:
            return False
        if run is not None:
            for e in run.entries():
                encode_entry(e)  # may raise: nothing changes
        self._schedules[name] = tick
        if run is not None:
            self._create(run)
        return True

    @staticmethod
    def _matches(wait: _Wait, event: EventRecord) -> bool:
        return (
            event.name == wait.name
            and event.position > wait.after
            and (wait.timeout_at is None or event.at <= wait.timeout_at)
            and contains(event.data, wait.match)
        )

    def _wake(self, run: _Run, at: float) -> None:
        status = run.info.status
        if status == "suspended":
            wake = at if run.info.wake_at is None else min(at, run.info.wake_at)
            run.info = attrs.evolve(run.info, wake_at=wake)
            self.notify("ready", run.info.run_id)
        elif status == "running":
            self.notify("news", run.info.run_id)

    # -- workers -----------------------------------------------------------------------

    async def register_worker(self, worker_id: str) -> None:
        """Announce a live worker; runs still owned under that id, by no live worker, are released."""
        if worker_id not in self._workers:
            self._release(worker_id)
        self._workers.add(worker_id)

    async def unregister_worker(self, worker_id: str) -> None:
        """A worker stops (or dies): its runs become claimable."""
        self._workers.discard(worker_id)
        self._release(worker_id)

    def _release(self, worker_id: str) -> None:
        for run in self._runs.values():
            if run.owner == worker_id:
                run.owner = None
                if run.info.status == "running":
                    self.notify("ready", run.info.run_id)

    def _claimable(self, run: _Run, now: float) -> bool:
        status = run.info.status
        if status == "pending":
            return run.info.wake_at is None or run.info.wake_at <= now
        if status == "suspended":
            return run.info.wake_at is not None and run.info.wake_at <= now
        if status == "running":
            return run.owner is None or run.owner not in self._workers
        return False

    async def claim(self, worker_id: str, workflows: Sequence[str], now: float, limit: int) -> list[Claim]:
        """Take ownership of up to ``limit`` claimable runs: orphaned ones first, then by priority."""
        names = set(workflows)
        candidates: list[_Run] = []
        running: dict[str, int] = {}
        for r in self._runs.values():
            if r.info.workflow in names and self._claimable(r, now):
                candidates.append(r)
            gate = r.flow.concurrency
            if gate is not None and r.info.status == "running":
                running[gate.key] = running.get(gate.key, 0) + 1
        candidates.sort(key=_claim_order)
        claims: list[Claim] = []
        for run in candidates:
            if len(claims) >= limit:
                break
            gate = run.flow.concurrency
            if gate is not None and run.info.status != "running":
                if running.get(gate.key, 0) >= gate.limit:
                    continue  # waits for a slot
                running[gate.key] = running.get(gate.key, 0) + 1
            run.token += 1
            run.owner = worker_id
            run.info = attrs.evolve(run.info, status="running", wake_at=None, updated_at=now)
            journal = decode_carried(run.journal)
            claims.append(
                Claim(run.info.run_id, run.info.workflow, run.token, run.info.cancel_requested, journal)
            )
        return claims

    async def append(
        self, run_id: str, token: int, entries: Sequence[Entry], update: RunUpdate | None = None
    ) -> None:
        """Append entries and apply ``update``, fenced by ``token``."""
        run = self._runs.get(run_id)
        if run is None or run.token != token or run.owner is None:
            raise LeaseLost(f"run {run_id!r} is no longer owned by this worker (token {token})")
        encoded = [encode_entry(e) for e in entries]  # may raise: nothing changes
        expected = len(run.journal) + 1
        for e in entries:
            if e.seq != expected:
                raise ReplayInternalError(f"append to {run_id!r}: seq {e.seq}, expected {expected}")
            expected += 1
        run.journal.extend(encoded)
        self._track(run, entries)
        if update is not None:
            self._update(run, update, entries[-1].at if entries else run.info.updated_at)

    def _track(self, run: _Run, entries: Sequence[Entry]) -> None:
        """Keep waits, awaited children and cancellation in step with new entries."""
        run_id = run.info.run_id
        waits = self._waits.setdefault(run_id, {})
        for e in entries:
            if e.kind == j.WAIT_STARTED:
                waits[e.seq] = _Wait(
                    e.data["name"], e.data["match"], len(self._events), e.data.get("timeout_at")
                )
            elif e.kind in (j.EVENT_RECEIVED, j.WAIT_TIMED_OUT):
                waits.pop(e.data["op"], None)
            elif e.kind == j.CHILD_STARTED:
                run.children.add(e.data["run_id"])
            elif e.kind == j.CHILD_COMPLETED:
                run.children.discard(e.data["run_id"])
            elif e.kind == j.CANCEL_REQUESTED:
                run.cancel_delivered = True
            elif e.kind in j.TERMINAL_KINDS:
                # Only a journaled end closes waits: a run parked as failed keeps them
                # for when it is retried.
                waits.clear()
                run.children.clear()
                self._cancel_on.pop(run_id, None)
        if not waits:
            del self._waits[run_id]

    def _update(self, run: _Run, update: RunUpdate, at: float) -> None:
        for child in update.children:
            self._create(child)
        info = run.info
        changes: dict[str, Any] = {"updated_at": at}
        if update.status is not None:
            changes["status"] = update.status
            changes["wake_at"] = update.wake_at
            if update.status == "suspended" and self._has_news(run):
                # News that reached the owner while it was suspending must not be lost.
                changes["wake_at"] = at if update.wake_at is None else min(at, update.wake_at)
        if update.result is not None:
            changes["result"] = update.result
        if update.error is not None:
            changes["error"] = update.error
        run.info = attrs.evolve(info, **changes)
        if update.release:
            run.owner = None
        status = run.info.status
        if run.flow.concurrency is not None and info.status == "running" and status != "running":
            self.notify("ready", run.info.run_id)  # a slot is free: a waiting run may go
        if status in TERMINAL_STATUSES:
            self.notify("finished", run.info.run_id)
            parent = self._runs.get(run.info.parent_id or "")
            if parent is not None:
                self._wake(parent, at)
        elif (status == "suspended" and run.info.wake_at is not None) or status == "pending":
            self.notify("ready", run.info.run_id)

    def _has_news(self, run: _Run) -> bool:
        if run.info.cancel_requested and not run.cancel_delivered:
            return True
        if any(self._runs[c].info.status in TERMINAL_STATUSES for c in run.children if c in self._runs):
            return True
        waits = self._waits.get(run.info.run_id, {})
        return any(self._matches(w, e) for w in waits.values() for e in self._events[w.after :])

    async def poll_waits(self, run_id: str) -> list[tuple[int, EventRecord]]:
        """For each open wait, the first matching event."""
        found = []
        for seq, wait in self._waits.get(run_id, {}).items():
            for event in self._events[wait.after :]:
                if self._matches(wait, event):
                    found.append((seq, event))
                    break
        return found

    async def runs_with_news(self, worker_id: str) -> list[str]:
        """Running runs of ``worker_id`` with an undelivered cancel, a finished child or a matching event."""
        return [
            run_id
            for run_id, run in self._runs.items()
            if run.owner == worker_id and run.info.status == "running" and self._has_news(run)
        ]

    async def next_wake_at(self, workflows: Sequence[str]) -> float | None:
        """The earliest ``wake_at`` among suspended or delayed pending runs."""
        names = set(workflows)
        times = [
            r.info.wake_at
            for r in self._runs.values()
            if r.info.status in ("suspended", "pending")
            and r.info.wake_at is not None
            and r.info.workflow in names
        ]
        return min(times) if times else None
