"""The ``Store`` interface every backend implements, and the values it trades in.

A store keeps runs, their journals, event waits and events. Its contract:

- ``create_run`` is idempotent on the run id and writes the run row and its
  ``workflow_started`` entry in one transaction.
- A worker owns a run through ``claim``, which hands out a fresh lease token.
  ``append`` carries that token and raises ``LeaseLost`` if another worker has
  claimed the run since (fencing). Appended entries must continue the journal
  exactly; the run row's status changes in the same transaction.
- ``append`` keeps the event-wait table in step with the journal: a
  ``wait_started`` entry registers a wait (it sees events sent after this
  transaction), an ``event_received`` or ``wait_timed_out`` entry removes it.
- ``send_event`` is durable and idempotent on the event id, wakes every run
  with a matching wait, and tells listeners (an ``"event"`` notice). A run that
  reaches a terminal status wakes its parent.
- A run is claimable when it is ``pending``, ``suspended`` with ``wake_at`` due,
  or ``running`` under a worker that is gone (or whose lease expired).
- Listeners registered with ``subscribe`` hear, in this process, when a run
  becomes claimable, has news for its owner, or finishes.

Flow control (``NewRun.flow``, see ``Flow``) is applied by the store, in the
transaction that creates the run or claims it, so that it holds across workers
and crashes:

- ``rate_limit``: when ``limit`` runs admitted under the key were created in
  the last ``period``, the run is stored already ``cancelled`` (journal:
  ``workflow_started``, ``workflow_cancelled`` with ``reason: "rate_limit"``).
- ``debounce``: while a run of the same key is ``pending`` and was never
  claimed, a new start joins it instead: that run takes the new arguments and
  ``workflow_started`` entry, its start moves to ``period`` from now (never past
  its first start plus ``timeout``), and ``create_run`` returns it, not new.
  The joining start's run id becomes an alias of that run: creating it again
  returns the run it joined, and changes nothing.
- ``throttle``: a run begins (``pending`` with a ``wake_at``) no earlier than
  ``period`` after the ``limit``-th latest begin under its key.
- ``concurrency``: ``claim`` takes a run only while fewer than ``limit`` runs
  under its key are ``running``; the others wait.
- ``claim`` takes runs that began before new ones: ``running`` runs whose
  owner is gone, then due ``suspended`` runs by ``wake_at``, then ``pending``
  runs; orphaned and pending runs by ``priority`` (higher first), then in
  creation order.
- ``cancel_on``: an event sent after the run was created, with that name and
  data containing the match, requests the run's cancellation.
- A ``pending`` run with a ``wake_at`` is claimable once it is due.

``replay.testing.StoreConformance`` is the test suite that pins all of this.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs

from replay.errors import ReplayInternalError
from replay.journal import TERMINAL_KINDS, Entry

__all__ = (
    "ACTIVE_STATUSES",
    "STATUSES",
    "TERMINAL_STATUSES",
    "Claim",
    "DebounceRule",
    "EventRecord",
    "Flow",
    "Gate",
    "NewRun",
    "Notice",
    "RunInfo",
    "RunUpdate",
    "Store",
    "contains",
)

Status = Literal["pending", "running", "suspended", "completed", "failed", "cancelled"]
NoticeKind = Literal["ready", "news", "finished", "event"]
STATUSES: tuple[Status, ...] = ("pending", "running", "suspended", "completed", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
ACTIVE_STATUSES = frozenset({"pending", "running", "suspended"})


@attrs.frozen
class RunInfo:
    """A run as the store sees it.

    Attributes:
        run_id: the run's id.
        workflow: the workflow's registered name.
        status: one of ``STATUSES``.
        args: the workflow's arguments.
        created_at: when it was started (epoch seconds).
        updated_at: when its status last changed.
        result: the workflow's return value, once completed.
        error: the journaled error (type, message, traceback), once failed.
        parent_id: the parent run's id, for a child run.
        wake_at: when a suspended run is due to resume, if a timer is pending.
        cancel_requested: whether a cancellation is pending or was delivered.
    """

    run_id: str
    workflow: str
    status: Status
    args: list[Any]
    created_at: float
    updated_at: float
    result: Any = None
    error: dict[str, Any] | None = None
    parent_id: str | None = None
    wake_at: float | None = None
    cancel_requested: bool = False


@attrs.frozen
class Gate:
    """A limit shared by the runs of one key: ``limit`` per ``period`` (or at once)."""

    key: str
    limit: int
    period: float = 0.0


@attrs.frozen
class DebounceRule:
    """Debouncing of one key: begin ``period`` after the last start, at most ``timeout`` after the first."""

    key: str
    period: float
    timeout: float | None = None


@attrs.frozen
class Flow:
    """The flow control a run is created under, its keys already computed from its arguments.

    See the module docstring for what the store does with each.

    Attributes:
        priority: claims take higher values first.
        concurrency: at most ``limit`` running runs per key.
        throttle: at most ``limit`` begins per ``period`` per key; later ones wait.
        rate_limit: at most ``limit`` admitted starts per ``period`` per key; later ones are dropped.
        debounce: starts within ``period`` of each other join one run.
        cancel_on: ``(event name, match)`` pairs that cancel the run.
    """

    priority: int = 0
    concurrency: Gate | None = None
    throttle: Gate | None = None
    rate_limit: Gate | None = None
    debounce: DebounceRule | None = None
    cancel_on: tuple[tuple[str, dict[str, Any]], ...] = ()


NO_FLOW = Flow()


@attrs.frozen
class NewRun:
    """A run to create: its row, plus its first journal entry.

    Attributes:
        run_id: the run's id.
        workflow: its workflow's registered name.
        args: the workflow's arguments.
        first: its ``workflow_started`` entry.
        parent_id: the parent run's id, for a child run.
        journal: entries that follow ``first`` (seq 2, 3...), written in the same
            transaction, as ``append`` would have written them (open waits are
            registered, awaited children and a delivered cancellation noted): a
            forked run starts with a prefix of another run's journal.
        created_at: the run's creation time (default: ``first.at``).
        flow: its flow control (see ``Flow``).
    """

    run_id: str
    workflow: str
    args: list[Any]
    first: Entry
    parent_id: str | None = None
    journal: tuple[Entry, ...] = ()
    created_at: float | None = None
    flow: Flow = NO_FLOW

    def entries(self) -> tuple[Entry, ...]:
        """``first`` and then ``journal``, checked to form the start of a live journal.

        Raises:
            ReplayInternalError: the seqs do not run on from ``first`` without
                gaps, or an entry ends the run.
        """
        expected = self.first.seq + 1
        for e in self.journal:
            if e.seq != expected:
                raise ReplayInternalError(f"new run {self.run_id!r}: seq {e.seq}, expected {expected}")
            if e.kind in TERMINAL_KINDS:
                raise ReplayInternalError(f"new run {self.run_id!r} cannot start with a {e.kind} entry")
            expected += 1
        return (self.first, *self.journal)

    @property
    def started_at(self) -> float:
        """When the run counts as created: ``created_at``, else ``first.at``."""
        return self.first.at if self.created_at is None else self.created_at

    def pending(self, *, wake_at: float | None = None, cancel_requested: bool = False) -> RunInfo:
        """The ``RunInfo`` of this run as created: ``pending``, created and updated at ``started_at``."""
        at = self.started_at
        return RunInfo(
            self.run_id,
            self.workflow,
            "pending",
            self.args,
            at,
            at,
            parent_id=self.parent_id,
            wake_at=wake_at,
            cancel_requested=cancel_requested,
        )


@attrs.frozen
class Claim:
    """A run a worker now owns, with the token its appends must carry.

    Attributes:
        run_id: the claimed run.
        workflow: its workflow's name.
        token: the fencing token every append for this ownership must carry.
        cancel_requested: whether the run's row said "cancel" when the claim
            took it, read in the claim's own transaction. It stays True once a
            cancellation was requested, even after the worker journaled it. The
            worker trusts a False here and does not read the row again: a
            cancellation requested after the claim reaches it as news.
        journal: the run's journal as the claim's own transaction read it, so
            that the worker need not read it again (``read_journal``); None if
            the store leaves that read to the worker. A store that carries
            journals must carry None for one it cannot decode (see
            ``journal.decode_carried``) rather than fail the whole claim: the
            worker's own read then fails that run alone.
    """

    run_id: str
    workflow: str
    token: int
    cancel_requested: bool = False
    journal: list[Entry] | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class RunUpdate:
    """Changes to the run row made in the same transaction as an append.

    Attributes:
        status: the new status, if it changes.
        wake_at: when a suspended run should be claimed again.
        result: the result of a completed run.
        error: the error of a failed run.
        release: give up ownership (suspension, completion, parking).
        children: runs to create (idempotently) in the same transaction: child
            runs, and the ``on_failure`` handler of a failing run.
    """

    status: Status | None = None
    wake_at: float | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    release: bool = False
    children: tuple[NewRun, ...] = ()


@attrs.frozen
class EventRecord:
    """An event as stored: ``position`` orders every event in the store."""

    id: str
    name: str
    data: dict[str, Any]
    at: float
    position: int = 0


@attrs.frozen
class Notice:
    """What a store tells listeners in this process.

    ``kind`` is ``"ready"`` (the run can be claimed), ``"news"`` (its owner should
    look at its waits, children or cancellation), ``"finished"``, or ``"event"``
    (an event was stored; ``run_id`` is then the event's id: workers look for
    the runs it triggers).
    """

    kind: NoticeKind
    run_id: str


def contains(data: Any, match: Any) -> bool:
    """Whether ``data`` contains ``match``: equal, or a dict holding each key recursively."""
    if isinstance(match, dict):
        if not isinstance(data, dict):
            return False
        return all(k in data and contains(data[k], v) for k, v in match.items())
    return bool(data == match)


class Store(abc.ABC):
    """A durable home for runs, journals, waits and events. See the module docstring."""

    url: str = ""
    #: How often a worker should also look for claimable runs, in seconds: for a
    #: store that other processes write to without notifying this one. None: never.
    poll_interval: float | None = None
    #: Whether listeners also hear of what other processes do to the store (a run
    #: that finishes in another process's worker, say), as PostgreSQL's LISTEN/NOTIFY
    #: allows: then ``RunHandle.result`` waits for the notice instead of polling.
    notices_span_processes: bool = False

    def __init__(self) -> None:
        self._listeners: list[Callable[[Notice], None]] = []

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect and migrate; called once before any other method."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""

    def subscribe(self, listener: Callable[[Notice], None]) -> Callable[[], None]:
        """Call ``listener`` on every notice; returns a function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def notify(self, kind: NoticeKind, run_id: str) -> None:
        """Tell this process's listeners about a run."""
        notice = Notice(kind, run_id)
        for listener in list(self._listeners):
            listener(notice)

    # -- clients -----------------------------------------------------------------------

    @abc.abstractmethod
    async def create_run(self, run: NewRun) -> tuple[RunInfo, bool]:
        """Create a run unless one has that id; returns it and whether it is new.

        The run row, ``run.first`` and every entry of ``run.journal`` are written
        in one transaction, or nothing is.

        Raises:
            ReplayInternalError: ``run.journal`` does not continue ``run.first``
                (seq 2, 3... with no gaps), or holds a terminal entry.
        """

    @abc.abstractmethod
    async def get_run(self, run_id: str) -> RunInfo | None:
        """The run with that id, if any."""

    @abc.abstractmethod
    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[RunInfo]:
        """Runs, newest first, filtered by workflow, status and creation time."""

    @abc.abstractmethod
    async def read_journal(self, run_id: str) -> list[Entry]:
        """A run's journal, in order (empty for an unknown run)."""

    @abc.abstractmethod
    async def request_cancel(self, run_id: str, at: float) -> RunInfo | None:
        """Flag a run for cancellation and wake it; None for an unknown run."""

    @abc.abstractmethod
    async def requeue(self, run_id: str, at: float) -> RunInfo | None:
        """Put a ``failed`` run back to ``pending``, its error cleared, for a worker to replay.

        Used for runs parked by a ``NonDeterminismError``, whose journal has no
        terminal entry. A run in any other status is returned unchanged; None for
        an unknown run.
        """

    @abc.abstractmethod
    async def send_event(self, event: EventRecord, starts: Sequence[NewRun] = ()) -> tuple[EventRecord, bool]:
        """Store an event (idempotent on its id) and wake the runs waiting for it.

        Args:
            event: the event.
            starts: runs the event triggers, created (as ``create_run`` would) in
                the same transaction, and only if the event is new.

        Returns:
            The stored event, with its position, and whether it is new.
        """

    @abc.abstractmethod
    async def events_after(self, position: int, names: Sequence[str], limit: int) -> list[EventRecord]:
        """Up to ``limit`` events with one of ``names``, positioned after ``position``, in order."""

    @abc.abstractmethod
    async def last_event_position(self) -> int:
        """The position of the latest event stored; 0 when there is none."""

    @abc.abstractmethod
    async def get_schedule(self, name: str) -> float | None:
        """The cursor of the schedule ``name`` (a cron tick, an event position); None if never set."""

    @abc.abstractmethod
    async def advance_schedule(
        self, name: str, previous: float | None, tick: float, run: NewRun | None
    ) -> bool:
        """Move a schedule's cursor from ``previous`` to ``tick`` and create ``run``, atomically.

        Workers keep cron ticks and event triggers this way: whoever moves the
        cursor creates the run, so no tick or event starts a run twice.

        Returns:
            False (and nothing written) when the cursor is no longer ``previous``:
            another worker moved it first.
        """

    # -- workers -----------------------------------------------------------------------

    @abc.abstractmethod
    async def register_worker(self, worker_id: str) -> None:
        """Announce a live worker."""

    @abc.abstractmethod
    async def unregister_worker(self, worker_id: str) -> None:
        """A worker stops; runs it still owns become claimable at once."""

    @abc.abstractmethod
    async def claim(self, worker_id: str, workflows: Sequence[str], now: float, limit: int) -> list[Claim]:
        """Take ownership of up to ``limit`` claimable runs of these workflows.

        Each ``Claim`` carries a fresh token and the run's ``cancel_requested``
        as read in the same transaction that took it (see ``Claim``): a store
        that reports False for a run already asked to cancel loses that
        cancellation until other news arrives for the run.
        """

    @abc.abstractmethod
    async def append(
        self, run_id: str, token: int, entries: Sequence[Entry], update: RunUpdate | None = None
    ) -> None:
        """Append entries to an owned run's journal and apply ``update``, atomically.

        Raises:
            LeaseLost: ``token`` is not the run's current token.
        """

    @abc.abstractmethod
    async def poll_waits(self, run_id: str) -> list[tuple[int, EventRecord]]:
        """For each open wait of the run, the first matching event, if one arrived.

        An event matches a wait when its name equals the wait's, its data contains
        the wait's match, it was sent after the wait was registered and, for a wait
        with a timeout, no later than ``timeout_at``.
        """

    @abc.abstractmethod
    async def runs_with_news(self, worker_id: str) -> list[str]:
        """Runs owned by ``worker_id`` that have news it has not journaled yet.

        News is what a ``news`` notice announces: a cancellation requested and
        not yet delivered, an awaited child that finished, or an event that
        matches an open wait. A worker asks every ``poll_interval`` seconds, so
        that news sent from a process whose notices cannot reach it (another
        process on one SQLite file, or a PostgreSQL listener reconnecting)
        still reaches a run it keeps in memory.
        """

    @abc.abstractmethod
    async def next_wake_at(self, workflows: Sequence[str]) -> float | None:
        """The earliest ``wake_at`` among suspended (or delayed pending) runs of these workflows."""
