"""The proof: generated workflow programs survive a crash at every journal append.

For each program, `explore_crashes` runs it crash-free, then with a simulated
process death before and after every append. Every crashed run must end with the
same result and the same journal, and no step whose completion was journaled
before the crash may run again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, note, settings

from replay.testing import explore_crashes
from tests.programs import app, prog, programs, responder


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs)
def test_every_crash_point_recovers(program: list[Any]) -> None:
    note(f"program: {program}")

    async def explore() -> None:
        report = await explore_crashes(app, prog, program, events=responder(program))
        assert report.points or report.appends == 0

    asyncio.run(explore())
