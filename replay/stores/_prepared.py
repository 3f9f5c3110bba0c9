"""Runs and updates encoded for a store, before they reach its transaction.

A store's client calls encode here, on the caller's side: a value orjson
cannot encode raises ``SerializationError`` before anything is queued or sent.
The SQLite and PostgreSQL stores both write from these.
"""

from __future__ import annotations

import attrs

from replay.journal import encode_entry, encode_value
from replay.stores.base import Flow, NewRun, RunUpdate

__all__ = ("PreparedRun", "PreparedUpdate", "flow_columns")


def flow_columns(flow: Flow, begin_at: float | None) -> tuple[object, ...]:
    """A new run's flow-control columns, in both stores' order.

    ``priority, concurrency_key, concurrency_limit, throttle_key, begin_at,
    rate_key, debounce_key``.
    """
    gate = flow.concurrency
    return (
        flow.priority,
        None if gate is None else gate.key,
        None if gate is None else gate.limit,
        None if flow.throttle is None else flow.throttle.key,
        begin_at,
        None if flow.rate_limit is None else flow.rate_limit.key,
        None if flow.debounce is None else flow.debounce.key,
    )


@attrs.frozen
class PreparedRun:
    """A run to create, encoded by the caller (so encoding errors happen before queueing)."""

    run: NewRun
    args: bytes
    first: bytes
    rest: tuple[bytes, ...] = ()
    cancel_on: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def of(cls, run: NewRun) -> PreparedRun:
        """Check and encode ``run``; raises ``SerializationError`` or ``ReplayInternalError``."""
        run.entries()
        return cls(
            run,
            encode_value(run.args, f"the arguments of run {run.run_id!r}"),
            encode_entry(run.first),
            tuple(encode_entry(e) for e in run.journal),
            tuple((name, encode_value(match)) for name, match in run.flow.cancel_on),
        )


@attrs.frozen
class PreparedUpdate:
    """A ``RunUpdate`` with its values encoded by the caller."""

    update: RunUpdate
    result: bytes | None
    error: bytes | None
    children: tuple[PreparedRun, ...]

    @classmethod
    def of(cls, update: RunUpdate) -> PreparedUpdate:
        """Encode ``update``; raises ``SerializationError``."""
        result = None if update.result is None else encode_value(update.result, "the run's result")
        error = None if update.error is None else encode_value(update.error, "the run's error")
        return cls(update, result, error, tuple(PreparedRun.of(c) for c in update.children))
