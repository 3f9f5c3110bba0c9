"""Steps: retries on durable timers, timeouts, failures, idempotency keys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any

import pytest

import replay
from replay.testing import TestEnv

app = replay.App("steps", store="memory://")
attempts: list[tuple[str, int, str]] = []


def seen(tag: str) -> None:
    info = replay.current_step()
    assert info is not None
    attempts.append((tag, info.attempt, info.idempotency_key))


@app.step(retry=replay.RetryPolicy(max_attempts=4, initial_interval=timedelta(seconds=10), jitter=False))
async def flaky(fail_until: int) -> str:
    seen("flaky")
    info = replay.current_step()
    assert info is not None
    if info.attempt < fail_until:
        raise ConnectionError(f"attempt {info.attempt} failed")
    return f"ok on {info.attempt}"


@app.workflow()
async def uses_flaky(ctx: replay.Context, fail_until: int) -> Any:
    try:
        return await flaky(fail_until)
    except replay.StepFailed as exc:
        return {"type": exc.type_name, "message": exc.message, "attempts": exc.attempts, "step": exc.step}


async def test_retries_wait_on_durable_timers_with_backoff() -> None:
    attempts.clear()
    async with TestEnv(app) as env:
        run = await app.start(uses_flaky, 3, run_id="f")
        await env.idle()
        assert [a for _, a, _ in attempts] == [1]
        await env.advance(timedelta(seconds=9))
        assert [a for _, a, _ in attempts] == [1]  # the first wait is 10 s
        await env.advance(timedelta(seconds=1))
        assert [a for _, a, _ in attempts] == [1, 2]
        await env.crash()  # the retry timer survives a crash
        await env.advance(timedelta(seconds=19))
        assert [a for _, a, _ in attempts] == [1, 2]  # then 20 s
        await env.advance(timedelta(seconds=1))
        assert await run.result() == "ok on 3"
    assert {key for _, _, key in attempts} == {"f:2"}  # one key across attempts


async def test_a_step_that_keeps_failing_raises_step_failed_in_the_workflow() -> None:
    async with TestEnv(app) as env:
        run = await app.start(uses_flaky, 99)
        await env.advance(timedelta(hours=1))
        result = await run.result()
    assert result == {
        "type": "ConnectionError",
        "message": "attempt 4 failed",
        "attempts": 4,
        "step": "flaky",
    }


@app.step()
def refuses(kind: str) -> None:
    seen("refuses")
    if kind == "non-retryable":
        raise replay.NonRetryableError("card declined")
    raise KeyError("listed as non-retryable")


@app.workflow()
async def refused(ctx: replay.Context, kind: str) -> str:
    policy = replay.RetryPolicy(non_retryable=(KeyError,))
    try:
        await ctx.step(refuses, kind, retry=policy)
    except replay.StepFailed as exc:
        return f"{exc.type_name} after {exc.attempts}"
    return "no"


@pytest.mark.parametrize(
    ("kind", "expected"), [("non-retryable", "NonRetryableError after 1"), ("key", "KeyError after 1")]
)
async def test_non_retryable_errors_fail_at_once(kind: str, expected: str) -> None:
    async with TestEnv(app) as env:
        run = await app.start(refused, kind)
        await env.idle()
        assert await run.result() == expected


@app.step(timeout=timedelta(milliseconds=50), retry=replay.RetryPolicy(max_attempts=1))
async def hangs() -> None:
    await asyncio.Event().wait()


@app.workflow()
async def times_out(ctx: replay.Context) -> str:
    try:
        await hangs()
    except replay.StepFailed as exc:
        return exc.type_name
    return "no"


async def test_a_step_timeout_fails_the_attempt() -> None:
    async with TestEnv(app):
        run = await app.start(times_out)
        assert await run.result(timeout=10) == "TimeoutError"


@app.step()
def returns_a_set() -> Any:
    return {1, 2}


@app.workflow()
async def bad_result(ctx: replay.Context) -> str:
    try:
        await ctx.step(returns_a_set)
    except replay.StepFailed as exc:
        return f"{exc.type_name} after {exc.attempts}: {exc.message}"
    return "no"


async def test_a_result_json_cannot_hold_fails_the_step_without_retry() -> None:
    async with TestEnv(app) as env:
        run = await app.start(bad_result)
        await env.idle()
        outcome, message = (await run.result()).split(": ", 1)
        assert outcome == "SerializationError after 1"
        assert message.startswith("the result of step ") and " cannot be stored: " in message
        assert "returns_a_set" in message.split(" cannot be stored")[0]


@app.workflow()
async def bad_argument(ctx: replay.Context) -> str:
    try:
        await ctx.step(refuses, object())  # type: ignore[arg-type]
    except replay.SerializationError as exc:
        return str(exc)
    return "no"


async def test_an_argument_json_cannot_hold_raises_at_the_call() -> None:
    async with TestEnv(app) as env:
        run = await app.start(bad_argument)
        await env.idle()
        message = await run.result()
        assert message.startswith("an argument of step 'refuses' cannot be stored")
        assert [e.kind for e in await run.journal()] == ["workflow_started", "workflow_completed"]


@app.step()
def tuple_maker() -> tuple[int, int]:
    return (1, 2)


@app.workflow()
async def sees_json(ctx: replay.Context) -> str:
    value = await ctx.step(tuple_maker)
    return type(value).__name__


async def test_live_runs_see_results_as_they_read_back_from_the_journal() -> None:
    async with TestEnv(app):
        run = await app.start(sees_json)
        assert await run.result() == "list"


def test_a_step_called_outside_a_workflow_is_a_plain_call() -> None:
    assert tuple_maker() == (1, 2)
    assert replay.current_step() is None


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        replay.RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="backoff"):
        replay.RetryPolicy(backoff=0.5)
    with pytest.raises(ValueError, match="non_retryable"):
        replay.RetryPolicy(non_retryable=[KeyError])  # type: ignore[arg-type]
    policy = replay.RetryPolicy(initial_interval=timedelta(seconds=1), max_interval=timedelta(seconds=5))
    assert [policy.delay(n, 0.999999) for n in (1, 2, 3, 4)] == pytest.approx([1, 2, 4, 5], rel=1e-5)
    assert policy.delay(1, 0.0) == 0.5


async def test_a_workflow_retry_policy_covers_steps_that_set_none() -> None:
    app = replay.App("wf-retry", store="memory://")
    attempts: dict[str, int] = {}

    @app.step()
    def flaky() -> None:
        attempts["flaky"] = attempts.get("flaky", 0) + 1
        raise ConnectionError("down")

    @app.step(retry=replay.RetryPolicy(max_attempts=2, jitter=False))
    def own_policy() -> None:
        attempts["own"] = attempts.get("own", 0) + 1
        raise ConnectionError("down")

    @app.workflow(
        retry=replay.RetryPolicy(max_attempts=5, initial_interval=timedelta(seconds=1), jitter=False)
    )
    async def patient(ctx: replay.Context) -> str:
        for step in (flaky, own_policy):
            with contextlib.suppress(replay.StepFailed):
                await step()
        return "done"

    async with TestEnv(app) as env:
        run = await app.start(patient)
        await env.advance(timedelta(minutes=5))
        assert await run.result() == "done"
    assert attempts == {"flaky": 5, "own": 2}


async def test_a_step_ending_as_the_deadline_passes_leaves_a_whole_journal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The step's outcome and the deadline's tick reach the driver in one batch. The
    # run ends timed out, and no seq allocated for the outcome may be skipped.
    app = replay.App("deadline-batch", store="memory://")
    started, gate = asyncio.Event(), asyncio.Event()

    @app.step()
    async def slow() -> int:
        started.set()
        await gate.wait()
        return 1

    @app.workflow(timeout=timedelta(seconds=10))
    async def bounded(ctx: replay.Context) -> int:
        return await slow()

    async with TestEnv(app) as env:
        run = await app.start(bounded, run_id="d-1")
        await started.wait()
        gate.set()  # the step returns on the loop's next turn...
        env.clock.fire_due(env.clock.now() + 11)  # ...and the deadline's tick is posted in this one
        await env.idle()
        assert await run.status() == "failed"
        journal = await run.journal()
    assert [e.seq for e in journal] == list(range(1, len(journal) + 1))
    assert journal[-1].kind == "workflow_failed"
    assert journal[-1].data["error"]["type"] == "WorkflowTimeout"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_no_retry_starts_once_the_run_has_ended() -> None:
    # One tick finds the workflow's timer and a step's retry both due. The timer
    # ends the run, so the retry must not start: its attempt would never be journaled.
    app = replay.App("retry-after-end", store="memory://")
    tries: list[int] = []

    @app.step(retry=replay.RetryPolicy(max_attempts=3, initial_interval=timedelta(seconds=10), jitter=False))
    async def flaky() -> None:
        tries.append(len(tries) + 1)
        raise RuntimeError("not yet")

    @app.workflow()
    async def racing(ctx: replay.Context) -> str:
        _ = flaky()  # a step call starts at once; left pending: the run ends on the sleep
        await ctx.sleep(timedelta(seconds=10))
        return "slept"

    async with TestEnv(app) as env:
        run = await app.start(racing, run_id="r-1")
        await env.idle()
        assert tries == [1]
        await env.advance(timedelta(seconds=10))
        assert await run.result() == "slept"
    assert tries == [1]


@app.step(retry=replay.RetryPolicy(max_attempts=2, initial_interval=timedelta(seconds=1), jitter=False))
async def raises_base(kind: str) -> None:
    seen(kind)
    if kind == "cancelled":
        raise asyncio.CancelledError()  # a client library surfacing its inner task's cancellation
    raise SystemExit(2)  # sys.exit in an argument parser, say


@app.workflow()
async def calls_base(ctx: replay.Context, kind: str) -> str:
    try:
        await raises_base(kind)
    except replay.StepFailed as exc:
        return f"{exc.type_name} after {exc.attempts}"
    return "no"


@pytest.mark.parametrize(
    ("kind", "name"), [("cancelled", "asyncio.exceptions.CancelledError"), ("exit", "SystemExit")]
)
async def test_a_step_raising_cancelled_or_system_exit_itself_fails_that_attempt(
    kind: str, name: str
) -> None:
    # Not the worker's end (SystemExit), nor a run waiting for ever for an outcome
    # never posted (CancelledError): an attempt that failed, retried by its policy.
    attempts.clear()
    async with TestEnv(app) as env:
        run = await app.start(calls_base, kind)
        async with asyncio.timeout(20):  # a bound for a hang (the bug's form), not a timing
            await env.advance(timedelta(seconds=1))
            assert await run.result() == f"{name} after 2"
    assert [a for _, a, _ in attempts] == [1, 2]
