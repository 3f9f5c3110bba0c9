"""Frozen policy values given to ``@app.step`` and ``@app.workflow``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import attrs

__all__ = ("CancelOn", "Concurrency", "Debounce", "RateLimit", "RetryPolicy", "Throttle")

#: A function of the workflow's arguments (as ``app.start`` receives them).
KeyFn = Callable[..., str]


def _positive_delta(_: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if not isinstance(value, timedelta) or value < timedelta(0):
        raise ValueError(f"{attribute.name} must be a non-negative timedelta, got {value!r}")


def _period(_: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ValueError(f"{attribute.name} must be a positive timedelta, got {value!r}")


def _limit(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be an int >= 1, got {value!r}")


def _key_fn(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{attribute.name} must be a function of the workflow's arguments, got {value!r}")


def _exception_types(
    _: object, attribute: attrs.Attribute[tuple[type[BaseException], ...]], value: object
) -> None:
    if not isinstance(value, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        raise ValueError(f"{attribute.name} must be a tuple of exception types, got {value!r}")


@attrs.frozen
class RetryPolicy:
    """How a failing step is retried: exponential backoff on durable timers.

    Attempt ``n`` (from 1) that fails waits
    ``min(initial_interval * backoff ** (n - 1), max_interval)`` before attempt
    ``n + 1``; with ``jitter`` the wait is drawn uniformly from half of that to all
    of it, so that many runs failing together do not retry together.

    Attributes:
        max_attempts: attempts in all, the first included; 1 means no retry.
        initial_interval: the wait after the first failure.
        backoff: the factor each further wait grows by.
        max_interval: the longest wait.
        jitter: randomise waits (see above).
        non_retryable: exception types that fail the step at once.
    """

    max_attempts: int = attrs.field(default=3)
    initial_interval: timedelta = attrs.field(default=timedelta(seconds=1), validator=_positive_delta)
    backoff: float = attrs.field(default=2.0)
    max_interval: timedelta = attrs.field(default=timedelta(minutes=5), validator=_positive_delta)
    jitter: bool = True
    non_retryable: tuple[type[BaseException], ...] = attrs.field(default=(), validator=_exception_types)

    @max_attempts.validator
    def _check_attempts(self, _: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {value!r}")

    @backoff.validator
    def _check_backoff(self, _: attrs.Attribute[float], value: float) -> None:
        if not isinstance(value, int | float) or value < 1:
            raise ValueError(f"backoff must be a number >= 1, got {value!r}")

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait after failed attempt ``attempt`` (from 1).

        Args:
            attempt: the attempt that just failed.
            rand: a number in [0, 1) used for jitter.
        """
        base = self.initial_interval.total_seconds() * self.backoff ** (attempt - 1)
        wait = min(base, self.max_interval.total_seconds())
        return wait * (0.5 + rand / 2) if self.jitter else wait


DEFAULT_RETRY = RetryPolicy()


@attrs.frozen
class Concurrency:
    """At most ``limit`` runs execute at once; the others wait, in priority then start order.

    A run holds one of the ``limit`` slots while a worker drives it (``running``);
    a run that sleeps or waits for an event (``suspended``) gives its slot up and
    queues for one again when it wakes.

    Attributes:
        limit: how many runs may execute at once.
        key: a function of the workflow's arguments returning a string: the limit
            then holds per key (per customer, per account...). None: one limit
            for every run of the workflow.
    """

    limit: int = attrs.field(validator=_limit)
    key: KeyFn | None = attrs.field(default=None, validator=_key_fn)


@attrs.frozen
class Throttle:
    """Start at most ``limit`` runs per ``period``; later starts are queued, not dropped.

    A start beyond the limit is stored at once and begins when the window allows
    (in any window of length ``period``, at most ``limit`` runs begin).

    Attributes:
        limit: runs that may begin per period.
        period: the window.
        key: a function of the workflow's arguments; the throttle holds per key.
    """

    limit: int = attrs.field(validator=_limit)
    period: timedelta = attrs.field(validator=_period)
    key: KeyFn | None = attrs.field(default=None, validator=_key_fn)


@attrs.frozen
class RateLimit:
    """Accept at most ``limit`` starts per ``period``; drop the rest.

    A dropped start is stored as a ``cancelled`` run whose error says why
    (so starting it again with the same ``run_id`` returns the same answer, and
    ``result()`` raises ``Cancelled``); it never runs.

    Attributes:
        limit: starts accepted per period.
        period: the window.
        key: a function of the workflow's arguments; the limit holds per key.
    """

    limit: int = attrs.field(validator=_limit)
    period: timedelta = attrs.field(validator=_period)
    key: KeyFn | None = attrs.field(default=None, validator=_key_fn)


@attrs.frozen
class Debounce:
    """Start one run per key once ``period`` passes without a new start, with the last arguments.

    Every start while a debounced run is still waiting to begin joins that run:
    its arguments become the new ones, its start moves ``period`` later, and the
    handle returned is that run's. ``timeout`` caps the total delay from the
    first start. Child runs are not debounced.

    Attributes:
        period: the quiet time that must pass before the run begins.
        key: a function of the workflow's arguments; None: one per workflow.
        timeout: the longest a run may be pushed back, from its first start.
    """

    period: timedelta = attrs.field(validator=_period)
    key: KeyFn | None = attrs.field(default=None, validator=_key_fn)
    timeout: timedelta | None = attrs.field(default=None)

    @timeout.validator
    def _check_timeout(self, attribute: attrs.Attribute[timedelta | None], value: timedelta | None) -> None:
        if value is not None and (not isinstance(value, timedelta) or value <= timedelta(0)):
            raise ValueError(f"timeout must be a positive timedelta or None, got {value!r}")


@attrs.frozen
class CancelOn:
    """Cancel a run when an event arrives: ``event`` by name, its data containing ``match``.

    Only events sent after the run started count. The workflow sees
    ``asyncio.CancelledError`` at its next await and may clean up.

    Attributes:
        event: the event's name.
        match: a function of the workflow's arguments returning the dict the
            event's data must contain; None: every event with that name.
    """

    event: str = attrs.field()
    match: Callable[..., dict[str, Any]] | None = attrs.field(default=None, validator=_key_fn)

    @event.validator
    def _check_event(self, _: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError(f"event must be a non-empty event name, got {value!r}")
