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
from replay.journal import Entry, decode_entries, encode_entry
from replay.stores.base import (
    TERMINAL_STATUSES,
    Claim,
    EventRecord,
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


@attrs.define(eq=False)
class _Wait:
    name: str
    match: dict[str, Any]
    after: int
    timeout_at: float | None


class MemoryStore(Store):
    """A store held in this process's memory. See the module docstring."""

    def __init__(self, url: str = "memory://") -> None:
        super().__init__()
        self.url = url
        self._runs: dict[str, _Run] = {}
        self._events: list[EventRecord] = []
        self._event_ids: dict[str, EventRecord] = {}
        self._waits: dict[str, dict[int, _Wait]] = {}
        self._workers: set[str] = set()

    # -- clients -----------------------------------------------------------------------

    async def create_run(self, run: NewRun) -> tuple[RunInfo, bool]:
        """Create a run unless one has that id."""
        return self._create(run)

    def _create(self, run: NewRun) -> tuple[RunInfo, bool]:
        existing = self._runs.get(run.run_id)
        if existing is not None:
            return existing.info, False
        entries = run.entries()
        encoded = [encode_entry(e) for e in entries]  # may raise: nothing changes
        at = run.started_at
        info = RunInfo(run.run_id, run.workflow, "pending", run.args, at, at, parent_id=run.parent_id)
        created = _Run(info, encoded)
        self._runs[run.run_id] = created
        self._track(created, run.journal)
        if created.cancel_delivered:
            created.info = attrs.evolve(created.info, cancel_requested=True)
        self.notify("ready", run.run_id)
        return created.info, True

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

    async def send_event(self, event: EventRecord) -> tuple[EventRecord, bool]:
        """Store an event and wake the runs waiting for it."""
        existing = self._event_ids.get(event.id)
        if existing is not None:
            return existing, False
        stored = attrs.evolve(event, position=len(self._events) + 1)
        self._events.append(stored)
        self._event_ids[stored.id] = stored
        for run_id, waits in list(self._waits.items()):
            if any(self._matches(w, stored) for w in waits.values()):
                self._wake(self._runs[run_id], stored.at)
        return stored, True

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
        """Announce a live worker."""
        self._workers.add(worker_id)

    async def unregister_worker(self, worker_id: str) -> None:
        """A worker stops (or dies): its runs become claimable."""
        self._workers.discard(worker_id)
        for run in self._runs.values():
            if run.owner == worker_id:
                run.owner = None
                if run.info.status == "running":
                    self.notify("ready", run.info.run_id)

    def _claimable(self, run: _Run, now: float) -> bool:
        status = run.info.status
        if status == "pending":
            return True
        if status == "suspended":
            return run.info.wake_at is not None and run.info.wake_at <= now
        if status == "running":
            return run.owner is None or run.owner not in self._workers
        return False

    async def claim(self, worker_id: str, workflows: Sequence[str], now: float, limit: int) -> list[Claim]:
        """Take ownership of up to ``limit`` claimable runs."""
        names = set(workflows)
        claims: list[Claim] = []
        for run in self._runs.values():
            if len(claims) >= limit:
                break
            if run.info.workflow in names and self._claimable(run, now):
                run.token += 1
                run.owner = worker_id
                run.info = attrs.evolve(run.info, status="running", wake_at=None, updated_at=now)
                claims.append(Claim(run.info.run_id, run.info.workflow, run.token, run.info.cancel_requested))
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

    async def next_wake_at(self, workflows: Sequence[str]) -> float | None:
        """The earliest ``wake_at`` among suspended runs."""
        names = set(workflows)
        times = [
            r.info.wake_at
            for r in self._runs.values()
            if r.info.status == "suspended" and r.info.wake_at is not None and r.info.workflow in names
        ]
        return min(times) if times else None
