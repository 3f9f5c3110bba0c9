"""Tools for testing workflows: ``TestEnv``, the virtual clock, crash injection."""

from replay.clock import VirtualClock as VirtualClock
from replay.testing.env import TestEnv as TestEnv

__all__ = ("TestEnv", "VirtualClock")
