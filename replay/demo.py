"""A demo you can run: ``python -m replay.demo``.

It starts four order workflows on the default store (``REPLAY_STORE``, else
``sqlite:///replay.db``): each charges a card (a step that fails once and is
retried on a durable timer), sleeps, waits for a shipping event and notifies
the customer. Order 4 is charged while the payment provider is down, so its run
fails; retry it (``replay runs retry`` or the dashboard) once the provider is
back, a few seconds later, and it completes. Run the demo twice: the second run
finds the runs in the store and starts nothing new (starts are idempotent on
``run_id``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta
from typing import Any

import replay

app = replay.App("demo")


@app.step(retry=replay.RetryPolicy(max_attempts=3, initial_interval=timedelta(milliseconds=200)))
async def charge(order_id: str, cents: int, outage_until: float) -> str:
    """Charge the card; the first attempt fails, as a flaky payment API would.

    Until ``outage_until`` (epoch seconds) the payment provider is down: every
    attempt fails, and the step fails for good once its retries run out.
    """
    info = replay.current_step()
    if time.time() < outage_until:
        raise ConnectionRefusedError("payment provider unavailable (HTTP 503); try again in a few seconds")
    if info is not None and info.attempt == 1:
        raise ConnectionError("payment API timed out")
    return f"receipt-{order_id}-{cents}"


@app.step()
def notify(order_id: str, message: str) -> str:
    """Tell the customer (a sync step: it runs in a worker thread)."""
    return f"{order_id}: {message}"


@app.workflow()
async def order(ctx: replay.Context, order_id: str, cents: int, outage_until: float) -> dict[str, object]:
    """Charge, wait a moment, wait for shipping, then notify."""
    receipt = await charge(order_id, cents, outage_until)
    await ctx.sleep(timedelta(milliseconds=300))
    shipped = await ctx.wait_for_event(
        "order.shipped", match={"order_id": order_id}, timeout=timedelta(seconds=1)
    )
    note = await ctx.step(notify, order_id, "shipped" if shipped else "delayed")
    return {"receipt": receipt, "shipped": shipped is not None, "note": note}


async def main() -> None:
    """Start four orders (the last charged while the payment provider is down), ship two, show the journal."""
    started = time.perf_counter()
    store = await app.store()
    print(f"store: {store.url}")
    async with app.worker():
        runs = [await app.start(order, f"o-{i}", 100 * i, 0.0, run_id=f"demo-order-{i}") for i in (1, 2, 3)]
        # The payment provider is down for the next 3 seconds, while order 4 is charged.
        runs.append(await app.start(order, "o-4", 400, time.time() + 3, run_id="demo-order-4"))
        for i in (1, 2):
            while not await _waiting(runs[i - 1]):
                await asyncio.sleep(0.05)
            await app.send_event("order.shipped", {"order_id": f"o-{i}"}, id=f"ship-o-{i}")
        for run in runs:
            try:
                outcome = repr(await run.result(timeout=30))
            except replay.StepFailed as exc:
                outcome = f"{exc.type_name}: {exc.message}"
            print(f"{run.run_id}: {await run.status()} {outcome}")
    print(f"\njournal of {runs[0].run_id}:")
    for entry in await runs[0].journal():
        detail = {k: v for k, v in entry.data.items() if k != "error"}
        if "error" in entry.data:
            detail["error"] = f"{entry.data['error']['type']}: {entry.data['error']['message']}"
        print(f"  {entry.seq:>2} {entry.kind:<19} {detail}")
    print(f"\ndone in {time.perf_counter() - started:.2f} s; run it again: nothing runs twice.")
    print(
        "demo-order-4 failed: retry it (`replay runs retry demo-order-4`) or see `replay demo --dashboard`."
    )
    await app.close()


async def _waiting(run: replay.RunHandle[Any]) -> bool:
    kinds = [e.kind for e in await run.journal()]
    return "wait_started" in kinds or kinds[-1] == "workflow_completed"


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
