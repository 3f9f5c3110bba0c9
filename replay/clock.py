"""Time, injected: the wall clock in production, a virtual clock in tests.

Everything in replay that reads the time or waits for it goes through a ``Clock``,
so ``TestEnv`` can move time forward by days without anyone sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol

import attrs

__all__ = ("Clock", "SystemClock", "TimerHandle", "VirtualClock")


class TimerHandle(Protocol):
    """What ``Clock.call_at`` returns."""

    def cancel(self) -> None:
        """Stop the callback from running, if it has not run yet."""


class Clock(Protocol):
    """A source of time that can also call back at a given time."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Call ``callback`` on the running event loop once ``now() >= when``."""
        ...


class SystemClock:
    """The wall clock, with callbacks on the running asyncio loop."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Call ``callback`` on the running event loop once ``now() >= when``."""
        return asyncio.get_running_loop().call_later(max(0.0, when - time.time()), callback)


@attrs.define(eq=False)
class _VirtualTimer:
    when: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@attrs.define(eq=False)
class VirtualClock:
    """A clock that moves only when told to.

    ``advance_to`` runs, in time order, every callback due by then; the callbacks
    run synchronously, so whoever they wake is marked busy before ``advance_to``
    returns.
    """

    _now: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a fixed start makes journals repeatable
    _heap: list[tuple[float, int, _VirtualTimer]] = attrs.field(factory=list)
    _counter: itertools.count[int] = attrs.field(factory=itertools.count)

    def now(self) -> float:
        """The virtual time, in seconds since the epoch."""
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Call ``callback`` when the clock is advanced to ``when`` or beyond."""
        timer = _VirtualTimer(when, callback)
        if when <= self._now:
            asyncio.get_running_loop().call_soon(self._fire, timer)
        else:
            heapq.heappush(self._heap, (when, next(self._counter), timer))
        return timer

    @staticmethod
    def _fire(timer: _VirtualTimer) -> None:
        if not timer.cancelled:
            timer.cancelled = True
            timer.callback()

    def next_deadline(self) -> float | None:
        """The time of the earliest pending callback, if any."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def fire_due(self, until: float) -> bool:
        """Move to the earliest deadline <= ``until`` and run every callback due then.

        Returns:
            Whether any deadline was reached; when none is, the clock moves to ``until``.
        """
        deadline = self.next_deadline()
        if deadline is None or deadline > until:
            self._now = max(self._now, until)
            return False
        self._now = max(self._now, deadline)
        while self._heap and self._heap[0][0] <= self._now:
            _, _, timer = heapq.heappop(self._heap)
            self._fire(timer)
        return True
