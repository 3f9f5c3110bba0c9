"""Tools for testing workflows: ``TestEnv``, the virtual clock, crash injection and exploration."""

from typing import TYPE_CHECKING, Any

from replay.clock import VirtualClock as VirtualClock
from replay.testing.checks import ReplayProblem as ReplayProblem
from replay.testing.checks import check_replay as check_replay
from replay.testing.checks import replay_entries as replay_entries
from replay.testing.crash import CrashingStore as CrashingStore
from replay.testing.crash import SimulatedCrash as SimulatedCrash
from replay.testing.env import TestEnv as TestEnv
from replay.testing.explore import CrashExplorationError as CrashExplorationError
from replay.testing.explore import CrashPoint as CrashPoint
from replay.testing.explore import CrashReport as CrashReport
from replay.testing.explore import explore_crashes as explore_crashes
from replay.testing.explore import normalize_journals as normalize_journals
from replay.testing.mocks import StepMock as StepMock
from replay.testing.records import StepRecord as StepRecord

if TYPE_CHECKING:
    from replay.testing.conformance import StoreConformance as StoreConformance
    from replay.testing.stateful import StoreAgreement as StoreAgreement

__all__ = (
    "CrashExplorationError",
    "CrashPoint",
    "CrashReport",
    "CrashingStore",
    "ReplayProblem",
    "SimulatedCrash",
    "StepMock",
    "StepRecord",
    "StoreAgreement",
    "StoreConformance",
    "TestEnv",
    "VirtualClock",
    "check_replay",
    "explore_crashes",
    "normalize_journals",
    "replay_entries",
)


def __getattr__(name: str) -> Any:
    # The conformance suite needs pytest; import it only when someone asks for it.
    if name == "StoreConformance":
        from replay.testing.conformance import StoreConformance

        return StoreConformance
    if name == "StoreAgreement":  # needs hypothesis
        from replay.testing.stateful import StoreAgreement

        return StoreAgreement
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
