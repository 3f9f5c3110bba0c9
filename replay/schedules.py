"""Cron schedules: ``@app.workflow(trigger=replay.cron("*/5 * * * *"))``.

Workers fire the ticks. The last tick fired is stored with the runs (the
store's schedule cursor), and a tick's run is created in the same transaction
that moves the cursor, with an id made of the workflow's name and the tick's
time: a tick is never started twice, by two workers or across a restart, and
ticks that fell due while no worker ran are started when one comes back.
"""

from __future__ import annotations

import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

__all__ = ("Cron", "cron")


def _croniter() -> Any:
    try:
        from croniter import croniter  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("cron schedules need the croniter package: pip install 'replay[cron]'") from None
    return croniter


@attrs.frozen
class Cron:
    """A cron schedule; build it with ``replay.cron``.

    Attributes:
        expression: five fields (minute hour day-of-month month day-of-week),
            or six with seconds last, as croniter reads them.
        timezone: the IANA zone the expression is read in.
    """

    expression: str
    timezone: str = "UTC"

    def next_after(self, at: float) -> float:
        """The first tick strictly after ``at`` (epoch seconds)."""
        start = datetime.datetime.fromtimestamp(at, ZoneInfo(self.timezone))
        tick: datetime.datetime = _croniter()(self.expression, start).get_next(datetime.datetime)
        return tick.timestamp()

    def run_id(self, workflow: str, tick: float) -> str:
        """The id of the run a tick starts: the same for every worker that fires it."""
        stamp = datetime.datetime.fromtimestamp(tick, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{workflow}:cron:{stamp}"


def cron(expression: str, *, timezone: str = "UTC") -> Cron:
    """A cron schedule for ``@app.workflow(trigger=...)``.

    The workflow takes no argument besides ``ctx``; ``ctx.now()`` inside it is
    the tick's time or a little after.

    Args:
        expression: such as ``"*/5 * * * *"`` (every five minutes) or ``"0 9 * * mon"``.
        timezone: the IANA zone the expression is read in (default UTC).

    Raises:
        ValueError: the expression or the zone is not valid.
        ImportError: croniter is not installed (``pip install 'replay[cron]'``).
    """
    if not isinstance(expression, str) or not _croniter().is_valid(expression):
        raise ValueError(f"not a valid cron expression: {expression!r} (try '*/5 * * * *')")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {timezone!r} (an IANA name such as 'Europe/Paris')") from None
    return Cron(expression, timezone)
