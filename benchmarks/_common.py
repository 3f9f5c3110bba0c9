"""Shared by the benchmark scripts: versions, dates and the JSON line they print."""

from __future__ import annotations

import contextlib
import datetime
import json
import platform
import statistics
import sys
from importlib import metadata
from typing import Any


def versions() -> dict[str, str]:
    """Versions of what the figures depend on."""
    out = {"python": platform.python_version()}
    for name in ("replay", "orjson", "anyio", "asyncpg"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def report(workload: str, store: str, figures: dict[str, Any], runs: list[float] | None = None) -> None:
    """Print one JSON line: the figures, the store, the date and the versions."""
    line = {
        "workload": workload,
        "store": store,
        **figures,
        "date": datetime.date.today().isoformat(),
        "versions": versions(),
    }
    if runs:
        line["runs"] = runs
        line["median"] = statistics.median(runs)
    json.dump(line, sys.stdout)
    sys.stdout.write("\n")
