"""Frozen policy values given to ``@app.step`` and ``@app.workflow``."""

from __future__ import annotations

from datetime import timedelta

import attrs

__all__ = ("RetryPolicy",)


def _positive_delta(_: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if not isinstance(value, timedelta) or value < timedelta(0):
        raise ValueError(f"{attribute.name} must be a non-negative timedelta, got {value!r}")


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
