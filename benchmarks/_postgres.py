"""Shared by the benchmark scripts for PostgreSQL: scratch schemas and worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).parent


def is_postgres(url: str) -> bool:
    return url.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


@contextlib.contextmanager
def scratch(url: str) -> Iterator[str]:
    """``url`` on a fresh schema of its own, dropped afterwards (other URLs as they are)."""
    if not is_postgres(url):
        yield url
        return
    schema = f"replay_bench_{uuid.uuid4().hex[:10]}"
    try:
        yield f"{url}{'&' if '?' in url else '?'}schema={schema}"
    finally:
        import asyncpg

        from replay.stores.postgres import parse_url

        async def drop() -> None:
            conn = await asyncpg.connect(parse_url(url)[0])
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()

        asyncio.run(drop())


@contextlib.contextmanager
def worker_processes(url: str, n: int) -> Iterator[list[subprocess.Popen[str]]]:
    """``n`` processes each running a worker of the benchmark app on ``url``, ready to work.

    They stop (draining nothing: the runs are done) when their stdin closes.
    """
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "_worker.py"), url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("ready"), line
        yield procs
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in procs:
            proc.wait(60)
