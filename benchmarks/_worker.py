"""A worker process of the benchmark app: ``python benchmarks/_worker.py URL``.

Prints "ready" once its worker runs, and stops when its stdin closes.
"""

from __future__ import annotations

import asyncio
import sys

from _apps import app


async def main(url: str) -> None:
    app.set_store(url)
    try:
        async with app.worker():
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await app.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
