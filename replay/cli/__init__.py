"""The ``replay`` command: a thin layer over the library (``replay --help``).

It needs the ``cli`` extra (click and rich): ``pip install 'replay[cli]'``.
Without them, ``replay`` says so and exits 2.
"""

from __future__ import annotations

import sys

__all__ = ("main",)

_MISSING = (
    "the replay command needs click and rich, which are missing ({}); "
    "install the cli extra: pip install 'replay[cli]'"
)


def main() -> None:
    """Run the ``replay`` command (the console script's entry point)."""
    try:
        from replay.cli._main import cli
    except ModuleNotFoundError as exc:
        if exc.name not in ("click", "rich") and not str(exc.name).startswith(("click.", "rich.")):
            raise
        print(f"replay: {_MISSING.format(exc.name)}", file=sys.stderr)
        sys.exit(2)
    cli()
