"""What the commands share: options, exit codes, opening the store, loading an app, output."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from replay.app import App
from replay.errors import RunNotFound, StoreError
from replay.stores import open_store
from replay.stores.base import Store

__all__ = (
    "DEFAULT_STORE",
    "BadUsage",
    "Failed",
    "When",
    "console",
    "fmt_duration",
    "fmt_time",
    "echo_json",
    "json_option",
    "load_app",
    "make_store",
    "on_store",
    "run_async",
    "store_option",
    "when",
)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_STORE = "sqlite:///replay.db"


class Failed(click.ClickException):
    """Exit 1: the command was understood, and what it did or checked failed."""

    exit_code = 1


class BadUsage(click.ClickException):
    """Exit 2: the command cannot be carried out as given (unknown run, bad JSON...); nothing changed."""

    exit_code = 2


def store_option(fn: F) -> F:
    """``--store URL``, else ``REPLAY_STORE``, else ``sqlite:///replay.db``."""
    return click.option(
        "--store",
        "store_url",
        metavar="URL",
        envvar="REPLAY_STORE",
        default=DEFAULT_STORE,
        show_default=True,
        show_envvar=True,
        help="The store: sqlite:///path (relative), sqlite:////path (absolute) or memory://.",
    )(fn)


def json_option(fn: F) -> F:
    """``--json``: print data as JSON, for scripts."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)


def console() -> Console:
    """A rich console on the current stdout (click's test runner swaps it)."""
    return Console(highlight=False, soft_wrap=False)


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def make_store(url: str, *, must_exist: bool = True) -> Store:
    """The store for ``url``, not opened yet.

    Raises:
        BadUsage: the URL is not a store URL, its driver is not installed, or
            (with ``must_exist``) it names a SQLite file that does not exist:
            reading must not create one.
    """
    try:
        store = open_store(url)
    except (ValueError, ImportError) as exc:
        raise BadUsage(str(exc)) from None
    path = getattr(store, "path", None)
    if must_exist and isinstance(path, str) and not os.path.exists(path):
        raise BadUsage(
            f"no replay store at {path!r} ({url}): pass --store or set REPLAY_STORE "
            "to the store your workers use"
        )
    return store


def on_store(url: str, fn: Callable[[App], Awaitable[T]]) -> T:
    """Run ``fn`` with a bare ``App`` (no workflows) on the store at ``url``, then close it.

    ``RunNotFound`` becomes exit 2 and a store failure exit 1.
    """
    store = make_store(url)

    async def main() -> T:
        app = App("replay-cli", store=store)
        try:
            await app.store()
            return await fn(app)
        finally:
            await app.close()

    return run_async(main())


def run_async(coro: Awaitable[T]) -> T:
    """``asyncio.run`` with replay's errors turned into exit codes."""

    async def wrapped() -> T:
        return await coro

    try:
        return asyncio.run(wrapped())
    except RunNotFound as exc:
        raise BadUsage(str(exc.args[0]) if exc.args else str(exc)) from None
    except StoreError as exc:
        raise Failed(f"the store failed: {exc}") from None


def load_app(spec: str) -> App:
    """Import ``module:attribute`` (attribute default ``app``) and return the ``App`` it names.

    The working directory is importable, as it is for ``python -m``.

    Raises:
        BadUsage: the module or attribute is missing, or is not an ``App``.
        Failed: importing the module raised.
    """
    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if not re.fullmatch(r"[\w.]+", module_name) or not re.fullmatch(r"[\w.]+", attr):
        raise BadUsage(f"expected MODULE:APP such as shop.flows:app, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise BadUsage(f"cannot import {module_name!r}: no module named {exc.name!r}") from None
        raise Failed(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises, say so and exit 1
        raise Failed(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BadUsage(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, App):
        raise BadUsage(f"{spec} is a {type(obj).__name__}, not a replay.App")
    return obj


_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


if TYPE_CHECKING:
    _ParamType = click.ParamType[float]
else:
    _ParamType = click.ParamType  # generic only to type checkers in click 8.2+


class When(_ParamType):
    """A point in time: an ISO 8601 datetime (local time if it has no offset) or an age like ``1h``."""

    name = "WHEN"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        match = _RELATIVE.fullmatch(text)
        if match:
            return time.time() - float(match.group(1)) * _UNITS[match.group(2)]
        try:
            return datetime.fromisoformat(text).astimezone().timestamp()
        except ValueError:
            self.fail(
                f"{text!r} is neither an ISO datetime (2026-01-31T12:00) nor an age (90s, 15m, 1h, 2d, 1w)",
                param,
                ctx,
            )


when = When()


def fmt_time(at: float | None) -> str:
    """An epoch time as local ``YYYY-MM-DD HH:MM:SS``."""
    if at is None:
        return ""
    return datetime.fromtimestamp(at).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(seconds: float | None) -> str:
    """``850 ms``, ``3.2 s``, ``4 min 10 s``, ``2 h 5 min``."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    delta = timedelta(seconds=round(seconds))
    minutes, secs = divmod(int(delta.total_seconds()), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"
