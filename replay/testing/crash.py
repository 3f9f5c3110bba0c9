"""Crash injection: a store wrapper that kills the worker at a chosen journal append.

``CrashingStore`` counts appends. At append ``crash_at`` it simulates a process
death, either just before the append reaches the store ("before") or just after
it is durable but before anyone sees the result ("after"). From then until
``revive`` every call raises ``SimulatedCrash``: a dead process writes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Literal

from replay.journal import Entry
from replay.stores.base import Claim, EventRecord, NewRun, Notice, RunInfo, RunUpdate, Store

__all__ = ("CrashingStore", "Phase", "SimulatedCrash")

Phase = Literal["before", "after"]


class SimulatedCrash(BaseException):
    """The simulated death of the worker process. Not an error: do not catch it."""


class CrashingStore(Store):
    """Wraps a store and dies at one append. See the module docstring.

    Args:
        inner: the store that keeps the data.
        crash_at: the 1-based number of the append to die at; None never dies.
        phase: die "before" the append is durable or "after" it.
    """

    def __init__(self, inner: Store, crash_at: int | None = None, phase: Phase = "before") -> None:
        super().__init__()
        self.inner = inner
        self.url = inner.url
        self.crash_at = crash_at
        self.phase = phase
        self.appends = 0
        self.dead = False
        self.crashed = asyncio.Event()
        #: Journals of every run at the moment of the crash.
        self.at_crash: dict[str, list[Entry]] = {}

    def revive(self) -> None:
        """The process restarted: calls reach the store again; no further crash."""
        self.dead = False
        self.crash_at = None

    def _check(self) -> None:
        if self.dead:
            raise SimulatedCrash()

    async def _die(self) -> None:
        self.dead = True
        self.crashed.set()
        raise SimulatedCrash()

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    def subscribe(self, listener: Callable[[Notice], None]) -> Callable[[], None]:
        return self.inner.subscribe(listener)

    async def create_run(self, run: NewRun) -> tuple[RunInfo, bool]:
        return await self.inner.create_run(run)

    async def get_run(self, run_id: str) -> RunInfo | None:
        self._check()
        return await self.inner.get_run(run_id)

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[RunInfo]:
        return await self.inner.list_runs(
            workflow=workflow, status=status, since=since, until=until, limit=limit
        )

    async def read_journal(self, run_id: str) -> list[Entry]:
        self._check()
        return await self.inner.read_journal(run_id)

    async def request_cancel(self, run_id: str, at: float) -> RunInfo | None:
        return await self.inner.request_cancel(run_id, at)

    async def requeue(self, run_id: str, at: float) -> RunInfo | None:
        return await self.inner.requeue(run_id, at)

    async def send_event(self, event: EventRecord, starts: Sequence[NewRun] = ()) -> tuple[EventRecord, bool]:
        return await self.inner.send_event(event, starts)

    async def events_after(self, position: int, names: Sequence[str], limit: int) -> list[EventRecord]:
        self._check()
        return await self.inner.events_after(position, names, limit)

    async def last_event_position(self) -> int:
        self._check()
        return await self.inner.last_event_position()

    async def get_schedule(self, name: str) -> float | None:
        self._check()
        return await self.inner.get_schedule(name)

    async def advance_schedule(
        self, name: str, previous: float | None, tick: float, run: NewRun | None
    ) -> bool:
        # A cursor move that starts a run is a worker's write, like an append: a crash point.
        self._check()
        if run is None:
            return await self.inner.advance_schedule(name, previous, tick, run)
        self.appends += 1
        if self.appends == self.crash_at and self.phase == "before":
            await self._snapshot()
            await self._die()
        moved = await self.inner.advance_schedule(name, previous, tick, run)
        if self.appends == self.crash_at:
            await self._snapshot()
            await self._die()
        return moved

    async def register_worker(self, worker_id: str) -> None:
        self._check()
        await self.inner.register_worker(worker_id)

    async def unregister_worker(self, worker_id: str) -> None:
        await self.inner.unregister_worker(worker_id)

    async def claim(self, worker_id: str, workflows: Sequence[str], now: float, limit: int) -> list[Claim]:
        self._check()
        return await self.inner.claim(worker_id, workflows, now, limit)

    async def append(
        self, run_id: str, token: int, entries: Sequence[Entry], update: RunUpdate | None = None
    ) -> None:
        self._check()
        self.appends += 1
        if self.appends == self.crash_at and self.phase == "before":
            await self._snapshot()
            await self._die()
        await self.inner.append(run_id, token, entries, update)
        if self.appends == self.crash_at:
            await self._snapshot()
            await self._die()

    async def _snapshot(self) -> None:
        for info in await self.inner.list_runs(limit=1_000_000):
            self.at_crash[info.run_id] = await self.inner.read_journal(info.run_id)

    async def poll_waits(self, run_id: str) -> list[tuple[int, EventRecord]]:
        self._check()
        return await self.inner.poll_waits(run_id)

    async def runs_with_news(self, worker_id: str) -> list[str]:
        self._check()
        return await self.inner.runs_with_news(worker_id)

    async def next_wake_at(self, workflows: Sequence[str]) -> float | None:
        self._check()
        return await self.inner.next_wake_at(workflows)
