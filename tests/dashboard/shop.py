"""A small shop whose runs fill the dashboard in tests: completed, failed, suspended, parked.

``populate`` runs inside a ``TestEnv`` (memory store, virtual clock), so the runs
are real runs with real journals, made without sleeping.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import replay
from replay.testing import TestEnv

app = replay.App("shop", store="memory://")

# The version of `audit_order` the "deployed" code runs: changing it under a
# journaled run parks that run with a NonDeterminismError, as a bad deploy would.
version = {"audit": 1}
approved: set[str] = set()  # declined cards that work again, for the retry tests


@app.step()
async def reserve(order: str) -> dict[str, Any]:
    """Hold the stock."""
    return {"order": order, "held": True}


@app.step(retry=replay.RetryPolicy(max_attempts=3, initial_interval=timedelta(seconds=30), jitter=False))
async def charge(order: str, cents: int) -> str:
    """Charge the card: a declined card fails every attempt."""
    if order.startswith("declined") and order not in approved:
        raise ConnectionRefusedError(f"card declined for {order}")
    return f"receipt-{order}-{cents}"


@app.step()
def pack(order: str) -> str:
    """Pack the parcel."""
    return f"parcel-{order}"


@app.workflow()
async def checkout(ctx: replay.Context, order: str, cents: int) -> dict[str, Any]:
    """Reserve, wait a little, then charge."""
    held = await reserve(order)
    await ctx.sleep(timedelta(seconds=20))
    receipt = await charge(order, cents)
    return {"held": held["held"], "receipt": receipt}


@app.workflow()
async def fulfil(ctx: replay.Context, order: str) -> dict[str, Any]:
    """Pack, then wait (up to a week) to hear the parcel shipped."""
    parcel = await ctx.step(pack, order)
    shipped = await ctx.wait_for_event("order.shipped", match={"order": order}, timeout=timedelta(days=7))
    return {"parcel": parcel, "shipped": shipped is not None}


@app.workflow()
async def audit_order(ctx: replay.Context, order: str) -> str:
    """A workflow whose code "changes" between deploys (see ``version``)."""
    if version["audit"] == 1:
        await reserve(order)
    else:
        await ctx.step(pack, order)  # a changed command: the journal says reserve
    await ctx.sleep(timedelta(hours=1))
    return "audited"


async def populate(env: TestEnv) -> dict[str, str]:
    """Make runs in every interesting state; returns their ids by role."""
    for i in (1, 2, 3):
        run = await app.start(checkout, f"ok-{i}", 100 * i, run_id=f"checkout-ok-{i}")
        await env.advance(timedelta(seconds=20))
        await run.result(timeout=5)
    await app.start(checkout, "declined-7", 700, run_id="checkout-declined-7")
    await env.advance(timedelta(seconds=20))
    await env.advance(timedelta(minutes=2))  # both retries, then the final failure
    shipped = await app.start(fulfil, "o-1", run_id="fulfil-o-1")
    await env.idle()
    await app.send_event("order.shipped", {"order": "o-1", "carrier": "post"}, id="ship-o-1")
    await shipped.result(timeout=5)
    for order in ("o-2", "o-3"):
        await app.start(fulfil, order, run_id=f"fulfil-{order}")
    version["audit"] = 1
    await app.start(audit_order, "a-1", run_id="audit-a-1")
    await env.idle()
    version["audit"] = 2  # a bad deploy: a fresh worker replays the run when it wakes, and parks it
    await env.crash()
    await env.advance(timedelta(hours=1))
    version["audit"] = 1  # the fix is deployed; retry may now resume the run
    return {
        "completed": "checkout-ok-1",
        "failed": "checkout-declined-7",
        "suspended": "fulfil-o-2",
        "other_suspended": "fulfil-o-3",
        "parked": "audit-a-1",
        "shipped": "fulfil-o-1",
    }


def free_port_socket() -> Any:
    """A listening-ready socket on a free loopback port (no race with another process)."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class LiveDashboard:
    """The dashboard served by uvicorn in a background thread, over a populated ``TestEnv``.

    The thread owns one event loop: the TestEnv's worker, the store and uvicorn
    all run on it, as they would in ``replay dashboard`` next to a worker.
    """

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.ids: dict[str, str] = {}
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: Any = None
        self._server: Any = None
        self._sock = free_port_socket()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/"
        self._thread = threading.Thread(target=self._main, name="dashboard", daemon=True)

    def __enter__(self) -> LiveDashboard:
        self._thread.start()
        if not self._ready.wait(timeout=30) or self.error is not None:
            raise RuntimeError(f"the dashboard did not start: {self.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(timeout=30)

    def call(self, coro: Any, timeout: float = 10) -> Any:
        """Run a coroutine on the server's loop (to read the store) and return its result."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _main(self) -> None:
        import asyncio

        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self.error = exc
            self._ready.set()

    async def _serve(self) -> None:
        import asyncio

        import uvicorn

        from replay.dashboard import create_app

        async with TestEnv(app) as env:
            self.ids = await populate(env)
            self._loop = asyncio.get_running_loop()
            config = uvicorn.Config(
                create_app(app, token=self.token), log_level="warning", lifespan="off", access_log=False
            )
            self._server = uvicorn.Server(config)
            serving = asyncio.create_task(self._server.serve(sockets=[self._sock]))
            while not self._server.started and not serving.done():
                await asyncio.sleep(0.01)  # bounded by __enter__'s wait
            self._ready.set()
            await serving
