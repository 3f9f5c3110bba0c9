"""The worker: claims runs, drives them, runs their steps.

``async with app.worker():`` runs one in the background of the caller's event
loop; ``replay worker module:app`` runs one as a process.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import random
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from replay._ops import StepOp
from replay._runner import News, RunDriver
from replay._triggers import Triggers
from replay.errors import NonRetryableError
from replay.stores.base import ACTIVE_STATUSES, Claim, Notice, Store

if TYPE_CHECKING:
    from replay.app import App
    from replay.clock import Clock, TimerHandle

__all__ = ("StepInfo", "Worker", "current_step")

log = logging.getLogger("replay.worker")

#: Seconds, on the worker's clock, before a claim pass that failed is tried again;
#: doubled at each failure in a row, up to ``CLAIM_RETRY_MAX``.
CLAIM_RETRY = 0.5
CLAIM_RETRY_MAX = 30.0


@attrs.frozen
class StepInfo:
    """What a running step can know about itself (see ``current_step``).

    Attributes:
        run_id: the run the step belongs to.
        seq: the step's position in the run's journal.
        name: the step's name.
        attempt: which attempt this is, from 1.
        idempotency_key: ``"run_id:seq"``, the same on every attempt: pass it to
            external services so that a retried call is not done twice.
    """

    run_id: str
    seq: int
    name: str
    attempt: int

    @property
    def idempotency_key(self) -> str:
        """``"run_id:seq"``: stable across attempts and restarts."""
        return f"{self.run_id}:{self.seq}"


#: Inside a step attempt: its run id, seq, name and attempt (a ``StepInfo``'s fields).
_current_step: contextvars.ContextVar[tuple[str, int, str, int] | None] = contextvars.ContextVar(
    "replay_step", default=None
)


def current_step() -> StepInfo | None:
    """Inside a step: which run, step and attempt is running. Elsewhere: None."""
    fields = _current_step.get()
    return None if fields is None else StepInfo(*fields)


class Activity:
    """Counts work in flight, so tests can wait until a worker is idle.

    ``inc`` and ``dec`` run several times per step: they touch the events only
    when the count crosses zero, or when somebody waits for progress.
    """

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._progress: asyncio.Future[None] | None = None  # set while ``progressed`` waits

    def inc(self, n: int = 1) -> None:
        """More work."""
        if self.count <= 0:
            self.idle.clear()
        self.count += n

    def dec(self, n: int = 1) -> None:
        """Work done."""
        self.count -= n
        waiter = self._progress
        if waiter is not None:
            self._progress = None
            if not waiter.done():
                waiter.set_result(None)
        if self.count <= 0:
            self.idle.set()

    async def pause(self, clock: Clock, seconds: float) -> None:
        """Wait ``seconds`` on ``clock``, not counted as work meanwhile (a backoff after a failure).

        The caller holds one count: it is given back for the wait and taken
        again when the clock wakes the caller, or when the wait is cancelled.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not done.done():
                self.inc()  # busy from the moment the clock wakes it, as its other callbacks
                done.set_result(None)

        timer = clock.call_at(clock.now() + seconds, wake)
        self.dec()
        try:
            await done
        finally:
            timer.cancel()
            if not done.done() or done.cancelled():
                self.inc()  # cancelled while waiting: wake never counted it back

    def progressed(self) -> asyncio.Future[None]:
        """A future that resolves the next time some work is done (a step returned, a batch was journaled)."""
        if self._progress is None or self._progress.done():
            self._progress = asyncio.get_running_loop().create_future()
        return self._progress


class Worker:
    """Claims runs of its app's workflows from the store and drives them.

    Args:
        app: the app whose workflows it runs.
        store: an open store.
        clock: the time source.
        worker_id: a unique id (default: random).
        max_runs: the most runs it keeps hot at once.
        keep_hot: a run with no step running stays in memory if its next timer
            is due within this many seconds; otherwise it is suspended and evicted.
        poll_interval: also look for claimable runs this often (seconds), and
            for news of the runs it keeps hot, for stores whose other processes
            cannot notify this one; default: the store's ``poll_interval``.
        seed: seed for retry jitter (tests).
        on_step: called as each step attempt starts (tests count executions with it).
        step_mocks: step name -> a function to run instead of the step (``TestEnv.mock_step``).
    """

    def __init__(
        self,
        app: App,
        store: Store,
        clock: Clock,
        *,
        worker_id: str | None = None,
        max_runs: int = 10_000,
        keep_hot: float = 1.0,
        poll_interval: float | None = None,
        seed: int | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
        step_mocks: dict[str, Callable[..., Any]] | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.clock = clock
        self.worker_id = worker_id or f"{app.name}-{uuid.uuid4().hex[:12]}"
        self.max_runs = max_runs
        self.keep_hot = keep_hot
        self.poll_interval = poll_interval if poll_interval is not None else store.poll_interval
        self.rng = random.Random(seed)
        self.on_step = on_step
        self.step_mocks = step_mocks if step_mocks is not None else {}
        self.activity = Activity()
        self.drivers: dict[str, RunDriver] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake_pending = False
        self._wake_event = asyncio.Event()
        self._wake_timer: TimerHandle | None = None
        self._wake_timer_at: float | None = None
        self._claim_task: asyncio.Task[None] | None = None
        self._unsubscribe: Any = None
        self._names: tuple[str, ...] = ()
        self._triggers: Triggers | None = None
        self._halted = False
        self._passing = False  # the claim loop holds a count of activity for the pass it runs
        self._claim_failures = 0  # claim passes failed in a row
        self._retry_timer: TimerHandle | None = None  # set while a failed pass waits to be retried
        self._draining = False
        self._cut: list[StepInfo] = []  # attempts a drain did not see journaled, their run dropped
        self._never: asyncio.Future[None] | None = None  # what a step started while draining awaits
        # Runs told of news while a claim was in flight: the claim may have read
        # their rows before it, and the drivers it starts were not there to hear it.
        self._news_in_claim: set[str] | None = None
        self._news_polled_at = float("-inf")  # the loop's time of the last ``_hear_news`` query

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Register with the store and start claiming runs."""
        self._names = tuple(self.app.workflows)
        self._triggers = Triggers(self.app, self.store, self.clock)
        await self._triggers.prepare()
        await self.store.register_worker(self.worker_id)
        self._unsubscribe = self.store.subscribe(self._on_notice)
        await self._report_unknown()
        self.activity.inc()  # the first claim pass
        self._passing = True
        self._claim_task = asyncio.create_task(self._claim_loop(), name=f"{self.worker_id}:claim")
        self._claim_task.add_done_callback(self._claim_loop_done)

    async def stop(self) -> None:
        """Stop: drop hot runs (steps in flight will run again elsewhere) and unregister."""
        self.halt()
        await asyncio.sleep(0)  # let cancelled tasks unwind
        await self.store.unregister_worker(self.worker_id)

    async def drain(self, timeout: float | None = None) -> list[StepInfo]:
        """Stop gracefully: finish and journal the steps in flight, then stop.

        The worker claims nothing more and starts no new step attempt (a run
        that asks for one keeps it for the next worker, which runs it after
        replaying). Every step attempt already running is awaited and its
        outcome journaled; then the worker stops as ``stop`` does, and the runs
        it held become claimable at once.

        Args:
            timeout: the longest to wait for steps in flight, in seconds; None
                waits as long as they take.

        Returns:
            The step attempts still unjournaled when ``timeout`` ran out: they
            were cut off and will run again elsewhere. Empty after a clean drain.
        """
        self._draining = True
        if self._claim_task is not None:
            self._claim_task.cancel()
        self._cancel_timers()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            progress = self.activity.progressed()
            if not self.in_flight():
                break
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await progress
            except TimeoutError:
                pass
        cut = self._cut + self.in_flight()  # with those of runs dropped meanwhile (a failed append)
        await self.stop()
        return cut

    def _cancel_timers(self) -> None:
        for timer in (self._wake_timer, self._retry_timer):
            if timer is not None:
                timer.cancel()
        self._wake_timer = self._wake_timer_at = self._retry_timer = None

    def in_flight(self) -> list[StepInfo]:
        """Step attempts begun by this worker whose outcome is not journaled yet."""
        found = []
        for driver in self.drivers.values():
            if not driver.closed:  # a closed one ended or was dropped: nothing more is journaled there
                found.extend(_unjournaled(driver))
        return found

    def dropped(self, driver: RunDriver) -> None:
        """A driver is closing: while draining, its attempts not yet journaled are cut off."""
        if self._draining:
            self._cut.extend(_unjournaled(driver))

    def halt(self) -> None:
        """Stop at once, writing nothing more: what a process death looks like."""
        self._halted = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._cancel_timers()
        if self._claim_task is not None:
            self._claim_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        for driver in list(self.drivers.values()):
            for step in driver.running.values():
                step.cancel()

    async def wait_idle(self) -> None:
        """Return once nothing is running or ready to run."""
        while self.activity.count > 0:
            await self.activity.idle.wait()

    async def _report_unknown(self) -> None:
        for status in ACTIVE_STATUSES:
            for info in await self.store.list_runs(status=status, limit=1000):
                if info.workflow not in self.app.workflows:
                    log.warning(
                        "run %s is %s but its workflow %r is not registered on %r; "
                        "it is left untouched until a worker that knows it runs",
                        info.run_id,
                        info.status,
                        info.workflow,
                        self.app,
                    )

    # -- claiming ---------------------------------------------------------------------------

    def _on_notice(self, notice: Notice) -> None:
        if notice.kind == "news":
            if self._news_in_claim is not None:
                # Even with a driver here: a run claimed again replaces it, unheard.
                self._news_in_claim.add(notice.run_id)
            driver = self.drivers.get(notice.run_id)
            if driver is not None:
                driver.post(News())
                return
        if notice.kind in ("ready", "news") or (notice.kind == "event" and self._triggers):
            self._wake()

    def _wake(self) -> None:
        if self._draining or self._halted or self._retry_timer is not None:
            return  # a draining or stopped worker claims nothing more; a failed pass waits for its retry
        if not self._wake_pending:
            self._wake_pending = True
            self.activity.inc()
            self._wake_event.set()

    async def _claim_loop(self) -> None:
        # The loop holds one count of activity while it runs a pass (``_passing``;
        # ``start`` took the first), and ``_wake`` one more while a wake-up is pending.
        while not self._halted:
            try:
                await self._claim_pass()
                self._claim_failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged, and tried again after a backoff
                self._back_off(exc)
            if self._wake_pending:
                self._wake_pending = False
                self.activity.dec()
                continue
            self._passing = False
            self.activity.dec()
            while not self._wake_pending:  # a poll, or a wake-up while backing off, runs no pass
                self._wake_event.clear()
                if self.poll_interval is None:
                    await self._wake_event.wait()
                    continue
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancellation that races the event, and the loop would outlive stop().
                try:
                    async with asyncio.timeout(self.poll_interval):
                        await self._wake_event.wait()
                except TimeoutError:
                    self._wake()
            self._wake_pending = False  # its count is the next pass's
            self._passing = True

    def _back_off(self, exc: Exception) -> None:
        """After a failed pass: none until the retry is due, each wait twice the last, up to a cap.

        Meanwhile wake-ups are dropped (the retry is a full pass) and the loop
        waits without counting as busy: a store that stays down is no work in
        flight, and a test's virtual clock may be what has to move.
        """
        self._claim_failures += 1
        delay = min(CLAIM_RETRY * 2 ** (self._claim_failures - 1), CLAIM_RETRY_MAX)
        if self._claim_failures == 1:
            log.error("claiming runs failed; trying again in %g s", delay, exc_info=exc)
        else:
            log.warning("claiming runs failed again (%s); trying again in %g s", exc, delay)
        if self._wake_pending:  # what it asked for is the retry's to do
            self._wake_pending = False
            self.activity.dec()
        self._retry_timer = self.clock.call_at(self.clock.now() + delay, self._retry)

    def _retry(self) -> None:
        self._retry_timer = None
        self._wake()

    def _claim_loop_done(self, task: asyncio.Task[None]) -> None:
        # Stopped (halt, drain), maybe before it ever ran: give back what the loop still counts.
        held = int(self._passing) + int(self._wake_pending)
        self._passing = self._wake_pending = False
        if held:
            self.activity.dec(held)
        self._task_done(task)

    async def _claim_pass(self) -> None:
        await self._hear_news()
        next_tick = await self._triggers.fire() if self._triggers else None
        batch = 100
        while True:
            free = self.max_runs - len(self.drivers)
            if free <= 0:
                return
            heard: set[str] = set()
            self._news_in_claim = heard
            try:
                claims = await self.store.claim(
                    self.worker_id, self._names, self.clock.now(), min(free, batch)
                )
            finally:
                self._news_in_claim = None
            for claim in claims:
                self._start_driver(claim, claim.run_id in heard)
            if len(claims) < min(free, batch):
                break
        wake = await self.store.next_wake_at(self._names)
        if wake is not None and wake <= self.clock.now():
            # Due but not taken: it waits for a concurrency slot (a slot freed here
            # wakes this loop; elsewhere, the poll does), or another worker has it.
            wake = None
        if next_tick is not None:
            wake = next_tick if wake is None else min(wake, next_tick)
        if wake != self._wake_timer_at:
            if self._wake_timer is not None:
                self._wake_timer.cancel()
            self._wake_timer = None if wake is None else self.clock.call_at(wake, self._on_wake_timer)
            self._wake_timer_at = wake

    async def _hear_news(self) -> None:
        """Every ``poll_interval``: news for hot runs that no notice may have brought.

        A cancellation, an event or a child's end recorded by another process
        reaches this one as a notice only where the store can send one across
        processes. Without it a run kept in memory would not hear of it until
        it suspends; the store says which runs have news (``runs_with_news``).
        """
        if self.poll_interval is None or not self.drivers:
            return
        now = asyncio.get_running_loop().time()
        if now - self._news_polled_at < self.poll_interval:
            return
        self._news_polled_at = now
        for run_id in await self.store.runs_with_news(self.worker_id):
            driver = self.drivers.get(run_id)
            if driver is not None:
                driver.post(News())

    def _on_wake_timer(self) -> None:
        self._wake_timer = None
        self._wake_timer_at = None
        self._wake()

    def _start_driver(self, claim: Claim, heard: bool) -> None:
        """Drive ``claim``'s run; ``heard``: news of it came after the claim read its row."""
        old = self.drivers.get(claim.run_id)
        if old is not None:
            # Claimed again while still hot here: the old lease is void, drop it. Its
            # driver is ended too: it could only fail its appends, or wait for ever.
            for step in old.running.values():
                step.cancel()
            if old.task is not None:
                old.task.cancel()
        driver = RunDriver(self, claim, heard)
        self.drivers[claim.run_id] = driver
        self.activity.inc()
        task = asyncio.create_task(driver.run(), name=f"{self.worker_id}:{claim.run_id}")
        driver.task = task
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # a simulated process death ends tasks this way; it is not news

    def forget(self, driver: RunDriver) -> None:
        """A driver is done with its run."""
        if self.drivers.get(driver.run_id) is driver:
            del self.drivers[driver.run_id]
            self._wake()  # a slot is free, and the run may be claimable again

    # -- steps ------------------------------------------------------------------------------

    async def execute_step(self, run_id: str, op: StepOp, attempt: int) -> Any:
        """Run one attempt of a step, with its timeout, in this process."""
        step = op.step
        fn = self.step_mocks.get(op.name) if self.step_mocks else None
        is_async: bool | None  # known for a registered step and a StepMock; asked of anything else
        if fn is None:
            fn = getattr(step, "fn", step)
            is_async = getattr(step, "is_async", None)
        else:
            is_async = getattr(fn, "is_async", None)
        if fn is None:
            raise LookupError(f"step {op.name!r} is not known to this worker")
        if self._draining:
            # Not started, so not cut off: the next worker runs it after replaying.
            if self._never is None:
                self._never = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._never)
        op.started = attempt  # in flight until its outcome is journaled (``in_flight``)
        if self.on_step is not None:
            self.on_step(StepInfo(run_id, op.seq, op.name, attempt))
        # A tuple: the StepInfo is built only if the step asks for it (``current_step``).
        token = _current_step.set((run_id, op.seq, op.name, attempt))
        try:
            if is_async is None:
                is_async = inspect.iscoroutinefunction(fn)  # a plain function or a mock: ask
            if is_async:
                if op.timeout is None:
                    return await fn(*op.args, **op.kwargs)
                async with asyncio.timeout(op.timeout):
                    return await fn(*op.args, **op.kwargs)
            call = functools.partial(fn, *op.args, **op.kwargs)
            with anyio.fail_after(op.timeout):
                return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        finally:
            _current_step.reset(token)

    def retryable(self, op: StepOp, exc: BaseException) -> bool:
        """Whether a step attempt that raised ``exc`` may be retried."""
        if isinstance(exc, NonRetryableError):
            return False
        return not (op.retry.non_retryable and isinstance(exc, op.retry.non_retryable))


def _unjournaled(driver: RunDriver) -> list[StepInfo]:
    """The run's step attempts begun by this worker whose outcome is not journaled yet."""
    inst = driver.instance
    if inst is None:
        return []
    # An attempt's outcome is journaled once the op is gone or counts it.
    return [
        StepInfo(driver.run_id, op.seq, op.name, op.started)
        for op in inst.ops.values()
        if isinstance(op, StepOp) and op.started > op.attempts
    ]
