"""``explore_crashes``: prove a workflow survives a crash at every journal append.

It runs the workflow once without a crash, counting the journal appends, then
once per append and phase with a simulated process death there, each time on a
fresh store (a memory store unless told otherwise) and virtual clock, and
checks that every crashed run ends with the same outcome and the same journal
(up to the order of independent branches and the exact times), and that no step
whose completion was journaled before the crash ran again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from replay import journal as j
from replay.errors import ReplayError
from replay.journal import Entry
from replay.stores.base import TERMINAL_STATUSES, Store
from replay.stores.memory import MemoryStore
from replay.testing.crash import CrashingStore, Phase
from replay.testing.env import TestEnv
from replay.worker import StepInfo

if TYPE_CHECKING:
    from replay.app import App, RunHandle, WorkflowDef

__all__ = ("CrashExplorationError", "CrashPoint", "CrashReport", "explore_crashes", "normalize_journals")

Responder = Callable[[str, dict[str, Any]], dict[str, Any] | None]

_TIME_FIELDS = ("due", "retry_at", "timeout_at", "deadline")


@attrs.frozen
class CrashPoint:
    """What happened with a crash at one append.

    Attributes:
        append: which append (from 1) the crash hit.
        phase: "before" it was durable or "after".
        outcome: the run's result, or ``("error", type, message)``.
        problems: what differed from the crash-free run; empty when all is well.
        reran: steps (run id, journal seq, name) whose completion was journaled
            before the crash and that ran again after it.
        journals: every run's journal as the crashed-and-recovered run left it.
    """

    append: int
    phase: Phase
    outcome: Any
    problems: tuple[str, ...] = ()
    reran: tuple[tuple[str, int, str], ...] = ()
    journals: dict[str, list[Entry]] = attrs.field(factory=dict, repr=False, eq=False)

    @property
    def ok(self) -> bool:
        """Whether this crash point behaved exactly like the crash-free run."""
        return not self.problems and not self.reran


@attrs.frozen
class CrashReport:
    """The result of ``explore_crashes``: the crash-free run and every crash point."""

    outcome: Any
    appends: int
    journal: tuple[tuple[str, bytes], ...]
    points: tuple[CrashPoint, ...]

    @property
    def deterministic(self) -> bool:
        """Whether the crash-free run replayed cleanly (no ``NonDeterminismError``).

        Even without a crash a run is replayed whenever it is evicted (a long
        sleep, a wait): a workflow that fails this is broken in production too.
        """
        return not (isinstance(self.outcome, tuple) and self.outcome[:2] == ("error", "NonDeterminismError"))

    @property
    def ok(self) -> bool:
        """Whether the run is deterministic and every crash point behaved like the crash-free run."""
        return self.deterministic and all(p.ok for p in self.points)

    def summary(self) -> str:
        """A readable account of every crash point that diverged."""
        bad = [p for p in self.points if not p.ok]
        lines = [
            f"{len(self.points)} crash points over {self.appends} appends; {len(bad)} diverged",
            f"crash-free outcome: {self.outcome!r}",
        ]
        if not self.deterministic:
            lines.insert(
                0,
                "the workflow is not deterministic: even without a crash, its replay after "
                "being evicted issued other commands (state kept outside the journal? the wall "
                "clock, random, a global?)",
            )
        for p in bad:
            lines.append(f"- crash {p.phase} append {p.append}: outcome {p.outcome!r}")
            lines.extend(f"    {problem}" for problem in p.problems)
            lines.extend(
                f"    step {name!r} (run {rid}, seq {seq}) ran again after it completed"
                for rid, seq, name in p.reran
            )
        return "\n".join(lines)


class CrashExplorationError(ReplayError, AssertionError):
    """``explore_crashes`` found a crash point where the workflow diverged."""

    def __init__(self, report: CrashReport) -> None:
        super().__init__(report.summary())
        self.report = report


def normalize_journals(journals: Mapping[str, list[Entry]]) -> tuple[tuple[str, bytes], ...]:
    """Journals as a sorted multiset of entries, blind to what may legitimately vary.

    Run ids, event ids, times and the interleaving of independent branches vary
    between runs of the same program; kinds, names, arguments, results and errors
    must not. References to a command by seq become the command itself.
    """
    out: list[tuple[str, bytes]] = []
    for entries in journals.values():
        commands = {e.seq: e for e in entries if e.kind in j.COMMAND_KINDS}
        for e in entries:
            data = dict(e.data)
            op = data.pop("op", None)
            if op is not None:
                ref = commands.get(op)
                data["for"] = None if ref is None else [ref.kind, ref.data.get("name"), ref.data.get("args")]
            for key in ("run_id", "parent", *_TIME_FIELDS):
                data.pop(key, None)
            if "event" in data:
                data["event"] = {k: v for k, v in data["event"].items() if k not in ("id", "at")}
            if e.kind == j.SIDE_EFFECT:
                data.pop("value", None)
            out.append((e.kind, orjson.dumps(data, option=orjson.OPT_SORT_KEYS)))
    return tuple(sorted(out))


def _responder(events: Mapping[str, dict[str, Any]] | Responder | None) -> Responder:
    if events is None:
        return lambda name, match: None
    if callable(events):
        return events
    table = dict(events)
    return lambda name, match: table.get(name)


async def _journals(store: Store) -> dict[str, list[Entry]]:
    return {
        info.run_id: await store.read_journal(info.run_id) for info in await store.list_runs(limit=1_000_000)
    }


def _open_waits(entries: list[Entry]) -> Iterable[tuple[int, str, dict[str, Any]]]:
    done = {e.data["op"] for e in entries if e.kind in (j.EVENT_RECEIVED, j.WAIT_TIMED_OUT)}
    for e in entries:
        if e.kind == j.WAIT_STARTED and e.seq not in done:
            yield e.seq, e.data["name"], e.data["match"]


async def _outcome(handle: RunHandle[Any]) -> Any:
    try:
        return await handle.result(timeout=0)
    except ReplayError as exc:
        return ("error", type(exc).__name__, str(exc))


@attrs.define(eq=False)
class _Attempt:
    """One run of the workflow, with or without a crash."""

    app: App
    responder: Responder
    store: CrashingStore
    setup: Callable[[TestEnv], object] | None = None
    executions: list[tuple[str, int, str, int]] = attrs.Factory(list)  # run, seq, name, generation
    generation: int = 1
    #: Every run's journal as the attempt left it, read before its store closed.
    journals: dict[str, list[Entry]] = attrs.Factory(dict)

    def on_step(self, info: StepInfo) -> None:
        self.executions.append((info.run_id, info.seq, info.name, self.generation))

    async def settle(self, env: TestEnv) -> None:
        idle = asyncio.ensure_future(env.worker.wait_idle())
        crashed = asyncio.ensure_future(self.store.crashed.wait())
        try:
            await asyncio.wait({idle, crashed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            crashed.cancel()
        if self.store.dead:
            self.store.revive()
            self.store.crashed.clear()
            self.generation += 1
            await env.crash()
            await env.worker.wait_idle()

    async def run(self, workflow: WorkflowDef[Any, Any], args: tuple[Any, ...], max_rounds: int) -> Any:
        async with TestEnv(self.app, store=self.store, on_step=self.on_step) as env:
            if self.setup is not None:
                self.setup(env)  # mocks, say: each run has an environment of its own
            handle = await self.app.start(workflow, *args, run_id="explored")
            sent: set[tuple[str, int]] = set()
            for _ in range(max_rounds):
                await self.settle(env)
                info = await handle.info()
                if info.status in TERMINAL_STATUSES:
                    # Read now: leaving the TestEnv closes the store.
                    self.journals = await _journals(self.store.inner)
                    return await _outcome(handle)
                if await self._respond(sent):
                    continue
                deadline = env.clock.next_deadline()
                if deadline is None:
                    raise AssertionError(
                        f"run {handle.run_id!r} is {info.status} with no timer due and no event to "
                        "send: give explore_crashes the events it waits for"
                    )
                env.clock.fire_due(deadline)
            raise AssertionError(f"run did not finish within {max_rounds} rounds")

    async def _respond(self, sent: set[tuple[str, int]]) -> bool:
        acted = False
        for run_id, entries in (await _journals(self.store.inner)).items():
            for seq, name, match in _open_waits(entries):
                if (run_id, seq) in sent:
                    continue
                sent.add((run_id, seq))
                data = self.responder(name, match)
                if data is not None:
                    await self.app.send_event(name, data, id=f"{run_id}:{seq}")
                    acted = True
        return acted


async def explore_crashes(
    app: App,
    workflow: WorkflowDef[Any, Any],
    *args: Any,
    events: Mapping[str, dict[str, Any]] | Responder | None = None,
    phases: tuple[Phase, ...] = ("before", "after"),
    max_rounds: int = 10_000,
    raise_on_divergence: bool = True,
    store_factory: Callable[[], Store] | None = None,
    setup: Callable[[TestEnv], object] | None = None,
) -> CrashReport:
    """Run ``workflow(*args)`` with a crash at every journal append; compare each to no crash.

    Each run uses a fresh store from ``store_factory`` (a ``MemoryStore`` by
    default) and a virtual clock; timers fire as soon as nothing else can happen.
    Each store is opened when its run begins and closed when it ends.

    Args:
        app: the app the workflow is registered on.
        workflow: the workflow.
        *args: its arguments.
        events: what to send when the run waits for an event: a mapping from event
            name to data, or a callable ``(name, match) -> data | None``. None
            (the default, or a name missing from the mapping) sends nothing, so the
            wait times out.
        phases: which crash phases to try: "before" an append is durable, "after" it.
        max_rounds: a bound on scheduling rounds per run.
        raise_on_divergence: raise ``CrashExplorationError`` if any point diverges.
        store_factory: makes a new, empty, unopened store for each run (the
            crash-free one and one per crash point), so crashes run on that kind of
            store; it must never hand out the same store or data twice.
        setup: called with each run's ``TestEnv`` before the workflow starts, to
            mock steps in it (``lambda env: env.mock_step(charge, returns="r")``).

    Returns:
        The report: the crash-free outcome and one ``CrashPoint`` per crash.

    Raises:
        ValueError: ``phases`` names a phase other than "before" and "after".
        CrashExplorationError: a crash point diverged (with ``raise_on_divergence``).
    """
    unknown = sorted(set(phases) - {"before", "after"})
    if unknown or not phases:
        raise ValueError(f'phases are "before" and "after", got {phases!r}')
    responder = _responder(events)
    fresh: Callable[[], Store] = store_factory if store_factory is not None else MemoryStore
    base = _Attempt(app, responder, CrashingStore(fresh()), setup)
    outcome = await base.run(workflow, args, max_rounds)
    journal = normalize_journals(base.journals)
    appends = base.store.appends
    points: list[CrashPoint] = []
    for k in range(1, appends + 1):
        for phase in phases:
            attempt = _Attempt(app, responder, CrashingStore(fresh(), crash_at=k, phase=phase), setup)
            got = await attempt.run(workflow, args, max_rounds)
            problems: list[str] = []
            if got != outcome:
                problems.append(f"outcome {got!r} != crash-free {outcome!r}")
            now = normalize_journals(attempt.journals)
            if now != journal:
                missing = sorted((Counter(journal) - Counter(now)).elements())[:5]
                extra = sorted((Counter(now) - Counter(journal)).elements())[:5]
                problems.append(f"journal differs: missing {missing}, extra {extra}")
            completed = {
                (rid, e.data["op"])
                for rid, entries in attempt.store.at_crash.items()
                for e in entries
                if e.kind == j.STEP_COMPLETED or (e.kind == j.STEP_FAILED and "retry_at" not in e.data)
            }
            reran = tuple(
                sorted(
                    {
                        (rid, seq, name)
                        for rid, seq, name, gen in attempt.executions
                        if gen > 1 and (rid, seq) in completed
                    }
                )
            )
            points.append(CrashPoint(k, phase, got, tuple(problems), reran, attempt.journals))
    report = CrashReport(outcome, appends, journal, tuple(points))
    if raise_on_divergence and not report.ok:
        raise CrashExplorationError(report)
    return report
