"""replay: durable execution for Python asyncio.

Workflows are plain ``async def``; every await on a step, a sleep or an event is
journaled, so a crash, a deploy or a week-long wait never loses work.
"""

from replay.app import App as App
from replay.app import Event as Event
from replay.app import RunHandle as RunHandle
from replay.app import StepDef as StepDef
from replay.app import WorkflowDef as WorkflowDef
from replay.context import Context as Context
from replay.errors import Cancelled as Cancelled
from replay.errors import NonDeterminismError as NonDeterminismError
from replay.errors import NonRetryableError as NonRetryableError
from replay.errors import ReplayError as ReplayError
from replay.errors import RunNotFound as RunNotFound
from replay.errors import SerializationError as SerializationError
from replay.errors import StepFailed as StepFailed
from replay.errors import StoreError as StoreError
from replay.errors import WorkflowFailed as WorkflowFailed
from replay.errors import WorkflowSandboxError as WorkflowSandboxError
from replay.errors import WorkflowTimeout as WorkflowTimeout
from replay.policies import CancelOn as CancelOn
from replay.policies import Concurrency as Concurrency
from replay.policies import Debounce as Debounce
from replay.policies import RateLimit as RateLimit
from replay.policies import RetryPolicy as RetryPolicy
from replay.policies import Throttle as Throttle
from replay.schedules import Cron as Cron
from replay.schedules import cron as cron
from replay.stores.base import RunInfo as RunInfo
from replay.worker import StepInfo as StepInfo
from replay.worker import current_step as current_step

__all__ = (
    "App",
    "CancelOn",
    "Cancelled",
    "Concurrency",
    "Context",
    "Cron",
    "Debounce",
    "Event",
    "NonDeterminismError",
    "NonRetryableError",
    "RateLimit",
    "ReplayError",
    "RetryPolicy",
    "RunHandle",
    "RunInfo",
    "RunNotFound",
    "SerializationError",
    "StepDef",
    "StepFailed",
    "StepInfo",
    "StoreError",
    "Throttle",
    "WorkflowDef",
    "WorkflowFailed",
    "WorkflowSandboxError",
    "WorkflowTimeout",
    "cron",
    "current_step",
)

__version__ = "0.1.0"
