"""``StoreConformance``: the test suite every ``Store`` must pass.

It pins each clause of the contract in ``replay.stores.base``; ``MemoryStore`` is
its reference. To check a store, subclass it once in a test module and override
the ``store`` fixture with one that yields a fresh, opened store::

    import pytest
    from replay.testing import StoreConformance

    class TestMyStore(StoreConformance):
        @pytest.fixture
        async def store(self, tmp_path):
            store = MyStore(f"mystore://{tmp_path}/db")
            await store.open()
            yield store
            await store.close()

The cases are ``async def``s marked ``asyncio`` for pytest-asyncio; under its strict
mode, declare the fixture with ``pytest_asyncio.fixture``. Every case passes times
explicitly (a store reads no clock) and each notice must reach this process's
listeners by the time the call that caused it returns.
"""

from __future__ import annotations

from replay.testing._conformance_events import EventCases
from replay.testing._conformance_flow import FlowCases
from replay.testing._conformance_runs import RunCases

__all__ = ("StoreConformance",)


class StoreConformance(RunCases, EventCases, FlowCases):
    """The store contract as pytest cases; subclass it and override the ``store`` fixture.

    The cases cover: runs (``create_run`` idempotent and atomic with its first
    entry, ``get_run``, ``list_runs`` filters and order, ``read_journal``); claims
    (which runs are claimable, listed workflows, ``limit``, fresh tokens, never a
    live worker's run); appends (fenced by the token, continuing the journal,
    nothing written on failure); run updates (status, wake time, result, error,
    release, children); waits and events (registration, matching, first match,
    timeouts, idempotent sends); wake-ups by events, finished children and
    cancellation, including news that arrives while the owner suspends;
    ``next_wake_at``; the notices listeners hear; and flow control (delayed
    starts, concurrency slots, priority, throttle, rate limit, debounce,
    cancel_on, runs started by events and by updates, schedule cursors).
    """
