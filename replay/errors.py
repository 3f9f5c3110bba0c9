"""Every error replay raises.

The hierarchy::

    ReplayError                         base of all of replay's own errors
    ├── NonDeterminismError             workflow code no longer matches its journal
    ├── StepFailed                      a step's final failure, as the workflow sees it
    ├── NonRetryableError               raise it in a step to stop its retries
    ├── WorkflowFailed                  a run ended with an error of the user's own type
    ├── WorkflowTimeout (TimeoutError)  a run outlived its workflow timeout
    ├── Cancelled                       a run was cancelled
    ├── SerializationError (TypeError)  a value orjson cannot encode; nothing was stored
    ├── RunNotFound (LookupError)       no run has that id
    ├── WorkflowSandboxError (RuntimeError)
    │                                   workflow code tried real I/O or the host loop
    ├── StoreError                      the store failed or refused
    │   ├── LeaseLost                   another worker owns the run now (fencing)
    │   └── SchemaError                 the store's schema is newer, foreign or corrupt
    └── ReplayInternalError             a bug in replay itself; please report it
"""

from __future__ import annotations

from typing import Any

__all__ = (
    "Cancelled",
    "LeaseLost",
    "NonDeterminismError",
    "NonRetryableError",
    "ReplayError",
    "ReplayInternalError",
    "RunNotFound",
    "SchemaError",
    "SerializationError",
    "StepFailed",
    "StoreError",
    "WorkflowFailed",
    "WorkflowSandboxError",
    "WorkflowTimeout",
)


class ReplayError(Exception):
    """Base class of every error that replay raises."""


class NonDeterminismError(ReplayError):
    """The workflow issued a command that differs from the one in its journal.

    The run is parked as ``failed``; its journal is left untouched so that a
    fixed deploy can replay it again.
    """


class StepFailed(ReplayError):
    """A step failed for good: its retries ran out or it raised a non-retryable error.

    Attributes:
        step: the step's name.
        type_name: the qualified name of the original exception's type.
        message: ``str()`` of the original exception.
        traceback: the original traceback, formatted as text.
        attempts: how many times the step ran.
    """

    def __init__(self, step: str, type_name: str, message: str, traceback: str, attempts: int) -> None:
        super().__init__(f"step {step!r} failed after {attempts} attempt(s): {type_name}: {message}")
        self.step = step
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.attempts = attempts


class NonRetryableError(ReplayError):
    """Raise this (or a subclass) in a step to fail it at once, without retries."""


class WorkflowFailed(ReplayError):
    """A run ended with an exception of a type replay cannot rebuild.

    Attributes:
        type_name: the qualified name of the original exception's type.
        message: ``str()`` of the original exception.
        traceback: the original traceback, formatted as text.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback


class WorkflowTimeout(ReplayError, TimeoutError):
    """A run did not finish within its workflow ``timeout``."""


class Cancelled(ReplayError):
    """The run was cancelled (by ``cancel`` or a ``CancelOn`` event)."""


class SerializationError(ReplayError, TypeError):
    """A value cannot be encoded as JSON by orjson; nothing was stored."""


class RunNotFound(ReplayError, LookupError):
    """No run has the given id in this store."""


class WorkflowSandboxError(ReplayError, RuntimeError):
    """Workflow code tried to do real I/O, use threads or touch the host event loop.

    Workflow code must be deterministic: move the I/O into a step.
    """


class StoreError(ReplayError):
    """The store failed or refused an operation."""


class LeaseLost(StoreError):
    """An append carried a stale lease token: another worker owns the run now."""


class SchemaError(StoreError):
    """The store holds a schema this version of replay cannot use."""


class ReplayInternalError(ReplayError):
    """An invariant inside replay broke. This is a bug in replay: please report it."""


def error_from_data(data: dict[str, Any]) -> ReplayError:
    """Rebuild the exception a client sees from a journaled error.

    Args:
        data: the error as journaled (see ``journal.error_data``).

    Returns:
        An instance of one of replay's own error types.
    """
    kind = data.get("type", "Exception")
    message = data.get("message", "")
    tb = data.get("traceback", "")
    if kind == "StepFailed" and "step" in data:
        return StepFailed(data["step"], data["cause"], message, tb, data.get("attempts", 1))
    simple: dict[str, type[ReplayError]] = {
        "NonDeterminismError": NonDeterminismError,
        "WorkflowTimeout": WorkflowTimeout,
        "Cancelled": Cancelled,
        "SerializationError": SerializationError,
        "WorkflowSandboxError": WorkflowSandboxError,
    }
    if kind in simple:
        return simple[kind](message)
    return WorkflowFailed(kind, message, tb)
