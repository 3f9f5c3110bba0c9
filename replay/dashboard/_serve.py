"""``serve``: run the dashboard with uvicorn, refusing an exposed address without a token."""

from __future__ import annotations

import asyncio
import ipaddress

from replay.app import App
from replay.dashboard._app import create_app

__all__ = ("check_address", "serve")


def _is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def check_address(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token.

    Args:
        host: the address to bind.
        token: the dashboard's token, if any.

    Raises:
        ValueError: ``host`` is not a loopback address (127.0.0.0/8, ::1,
            ``localhost``) and there is no token.
    """
    if token is None and not _is_loopback(host):
        raise ValueError(
            f"refusing to serve the dashboard on {host!r} without a token: anyone who can "
            "reach that address could cancel runs and send events. Give the dashboard a "
            "token, or bind 127.0.0.1."
        )


def serve(
    app: App,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    *,
    log_level: str = "info",
    with_worker: bool = False,
) -> None:
    """Serve the dashboard of ``app`` with uvicorn until interrupted.

    Args:
        app: the replay app whose runs to show.
        host: the address to bind; anything but loopback needs a token.
        port: the port to bind.
        token: the secret every request must carry; see ``create_app``.
        log_level: uvicorn's log level.
        with_worker: also run a worker of ``app`` in this process, so that what
            the dashboard retries, forks or wakes runs here.

    Raises:
        ValueError: a non-loopback ``host`` without a token (checked before
            anything binds), or an empty token.
    """
    check_address(host, token)
    import uvicorn

    dashboard = create_app(app, token=token)
    server = uvicorn.Server(uvicorn.Config(dashboard, host=host, port=port, log_level=log_level))

    async def run() -> None:
        try:
            if with_worker:
                async with app.worker():
                    await server.serve()
            else:
                await server.serve()
        finally:
            await app.close()

    asyncio.run(run())
