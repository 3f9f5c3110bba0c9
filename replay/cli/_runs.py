"""``replay runs``: list, show, cancel, retry and fork runs, on the store alone."""

from __future__ import annotations

import json
import time
from typing import Any

import attrs
import click
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from replay.app import App
from replay.cli._common import (
    BadUsage,
    Failed,
    console,
    echo_json,
    fmt_duration,
    fmt_time,
    json_option,
    on_store,
    store_option,
    when,
)
from replay.cli._timeline import Row, timeline
from replay.errors import RunNotFound
from replay.stores.base import STATUSES, TERMINAL_STATUSES, RunInfo

__all__ = ("runs",)

STATUS_STYLE = {
    "pending": "cyan",
    "running": "blue",
    "suspended": "magenta",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "yellow",
}


def _short(value: Any, width: int = 60) -> str:
    if value is None:
        return ""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _error_line(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    kind = error.get("cause") or error.get("type", "?")
    message = str(error.get("message", "")).strip().splitlines()
    return f"{kind}: {message[0] if message else ''}"


def _info_json(info: RunInfo) -> dict[str, Any]:
    return attrs.asdict(info)


@click.group()
def runs() -> None:
    """Look at runs and act on them, on the store alone (no app needed).

    \b
    Example:
      replay runs list --status failed --since 1h
    """


@runs.command("list")
@click.option("--workflow", "-w", help="Only runs of this workflow.")
@click.option("--status", "-s", type=click.Choice(STATUSES), help="Only runs in this status.")
@click.option(
    "--since", type=when, help="Only runs created since: an ISO datetime or an age (90s, 15m, 1h, 2d)."
)
@click.option("--until", type=when, help="Only runs created until: an ISO datetime or an age.")
@click.option(
    "--limit", "-n", default=50, show_default=True, type=click.IntRange(min=1), help="The most runs."
)
@store_option
@json_option
def list_runs(
    workflow: str | None,
    status: str | None,
    since: float | None,
    until: float | None,
    limit: int,
    store_url: str,
    as_json: bool,
) -> None:
    """List runs, newest first.

    \b
    Examples:
      replay runs list
      replay runs list --workflow checkout --status failed --since 2h
      replay runs list --since 2026-01-31T09:00 --until 2026-01-31T18:00 --json
    """

    async def go(app: App) -> list[RunInfo]:
        return await app.list_runs(workflow=workflow, status=status, since=since, until=until, limit=limit)

    found = on_store(store_url, go)
    if as_json:
        echo_json([_info_json(i) for i in found])
        return
    out = console()
    if not found:
        out.print("no runs match")
        return
    table = Table(title=f"{len(found)} run(s), newest first", title_justify="left")
    table.add_column("run", no_wrap=True)
    table.add_column("workflow", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("updated", no_wrap=True)
    table.add_column("error", overflow="fold")
    now = time.time()
    for i in found:
        shown = Text(i.status, style=STATUS_STYLE.get(i.status, ""))
        if i.cancel_requested and i.status not in TERMINAL_STATUSES:
            shown.append(" (cancelling)", style="yellow")
        table.add_row(
            i.run_id,
            i.workflow,
            shown,
            fmt_time(i.created_at)[5:],
            fmt_duration(max(now - i.updated_at, 0.0)) + " ago",
            _error_line(i.error),
        )
    out.print(table)


@runs.command("show")
@click.argument("run_id", metavar="RUN")
@store_option
@json_option
def show(run_id: str, store_url: str, as_json: bool) -> None:
    """Show a run and its journal as a timeline, with errors and their tracebacks.

    Each entry shows its time from the start of the run; a step's outcome shows
    how long after it was scheduled it came.

    \b
    Example:
      replay runs show checkout-o-1
    """

    async def go(app: App) -> tuple[RunInfo, list[Row]]:
        run = app.get_run(run_id)
        return await run.info(), timeline(await run.journal())

    info, rows = on_store(store_url, go)
    if as_json:
        echo_json({"run": _info_json(info), "timeline": [r.to_json() for r in rows]})
        return
    out = console()
    out.print(f"[bold]{escape(info.run_id)}[/]  {escape(info.workflow)}  ", end="")
    out.print(Text(info.status, style=STATUS_STYLE.get(info.status, "")))
    out.print(f"created {fmt_time(info.created_at)}   updated {fmt_time(info.updated_at)}")
    out.print(f"args    {escape(_short(info.args, 200))}")
    if info.parent_id:
        out.print(f"parent  {escape(info.parent_id)}")
    if info.status == "completed":
        out.print(f"result  {escape(_short(info.result, 200))}")
    if info.error:
        out.print(f"error   [red]{escape(_error_line(info.error))}[/]")
    if info.cancel_requested and info.status not in TERMINAL_STATUSES:
        out.print("[yellow]cancellation requested[/]")
    table = Table(title="journal", title_justify="left")
    for name, justify in (
        ("seq", "right"),
        ("kind", "left"),
        ("time", "right"),
        ("step", "right"),
        ("what", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=name != "what")  # type: ignore[arg-type]
    table.add_column("took", justify="right")
    table.add_column("in / out", overflow="fold")
    for r in rows:
        what = r.name or ""
        if r.attempt is not None:
            what += f" #{r.attempt}"
        io = _short(r.input) if r.input is not None else ""
        if r.output is not None:
            io = (io + " → " if io else "→ ") + _short(r.output)
        if r.error:
            io = (io + " " if io else "") + f"[red]{escape(_error_line(r.error))}[/]"
        if r.note:
            io = (io + " " if io else "") + f"[dim]({escape(r.note)})[/]"
        style = "red" if r.error else ""
        table.add_row(
            str(r.seq),
            Text(r.kind, style=style),
            f"+{r.offset:.3f} s",
            "" if r.step is None else str(r.step),
            escape(what),
            fmt_duration(r.duration),
            io,
        )
    out.print(table)
    for r in rows:
        if r.error and r.error.get("traceback"):
            title = f"seq {r.seq} {r.kind} {r.name or ''}".rstrip()
            if r.attempt is not None:
                title += f" (attempt {r.attempt})"
            out.print(f"\n[bold red]{escape(title)}[/]: {escape(_error_line(r.error))}")
            out.print(escape(str(r.error["traceback"]).rstrip()), style="dim", soft_wrap=True)


@runs.command("cancel")
@click.argument("run_id", metavar="RUN")
@store_option
@json_option
def cancel(run_id: str, store_url: str, as_json: bool) -> None:
    """Ask a run to stop; the workflow sees asyncio.CancelledError at its next await.

    Exits 1 if the run has already finished.

    \b
    Example:
      replay runs cancel checkout-o-1
    """

    async def go(app: App) -> RunInfo:
        info = await app.get_run(run_id).info()
        if info.status in TERMINAL_STATUSES:
            raise Failed(f"run {run_id!r} is already {info.status}; there is nothing to cancel")
        await app.cancel(run_id)
        return await app.get_run(run_id).info()

    info = on_store(store_url, go)
    if as_json:
        echo_json(_info_json(info))
    else:
        click.echo(f"cancellation requested for {run_id} ({info.status}): a worker delivers it next")


@runs.command("retry")
@click.argument("run_id", metavar="RUN")
@store_option
@json_option
def retry(run_id: str, store_url: str, as_json: bool) -> None:
    """Run a failed run again on the current code.

    A run parked by a NonDeterminismError goes back to pending and a worker
    replays it. A run whose step failed for good continues as a new run,
    RUN-retry-N, that reuses its journal up to the failed step and runs the rest
    again. Other runs (completed, cancelled, failed in the workflow's own code)
    exit 1; fork those from a step instead (replay runs fork).

    \b
    Example:
      replay runs retry checkout-o-1
    """

    async def go(app: App) -> RunInfo:
        try:
            handle = await app.retry(run_id)
        except ValueError as exc:
            raise Failed(str(exc)) from None
        return await handle.info()

    info = on_store(store_url, go)
    if as_json:
        echo_json(_info_json(info))
    elif info.run_id == run_id:
        click.echo(f"{run_id} is {info.status} again: a worker replays it on the current code")
    else:
        click.echo(f"{run_id} continues as {info.run_id} ({info.status}), from its failed step")


@runs.command("fork")
@click.argument("run_id", metavar="RUN")
@click.option(
    "--from-step",
    "from_step",
    required=True,
    type=int,
    metavar="N",
    help="The step to run again, counting from 1; it and everything after it run anew.",
)
@click.option(
    "--run-id", "new_id", metavar="ID", help="The new run's id (default: a random one that sorts by time)."
)
@store_option
@json_option
def fork(run_id: str, from_step: int, new_id: str | None, store_url: str, as_json: bool) -> None:
    """Start a new run that reuses RUN's journal up to its N-th step.

    The new run replays RUN's journal as it was just before step N was
    scheduled (steps before N return their recorded results without running),
    then runs step N and the rest on the current code. RUN is left as it is.
    N is the number in the "step" column of replay runs show: step_scheduled
    entries counted from 1.

    \b
    Example:
      replay runs fork checkout-o-1 --from-step 2
    """

    async def go(app: App) -> str:
        try:
            run = await app.fork(run_id, from_step, run_id=new_id)
        except RunNotFound:
            raise
        except ValueError as exc:
            raise BadUsage(str(exc)) from None
        return run.run_id

    forked = on_store(store_url, go)
    if as_json:
        echo_json({"run_id": forked, "forked_from": run_id, "from_step": from_step, "status": "pending"})
    else:
        click.echo(f"{forked}: forked from {run_id} at step {from_step}, pending; a worker runs it")


# DESIGN.md section 5 calls it `runs replay --from-step N`.
runs.add_command(
    click.Command("replay", callback=fork.callback, params=fork.params, help=fork.help, hidden=True)
)
