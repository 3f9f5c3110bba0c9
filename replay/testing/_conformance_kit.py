"""Helpers shared by the store conformance cases: run builders and a notice recorder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
import pytest

from replay import journal as j
from replay.journal import Entry
from replay.stores.base import Claim, EventRecord, NewRun, Notice, RunUpdate, Status, Store

__all__ = ("T0", "W1", "W2", "Cases", "Driven", "Notices", "begin", "event", "new_run")

#: The time the cases start at; every case passes times explicitly, stores read no clock.
T0 = 1_000.0
W1 = "worker-1"
W2 = "worker-2"


def new_run(
    run_id: str,
    *,
    at: float = T0,
    workflow: str | None = None,
    args: list[Any] | None = None,
    parent_id: str | None = None,
) -> NewRun:
    """A run to create; by default of a workflow of its own, so a claim can pick it alone."""
    name = workflow or f"wf-{run_id}"
    args = [1, "two"] if args is None else args
    data: dict[str, Any] = {"workflow": name, "args": args, "journal": j.FORMAT_VERSION}
    if parent_id is not None:
        data["parent"] = parent_id
    return NewRun(run_id, name, args, Entry(1, j.WORKFLOW_STARTED, at, data), parent_id=parent_id)


def event(event_id: str, name: str, data: dict[str, Any] | None = None, *, at: float = T0) -> EventRecord:
    """An event to send."""
    return EventRecord(event_id, name, data or {}, at)


@attrs.define(eq=False)
class Driven:
    """A run a case owns: appends continue its journal with its lease token.

    Attributes:
        store: the store under test.
        run_id: the run's id.
        workflow: its workflow's name.
        token: the lease token of the latest claim.
        seq: the seq of the last entry in its journal.
    """

    store: Store
    run_id: str
    workflow: str
    token: int
    seq: int = 1

    async def append(
        self,
        kind: str,
        data: dict[str, Any] | None = None,
        *,
        at: float = T0,
        update: RunUpdate | None = None,
    ) -> Entry:
        """Append one entry (and ``update``); returns the entry."""
        entry = Entry(self.seq + 1, kind, at, data or {})
        await self.store.append(self.run_id, self.token, [entry], update)
        self.seq += 1
        return entry

    async def update(self, update: RunUpdate) -> None:
        """Apply ``update`` with no entries."""
        await self.store.append(self.run_id, self.token, [], update)

    async def wait(
        self,
        name: str,
        match: dict[str, Any] | None = None,
        *,
        at: float = T0,
        timeout_at: float | None = None,
    ) -> int:
        """Journal a ``wait_started``; returns its seq."""
        data: dict[str, Any] = {"name": name, "match": match or {}}
        if timeout_at is not None:
            data["timeout_at"] = timeout_at
        return (await self.append(j.WAIT_STARTED, data, at=at)).seq

    async def suspend(self, wake_at: float | None = None, *, at: float = T0) -> None:
        """Journal a timer (when ``wake_at`` is given) and suspend, releasing the run."""
        update = RunUpdate(status="suspended", wake_at=wake_at, release=True)
        if wake_at is None:
            await self.update(update)
        else:
            await self.append(j.TIMER_STARTED, {"until": wake_at}, at=at, update=update)

    async def finish(self, status: Status = "completed", *, at: float = T0, result: Any = None) -> None:
        """End the run with a terminal status."""
        if status == "completed":
            kind, data = j.WORKFLOW_COMPLETED, {"result": result}
            update = RunUpdate(status=status, result=result, release=True)
        elif status == "failed":
            error = {"type": "ValueError", "message": "boom", "traceback": ""}
            kind, data = j.WORKFLOW_FAILED, {"error": error}
            update = RunUpdate(status=status, error=error, release=True)
        else:
            kind, data, update = j.WORKFLOW_CANCELLED, {}, RunUpdate(status=status, release=True)
        await self.append(kind, data, at=at, update=update)

    async def reclaim(self, worker: str = W1, *, now: float = T0) -> Claim:
        """Claim the run again (it must be claimable); updates the token."""
        claims = await self.store.claim(worker, [self.workflow], now, 10)
        assert [c.run_id for c in claims] == [self.run_id], f"expected to claim {self.run_id}, got {claims}"
        self.token = claims[0].token
        return claims[0]


async def begin(
    store: Store, run_id: str, *, worker: str = W1, at: float = T0, parent_id: str | None = None
) -> Driven:
    """Create a run of a workflow of its own and claim it for ``worker`` (registered by the case)."""
    run = new_run(run_id, at=at, parent_id=parent_id)
    await store.create_run(run)
    driven = Driven(store, run_id, run.workflow, token=0)
    await driven.reclaim(worker, now=at)
    return driven


class Notices:
    """Records the notices a store delivers to this process's listeners."""

    def __init__(self, store: Store) -> None:
        self.seen: list[Notice] = []
        self.unsubscribe = store.subscribe(self.seen.append)

    def take(self) -> list[tuple[str, str]]:
        """The run notices seen since the last ``take``, as sorted (kind, run_id) pairs; then forget them.

        ``"event"`` notices (about an event, not a run) are left out.
        """
        seen: list[tuple[str, str]] = sorted((n.kind, n.run_id) for n in self.seen if n.kind != "event")
        self.seen.clear()
        return seen


async def claimed_ids(
    store: Store, worker: str, workflows: Sequence[str], now: float, limit: int = 100
) -> set[str]:
    """Claim and return the claimed run ids."""
    return {c.run_id for c in await store.claim(worker, workflows, now, limit)}


class Cases:
    """Base of the case groups: declares the ``store`` fixture subclasses provide."""

    pytestmark = pytest.mark.asyncio  # in strict mode too, every case runs on an event loop

    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        """A fresh, opened store; override this fixture in the subclass."""
        raise NotImplementedError(
            f"{type(self).__name__} must override the `store` fixture: an async fixture that "
            "yields a fresh, opened store and closes it afterwards"
        )
        yield  # pragma: no cover - makes this an async generator, like the overrides
