"""A demo you can run: ``python -m replay.demo``.

It starts a few order workflows on the default store (``REPLAY_STORE``, else
``sqlite:///replay.db``): each charges a card (a step that fails once and is
retried on a durable timer), sleeps, waits for a shipping event and notifies
the customer. Run it twice: the second run finds the finished runs in the
store and starts nothing new (starts are idempotent on ``run_id``).
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
async def charge(order_id: str, cents: int) -> str:
    """Charge the card; the first attempt fails, as a flaky payment API would."""
    info = replay.current_step()
    if info is not None and info.attempt == 1:
        raise ConnectionError("payment API timed out")
    return f"receipt-{order_id}-{cents}"


@app.step()
def notify(order_id: str, message: str) -> str:
    """Tell the customer (a sync step: it runs in a worker thread)."""
    return f"{order_id}: {message}"


@app.workflow()
async def order(ctx: replay.Context, order_id: str, cents: int) -> dict[str, object]:
    """Charge, wait a moment, wait for shipping, then notify."""
    receipt = await charge(order_id, cents)
    await ctx.sleep(timedelta(milliseconds=300))
    shipped = await ctx.wait_for_event(
        "order.shipped", match={"order_id": order_id}, timeout=timedelta(seconds=1)
    )
    note = await ctx.step(notify, order_id, "shipped" if shipped else "delayed")
    return {"receipt": receipt, "shipped": shipped is not None, "note": note}


async def main() -> None:
    """Start three orders, ship two, and show what the journal recorded."""
    started = time.perf_counter()
    store = await app.store()
    print(f"store: {store.url}")
    async with app.worker():
        runs = [await app.start(order, f"o-{i}", 100 * i, run_id=f"demo-order-{i}") for i in (1, 2, 3)]
        for i in (1, 2):
            while not await _waiting(runs[i - 1]):
                await asyncio.sleep(0.05)
            await app.send_event("order.shipped", {"order_id": f"o-{i}"}, id=f"ship-o-{i}")
        for run in runs:
            result = await run.result(timeout=30)
            print(f"{run.run_id}: {await run.status()} {result}")
    print(f"\njournal of {runs[0].run_id}:")
    for entry in await runs[0].journal():
        detail = {k: v for k, v in entry.data.items() if k != "error"}
        if "error" in entry.data:
            detail["error"] = f"{entry.data['error']['type']}: {entry.data['error']['message']}"
        print(f"  {entry.seq:>2} {entry.kind:<19} {detail}")
    print(f"\ndone in {time.perf_counter() - started:.2f} s; run it again: nothing runs twice.")
    await app.close()


async def _waiting(run: replay.RunHandle[Any]) -> bool:
    kinds = [e.kind for e in await run.journal()]
    return "wait_started" in kinds or kinds[-1] == "workflow_completed"


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
