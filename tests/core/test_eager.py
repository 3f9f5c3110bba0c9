"""Eagerly started tasks (replay._eager): step tasks behave as tasks, and start at once.

On Python 3.11 these pin the emulation and the private asyncio calls it makes;
on 3.12+ they hold for asyncio's own ``eager_start``.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from typing import Any

import pytest

from replay._eager import start_task

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="caller's")


def test_the_private_asyncio_calls_it_makes_are_there() -> None:
    if sys.version_info >= (3, 12):
        pytest.skip("asyncio starts tasks eagerly itself from 3.12")
    from asyncio import tasks

    assert callable(tasks._enter_task)
    assert callable(tasks._leave_task)


async def test_a_coroutine_that_does_not_wait_runs_to_its_end_before_start_returns() -> None:
    seen: list[str] = []

    async def body() -> int:
        seen.append("ran")
        return 7

    task = start_task(body(), asyncio.get_running_loop(), "t")
    assert seen == ["ran"]
    assert await task == 7
    assert task.get_name() == "t"


async def test_the_first_part_runs_as_the_new_task_and_the_caller_is_current_again_after() -> None:
    caller = asyncio.current_task()
    inside: list[Any] = []

    async def body() -> None:
        inside.append(asyncio.current_task())

    task = start_task(body(), asyncio.get_running_loop(), "t")
    assert inside == [task]
    assert asyncio.current_task() is caller
    await task


async def test_a_coroutine_that_waits_goes_on_in_its_task() -> None:
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    tasks_seen: list[Any] = []

    async def body() -> int:
        tasks_seen.append(asyncio.current_task())
        got = await gate
        tasks_seen.append(asyncio.current_task())
        await asyncio.sleep(0)  # a bare yield to the loop
        return got + 1

    task = start_task(body(), asyncio.get_running_loop(), "t")
    assert not task.done()
    gate.set_result(41)
    assert await task == 42
    assert tasks_seen == [task, task]


async def test_a_timeout_entered_in_the_first_part_cancels_that_task_only() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    timed_out = asyncio.Event()

    async def body() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0):
                await never
        timed_out.set()

    task = start_task(body(), asyncio.get_running_loop(), "t")
    await timed_out.wait()  # the caller is waiting on something else when the timeout fires
    await task
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]


async def test_cancelling_a_waiting_task_cancels_its_coroutine() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cleaned: list[bool] = []

    async def body() -> None:
        try:
            await never
        finally:
            cleaned.append(True)

    task = start_task(body(), asyncio.get_running_loop(), "t")
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]
    assert never.cancelled()


async def test_context_variables_set_in_the_first_part_stay_in_the_task() -> None:
    async def body() -> str:
        var.set("task's")
        await asyncio.sleep(0)
        return var.get()

    task = start_task(body(), asyncio.get_running_loop(), "t")
    assert var.get() == "caller's"
    assert await task == "task's"


async def test_what_the_first_part_raises_is_the_tasks_exception() -> None:
    async def body() -> None:
        raise KeyError("boom")

    task = start_task(body(), asyncio.get_running_loop(), "t")
    with pytest.raises(KeyError, match="boom"):
        await task


async def test_a_task_cancelled_before_its_first_turn_is_cancelled() -> None:
    ran: list[bool] = []

    async def body() -> None:
        ran.append(True)

    task = start_task(body(), asyncio.get_running_loop(), "t")
    cancelled = task.cancel()
    await asyncio.sleep(0)
    assert ran == [True]
    # On 3.12 the task is already done (cancel() is refused); on 3.11 it ends cancelled.
    assert task.cancelled() is cancelled


async def test_a_waiting_task_cancelled_before_its_first_turn_cancels_what_it_waits_on() -> None:
    # As any asyncio task: cancelling it cancels the future it waits on, and the
    # coroutine sees the cancellation once that future is done (here: an inner
    # task, which gets to run its own cleanup first).
    order: list[str] = []

    async def inner() -> None:
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            order.append("inner cleaned up")

    helper = asyncio.ensure_future(inner())
    await asyncio.sleep(0)  # the helper is in, waiting

    async def body() -> None:
        try:
            await helper
        finally:
            order.append(f"body saw the helper {'cancelled' if helper.cancelled() else 'pending'}")

    task = start_task(body(), asyncio.get_running_loop(), "t")
    task.cancel()  # before the task's first turn, on any Python
    with pytest.raises(asyncio.CancelledError):
        await task
    assert order == ["inner cleaned up", "body saw the helper cancelled"]
