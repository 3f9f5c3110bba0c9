"""``replay worker MODULE:APP``: a worker process that drains on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import click

from replay.app import App
from replay.cli._common import BadUsage, Failed, load_app, make_store, run_async
from replay.worker import StepInfo, Worker

__all__ = ("worker",)

log = logging.getLogger("replay.cli")


@click.command()
@click.argument("app_spec", metavar="MODULE:APP")
@click.option(
    "--store",
    "store_url",
    metavar="URL",
    help="Use this store instead of the app's own (which is REPLAY_STORE, else sqlite:///replay.db, "
    "unless the app names one).",
)
@click.option(
    "--drain-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="On SIGTERM/SIGINT, wait at most this many seconds for steps in flight to finish.",
)
@click.option(
    "--max-runs", default=10_000, show_default=True, type=click.IntRange(min=1), help="Hot runs at most."
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.01),
    help="Look for runs other processes made this often, in seconds (default: the store's).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="What to log to stderr.",
)
def worker(
    app_spec: str,
    store_url: str | None,
    drain_timeout: float,
    max_runs: int,
    poll_interval: float | None,
    log_level: str,
) -> None:
    """Run a worker for the app MODULE:APP until SIGTERM or SIGINT (Ctrl-C).

    On the first signal the worker drains: it claims nothing more, starts no
    new step, waits for the steps in flight to finish and journals their
    outcomes, then exits 0. The runs it held are claimable at once by other
    workers, which replay them and carry on. If the drain takes longer than
    --drain-timeout, or a second signal comes, it stops at once and exits 1:
    the steps it cut off run again elsewhere.

    The working directory is importable, as it is for python -m.

    \b
    Example:
      replay worker shop.flows:app --drain-timeout 60
    """
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = load_app(app_spec)
    if not app.workflows:
        raise BadUsage(f"{app_spec} registers no workflow: there is nothing to run")
    cut = run_async(_serve(app, store_url, drain_timeout, max_runs, poll_interval))
    if cut:
        steps = ", ".join(f"{s.run_id} step {s.name!r} (seq {s.seq}, attempt {s.attempt})" for s in cut)
        raise Failed(f"stopped before {len(cut)} step(s) in flight finished; they will run again: {steps}")
    click.echo("drained: every step in flight was journaled; bye", err=True)


async def _serve(
    app: App, store_url: str | None, drain_timeout: float, max_runs: int, poll_interval: float | None
) -> list[StepInfo]:
    previous = None
    if store_url is not None:
        store = make_store(store_url, must_exist=False)
        await store.open()
        previous = app.use_store(store)
    try:
        try:
            store = await app.store()
        except (ValueError, ImportError) as exc:  # REPLAY_STORE, or the app's own URL, is bad
            raise BadUsage(f"the store of {app!r}: {exc}") from None
        w = Worker(app, store, app.clock, max_runs=max_runs, poll_interval=poll_interval)
        loop = asyncio.get_running_loop()
        signals = asyncio.Queue[signal.Signals]()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, signals.put_nowait, sig)
        try:
            await w.start()
            names = ", ".join(sorted(app.workflows))
            click.echo(f"worker {w.worker_id} on {store.url}, running {names}", err=True)
            click.echo("SIGTERM or Ctrl-C drains and stops it", err=True)
            sig = await signals.get()
            click.echo(f"{sig.name}: draining (at most {drain_timeout:g} s)", err=True)
            drain = asyncio.create_task(w.drain(drain_timeout))
            again = asyncio.create_task(signals.get())
            done, _ = await asyncio.wait({drain, again}, return_when=asyncio.FIRST_COMPLETED)
            if drain in done:
                again.cancel()
                return drain.result()
            click.echo("second signal: stopping now", err=True)
            cut = w.in_flight()
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
            await w.stop()
            return cut
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    finally:
        await app.close()
        if previous is not None:
            app.restore_store(previous)
