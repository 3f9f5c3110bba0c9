"""``StepMock``: what ``TestEnv.mock_step`` returns."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ("StepMock",)

_UNSET: Any = object()


class StepMock:
    """Stands in for a step in a ``TestEnv``: returns a value, raises, or calls a function.

    Its outcome is journaled like a real step's, so a mocked run replays and
    recovers exactly as a real one would.

    Attributes:
        name: the step's name.
        calls: the arguments of every attempt, as ``(args, kwargs)``, in order.
        is_async: whether calling it gives a coroutine (an ``async def`` side
            effect), which the worker then awaits on its loop.
    """

    def __init__(
        self,
        name: str,
        returns: Any = _UNSET,
        raises: BaseException | type[BaseException] | None = None,
        side_effect: Callable[..., Any] | None = None,
    ) -> None:
        given = [returns is not _UNSET, raises is not None, side_effect is not None]
        if sum(given) != 1:
            raise TypeError("mock_step takes exactly one of returns=, raises= or side_effect=")
        self.name = name
        self.calls: list[tuple[list[Any], dict[str, Any]]] = []
        self._returns = returns
        self._raises = raises
        self._side_effect = side_effect
        self.is_async = inspect.iscoroutinefunction(side_effect)

    def __repr__(self) -> str:
        return f"<StepMock {self.name!r}, {len(self.calls)} call(s)>"

    @property
    def call_count(self) -> int:
        """How many attempts ran."""
        return len(self.calls)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((list(args), dict(kwargs)))
        if self._raises is not None:
            raise self._raises
        if self._side_effect is not None:
            return self._side_effect(*args, **kwargs)
        return self._returns
