"""``RunHandle``: a handle on one run, for the client."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Generic, TypeVar

from replay.errors import RunNotFound, error_from_data
from replay.journal import Entry
from replay.stores.base import RunInfo

if TYPE_CHECKING:
    from replay.app import App

__all__ = ("RunHandle",)

R = TypeVar("R")


class RunHandle(Generic[R]):
    """A handle on one run. Getting one does no I/O; its methods do.

    Its methods raise ``RunNotFound`` when no run has this id.
    """

    def __init__(self, app: App, run_id: str) -> None:
        self.app = app
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id!r}>"

    async def info(self) -> RunInfo:
        """The run as stored: status, arguments, result or error, times."""
        store = await self.app.store()
        info = await store.get_run(self.run_id)
        if info is None:
            raise RunNotFound(f"no run with id {self.run_id!r}")
        return info

    async def status(self) -> str:
        """One of ``pending``, ``running``, ``suspended``, ``completed``, ``failed``, ``cancelled``."""
        return (await self.info()).status

    async def result(self, timeout: float | timedelta | None = None) -> R:
        """Wait for the run to finish and return its result.

        Args:
            timeout: give up after this long (seconds or a timedelta); None waits forever.

        Raises:
            TimeoutError: the run did not finish in time.
            ReplayError: the run's own error (``StepFailed``, ``Cancelled``,
                ``WorkflowTimeout``, ``WorkflowFailed``...).
        """
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        info = await self.app._wait_finished(self.run_id, seconds)
        if info.status == "completed":
            return info.result  # type: ignore[no-any-return]
        if info.status == "cancelled":
            message = (info.error or {}).get("message") or f"run {self.run_id!r} was cancelled"
            raise error_from_data({"type": "Cancelled", "message": message})
        raise error_from_data(info.error or {"type": "WorkflowFailed", "message": "failed"})

    async def cancel(self) -> None:
        """Ask the run to stop: the workflow sees ``asyncio.CancelledError`` at its next await."""
        await self.app.cancel(self.run_id)

    async def journal(self) -> list[Entry]:
        """The run's journal entries, each with ``seq``, ``kind``, ``at`` and ``data``."""
        await self.info()
        store = await self.app.store()
        return await store.read_journal(self.run_id)
