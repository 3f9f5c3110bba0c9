"""The ``replay`` command group: every command, registered in one place."""

from __future__ import annotations

import click

from replay.cli._more import check, dashboard, demo, events
from replay.cli._runs import runs
from replay.cli._worker import worker

__all__ = ("cli",)


@click.group(
    name="replay", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(package_name="replay", prog_name="replay")
def cli() -> None:
    """Operate replay: run workers, look at runs and act on them, check a deploy.

    Every command takes --store URL (else the REPLAY_STORE environment
    variable, else sqlite:///replay.db). Exit codes: 0 ok; 1 what the command
    did or checked failed (a run would break, a run cannot be retried, a drain
    was cut short); 2 bad usage (an unknown run, bad JSON, a bad MODULE:APP),
    and nothing was changed.

    \b
    Examples:
      replay demo
      replay runs list --status failed --since 1h
      replay runs show demo-order-1
      replay worker shop.flows:app
    """


cli.add_command(worker)
cli.add_command(runs)
cli.add_command(events)
cli.add_command(check)
cli.add_command(demo)
cli.add_command(dashboard)
