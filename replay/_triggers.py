"""What a worker starts by itself: runs for cron ticks and for events that trigger workflows.

Both keep a cursor in the store (``Store.get_schedule``): the last tick fired,
the position of the last event handled. Moving the cursor and creating the run
are one transaction (``Store.advance_schedule``), so with many workers, across
crashes and restarts, each tick and each event starts its run once; ticks and
events that came while no worker ran are started when one comes back.

``app.send_event`` already creates the runs an event triggers, in the event's
own transaction; the cursor catches events stored by anything else (``replay
events send`` without ``--app``, another service): creating a run that exists
changes nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from replay.schedules import Cron

if TYPE_CHECKING:
    from replay.app import App
    from replay.clock import Clock
    from replay.definitions import WorkflowDef
    from replay.stores.base import EventRecord, Store

__all__ = ("Triggers", "event_value")

log = logging.getLogger("replay.worker")

#: Events read per cursor per pass.
BATCH = 100


def event_value(event: EventRecord) -> dict[str, Any]:
    """An event as a triggered run's one argument (its workflow receives a ``replay.Event``)."""
    return {"id": event.id, "name": event.name, "data": event.data, "at": event.at}


class Triggers:
    """The cron and event-triggered workflows of an app, fired by one worker."""

    def __init__(self, app: App, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.crons: list[tuple[WorkflowDef[*tuple[Any, ...], Any], Cron]] = []
        self.events: list[tuple[WorkflowDef[*tuple[Any, ...], Any], str]] = []
        for wf in app.workflows.values():
            if isinstance(wf.trigger, Cron):
                self.crons.append((wf, wf.trigger))
            elif isinstance(wf.trigger, str):
                self.events.append((wf, wf.trigger))

    def __bool__(self) -> bool:
        return bool(self.crons or self.events)

    async def prepare(self) -> None:
        """Set the cursors never set before, to now: call it before the worker starts.

        A workflow's first worker starts runs for ticks and events from then on
        (``app.send_event`` starts the runs itself, from the first send).
        """
        if self.events:
            position = await self.store.last_event_position()
            for wf, _ in self.events:
                await self._cursor(f"trigger:{wf.name}", position)
        for wf, _ in self.crons:
            await self._cursor(f"cron:{wf.name}", self.clock.now())

    async def fire(self) -> float | None:
        """Start the runs of due ticks and new events; returns the next tick to wake for."""
        for wf, name in self.events:
            await self._fire_events(wf, name)
        next_tick: float | None = None
        for wf, cron in self.crons:
            tick = await self._fire_cron(wf, cron)
            next_tick = tick if next_tick is None else min(next_tick, tick)
        return next_tick

    async def _cursor(self, name: str, initial: float) -> float:
        cursor = await self.store.get_schedule(name)
        if cursor is None:
            # First seen: start from now, with no back-filling; if another worker
            # set it meanwhile, its value stands.
            await self.store.advance_schedule(name, None, initial, None)
            cursor = await self.store.get_schedule(name)
            assert cursor is not None
        return cursor

    async def _fire_cron(self, wf: WorkflowDef[*tuple[Any, ...], Any], cron: Cron) -> float:
        name = f"cron:{wf.name}"
        now = self.clock.now()
        cursor = await self._cursor(name, now)
        tick = cron.next_after(cursor)
        while tick <= now:
            run = wf.new_run(cron.run_id(wf.name, tick), [], tick, created_at=tick)
            if await self.store.advance_schedule(name, cursor, tick, run):
                cursor = tick
            else:
                cursor = await self._cursor(name, now)  # another worker fired it
            tick = cron.next_after(cursor)
        return tick

    async def _fire_events(self, wf: WorkflowDef[*tuple[Any, ...], Any], event_name: str) -> None:
        name = f"trigger:{wf.name}"
        cursor = int(await self._cursor(name, await self.store.last_event_position()))
        while True:
            events = await self.store.events_after(cursor, [event_name], BATCH)
            for event in events:
                try:
                    run = wf.new_run(f"{wf.name}:{event.id}", [event_value(event)], event.at)
                except Exception:
                    # A flow-control function that fails on this event's data: the
                    # event starts nothing, rather than stopping every later one.
                    log.exception("event %s cannot start a run of %s; skipped", event.id, wf.name)
                    run = None
                if not await self.store.advance_schedule(name, cursor, event.position, run):
                    return  # another worker is on it
                cursor = event.position
            if len(events) < BATCH:
                return
