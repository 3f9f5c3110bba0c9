"""``TestEnv``: run an app's workflows in a test, on a memory store and a virtual clock."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from replay.clock import Clock, VirtualClock
from replay.context import step_name
from replay.stores import open_store
from replay.stores.base import Store
from replay.stores.memory import MemoryStore
from replay.testing.mocks import _UNSET, StepMock
from replay.testing.records import StepRecord, step_records
from replay.worker import Worker

if TYPE_CHECKING:
    from replay.app import App, RunHandle

__all__ = ("TestEnv",)


class TestEnv:
    """Runs ``app`` on a fresh memory store and a virtual clock, with a background worker.

    Tests call ``app.start(...)`` as production code does, move time with
    ``advance`` and simulate a process death with ``crash``; nothing sleeps.

    Args:
        app: the app under test.
        store: the store to use, or its URL (default: a fresh ``MemoryStore``).
        seed: seed for retry jitter, so runs repeat exactly.
        worker_options: more keyword arguments for ``Worker``.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self, app: App, *, store: Store | str | None = None, seed: int = 0, **worker_options: Any
    ) -> None:
        self.app = app
        if store is None:
            store = MemoryStore()
        elif isinstance(store, str):
            store = open_store(store)
        self.store: Store = store
        self.clock = VirtualClock()
        self._seed = seed
        self._options = worker_options
        self._previous: tuple[Store | None, bool, Clock] | None = None
        self._worker: Worker | None = None
        self._generation = 0
        self._mocks: dict[str, Any] = {}

    @property
    def worker(self) -> Worker:
        """The worker running now (a new one after each ``crash``)."""
        if self._worker is None:
            raise RuntimeError("TestEnv is not running: use it as `async with TestEnv(app) as env:`")
        return self._worker

    async def __aenter__(self) -> TestEnv:
        await self.store.open()
        self._previous = self.app.use_store(self.store, self.clock)
        await self._start_worker()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._worker is not None:
                await self._worker.stop()
                self._worker = None
        finally:
            if self._previous is not None:
                self.app.restore_store(self._previous)
            await self.store.close()

    async def _start_worker(self) -> None:
        self._generation += 1
        worker = Worker(
            self.app,
            self.store,
            self.clock,
            worker_id=f"test-worker-{self._generation}",
            seed=self._seed + self._generation,
            step_mocks=self._mocks,
            **self._options,
        )
        await worker.start()
        self._worker = worker

    def mock_step(
        self,
        step: Callable[..., Any] | str,
        *,
        returns: Any = _UNSET,
        raises: BaseException | type[BaseException] | None = None,
        side_effect: Callable[..., Any] | None = None,
    ) -> StepMock:
        """Replace a step, by function or name, for the rest of this environment.

        Give exactly one of ``returns`` (the value), ``raises`` (an exception; it
        counts as a failed attempt and is retried as the step's policy says) or
        ``side_effect`` (a function, sync or ``async def``, called with the
        step's arguments).

        Returns:
            The mock; its ``calls`` list every attempt's arguments.

        Raises:
            ValueError: ``step`` is a name no step of the app is registered under
                (a typo would let the real step run); a step called as
                ``ctx.step(fn)`` is mocked by passing ``fn`` itself.
        """
        if isinstance(step, str):
            if step not in self.app.steps:
                known = ", ".join(sorted(self.app.steps)) or "none"
                raise ValueError(
                    f"no step named {step!r} is registered on {self.app!r} (its steps: {known}); "
                    "for a step called as ctx.step(fn), pass fn itself"
                )
            name = step
        else:
            name = step_name(step)
        mock = StepMock(name, returns, raises, side_effect)
        self._mocks[name] = mock
        return mock

    async def steps(self, run: RunHandle[Any] | str) -> list[StepRecord]:
        """What a run's steps did, from its journal, in the order they were scheduled."""
        run_id = run if isinstance(run, str) else run.run_id
        return step_records(await self.store.read_journal(run_id))

    def now(self) -> float:
        """The virtual time, in seconds since the epoch."""
        return self.clock.now()

    async def idle(self) -> None:
        """Wait until every run has done all it can at the current time."""
        await self.worker.wait_idle()

    async def advance(self, delta: timedelta | float) -> None:
        """Move time forward by ``delta``, firing every timer due on the way, in order.

        Returns once every run has done all it can up to the new time.
        """
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        if not seconds >= 0 or math.isinf(seconds):  # NaN fails the first test
            raise ValueError(f"time only moves forward, by a finite amount; got {delta!r}")
        target = self.clock.now() + seconds
        await self.idle()
        while self.clock.fire_due(target):
            await self.idle()
        await self.idle()

    async def crash(self, *, down_for: timedelta | float = 0) -> None:
        """Simulate a process death, then start a fresh worker on the same store.

        Every in-memory instance, buffered entry and step in flight is thrown away.

        Args:
            down_for: how long no worker runs before the fresh one starts: the
                clock moves on, and nothing fires, as while a machine is down.
        """
        seconds = down_for.total_seconds() if isinstance(down_for, timedelta) else float(down_for)
        if seconds < 0:
            raise ValueError(f"down_for must not be negative, got {down_for!r}")
        old = self.worker
        old.halt()
        self._worker = None
        # The store learns the old worker is gone, as an OS lock would tell it.
        await self.store.unregister_worker(old.worker_id)
        target = self.clock.now() + seconds
        while self.clock.fire_due(target):
            pass  # only the dead worker's cancelled timers are left: nothing runs
        await self._start_worker()
