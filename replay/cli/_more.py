"""``replay events send``, ``replay check``, ``replay demo`` and ``replay dashboard``."""

from __future__ import annotations

import json
from typing import Any

import attrs
import click
from rich.markup import escape

from replay.app import App
from replay.cli._common import (
    BadUsage,
    console,
    echo_json,
    json_option,
    load_app,
    make_store,
    on_store,
    run_async,
    store_option,
)

__all__ = ("check", "dashboard", "demo", "events")


@click.group()
def events() -> None:
    """Send events to the runs waiting for them and the workflows they trigger.

    \b
    Example:
      replay events send order.shipped '{"order_id": "o-1"}'
    """


@events.command("send")
@click.argument("name")
@click.argument("data", metavar="JSON", default="{}")
@click.option("--id", "event_id", metavar="ID", help="The event's id; resending an id does nothing.")
@store_option
@json_option
def send(name: str, data: str, event_id: str | None, store_url: str, as_json: bool) -> None:
    """Send the event NAME with data JSON (an object; default {}) durably.

    Every run waiting for NAME whose match the data contains wakes up, runs
    with a matching cancel_on are cancelled, and workers start a run of each
    workflow triggered by NAME.

    \b
    Example:
      replay events send order.shipped '{"order_id": "o-1"}' --id ship-o-1
    """
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise BadUsage(f"JSON is not valid JSON ({exc}): {data!r}") from None
    if not isinstance(value, dict):
        raise BadUsage(f'an event\'s data is a JSON object such as \'{{"order_id": "o-1"}}\', got {data!r}')
    if not name.strip():
        raise BadUsage("an event needs a name")

    async def go(app: App) -> str:
        return await app.send_event(name, value, id=event_id)

    sent = on_store(store_url, go)
    if as_json:
        echo_json({"id": sent, "name": name, "data": value})
    else:
        click.echo(f"sent {name} (id {sent})")


@click.command()
@click.argument("app_spec", metavar="MODULE:APP")
@click.option("--store", "store_url", metavar="URL", help="Check this store instead of the app's own.")
@click.option(
    "--limit", default=1_000_000, show_default=True, type=click.IntRange(min=1), help="Newest runs to check."
)
@json_option
def check(app_spec: str, store_url: str | None, limit: int, as_json: bool) -> None:
    """Replay every stored run against the current code of MODULE:APP, before a deploy.

    Nothing runs and nothing is written. Exits 1 and lists each run the code
    would break (a NonDeterminismError, an unknown workflow, a different
    outcome), with the journal entry and the new command side by side; exits 0
    when every run replays.

    \b
    Example:
      replay check shop.flows:app --store sqlite:////var/lib/shop/replay.db
    """
    from replay.testing.checks import check_replay

    app = load_app(app_spec)

    async def go() -> list[Any]:
        if store_url is None:
            return await check_replay(app, limit=limit)
        store = make_store(store_url)
        await store.open()
        try:
            return await check_replay(app, store, limit=limit)
        finally:
            await store.close()

    async def main() -> list[Any]:
        try:
            return await go()
        finally:
            await app.close()

    problems = run_async(main())
    if as_json:
        echo_json([attrs.asdict(p) for p in problems])
    else:
        out = console()
        for p in problems:
            out.print(f"[bold red]{escape(p.run_id)}[/] ({escape(p.workflow)}): {p.kind}")
            out.print(escape(p.message), soft_wrap=True)
            out.print()
        out.print(
            f"[red]{len(problems)} run(s) would break[/]" if problems else "[green]every run replays[/]"
        )
    if problems:
        raise SystemExit(1)


@click.command()
@click.option(
    "--dashboard",
    "with_dashboard",
    is_flag=True,
    help="Then serve the dashboard on http://127.0.0.1:8000/ with a worker, until Ctrl-C.",
)
@store_option
def demo(with_dashboard: bool, store_url: str) -> None:
    """Run the demo: four orders, a flaky payment retried, a shipping event, one failure.

    It uses the store given (by default ./replay.db); run it twice and nothing
    runs twice. Then look at it with replay runs list, or add --dashboard to
    open it in a browser, find the failed order and retry it.

    \b
    Examples:
      replay demo && replay runs list
      replay demo --dashboard
    """
    from replay import demo as demo_module

    store = make_store(store_url, must_exist=False)

    async def main() -> None:
        await store.open()
        previous = demo_module.app.use_store(store)
        try:
            await demo_module.main()
        finally:
            await demo_module.app.close()
            demo_module.app.restore_store(previous)

    run_async(main())
    if with_dashboard:
        try:
            from replay.dashboard import serve
        except ImportError as exc:
            raise BadUsage(str(exc)) from None
        demo_module.app.set_store(make_store(store_url, must_exist=True))
        click.echo(
            "\ndashboard on http://127.0.0.1:8000/ with a worker (Ctrl-C stops both): "
            "open it, find the failed order, read why, retry it",
            err=True,
        )
        serve(demo_module.app, with_worker=True, log_level="warning")


@click.command()
@click.option(
    "--app",
    "app_spec",
    metavar="MODULE:APP",
    help="Show this app, on its own store (default: the runs on --store, no app needed).",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="The address to bind; others need a token."
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="The port.")
@click.option(
    "--token",
    envvar="REPLAY_DASHBOARD_TOKEN",
    show_envvar=True,
    help="The secret every page and API call must carry; required on any non-loopback address.",
)
@store_option
def dashboard(app_spec: str | None, host: str, port: int, token: str | None, store_url: str) -> None:
    """Serve the web dashboard: runs, their timelines, and actions on them.

    It binds 127.0.0.1 by default, and refuses any other address without a
    token (exit 2, nothing bound). Open http://127.0.0.1:8000/ once it runs;
    with a token, open it once as http://HOST:PORT/?token=TOKEN.

    \b
    Examples:
      replay dashboard
      REPLAY_DASHBOARD_TOKEN=s3cret replay dashboard --host 0.0.0.0 --port 9000
    """
    try:
        from replay.dashboard import check_address, serve
    except ImportError as exc:
        raise BadUsage(str(exc)) from None
    try:
        check_address(host, token)
    except ValueError as exc:
        raise BadUsage(str(exc)) from None
    if app_spec is not None:
        source = click.get_current_context().get_parameter_source("store_url")
        if source == click.core.ParameterSource.COMMANDLINE:
            raise BadUsage(
                "--app uses the app's own store (REPLAY_STORE, unless the app names one): drop --store"
            )
        app = load_app(app_spec)
    else:
        app = App("replay-dashboard", store=make_store(store_url))
    click.echo(f"dashboard of {app!r} on http://{host}:{port}/ (Ctrl-C stops it)", err=True)
    try:
        serve(app, host=host, port=port, token=token)
    except ValueError as exc:
        raise BadUsage(str(exc)) from None
