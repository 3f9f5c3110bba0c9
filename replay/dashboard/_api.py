"""The dashboard's JSON API: what the page itself calls, and scripts may too.

Every handler is a thin call into ``replay.App``. A request that cannot be
served (malformed body, unknown run, an action the run's state forbids) gets a
4xx with ``{"error": "<what went wrong and what to do>"}`` and changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from replay.app import App
from replay.dashboard._openapi import openapi
from replay.dashboard._timeline import timeline
from replay.errors import RunNotFound
from replay.stores.base import STATUSES, TERMINAL_STATUSES, RunInfo

__all__ = ("COUNT_CAP", "MAX_LIMIT", "ApiError", "api_routes")

#: The most runs one list request returns.
MAX_LIMIT = 1000
#: Status counts stop at this many runs per status (reported as ``capped``).
COUNT_CAP = 1000


class ApiError(Exception):
    """A request the API refuses, with its HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _run(info: RunInfo) -> dict[str, Any]:
    return attrs.asdict(info, recurse=False)


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer from {low} to {high}, got {raw!r}") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be an integer from {low} to {high}, got {value}")
    return value


async def _json_object(request: Request, *, empty_ok: bool) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        if empty_ok:
            return {}
        raise ApiError(400, "the request needs a JSON object as its body")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(422, f"the body must be a JSON object, got {type(body).__name__}")
    return body


class _Api:
    def __init__(self, app: App) -> None:
        self.app = app

    async def _info(self, run_id: str) -> RunInfo:
        try:
            return await self.app.get_run(run_id).info()
        except RunNotFound:
            raise ApiError(404, f"no run with id {run_id!r}") from None

    async def list_runs(self, request: Request) -> JSONResponse:
        workflow = request.query_params.get("workflow") or None
        status = request.query_params.get("status") or None
        if status is not None and status not in STATUSES:
            raise ApiError(400, f"status must be one of {', '.join(STATUSES)}; got {status!r}")
        limit = _query_int(request, "limit", 100, 1, MAX_LIMIT)
        runs = await self.app.list_runs(workflow=workflow, status=status, limit=limit)
        counts: dict[str, int] = {}
        capped = False
        for name in STATUSES:
            found = len(await self.app.list_runs(workflow=workflow, status=name, limit=COUNT_CAP + 1))
            capped = capped or found > COUNT_CAP
            counts[name] = min(found, COUNT_CAP)
        workflows = sorted(set(self.app.workflows) | {r.workflow for r in runs})
        return JSONResponse(
            {
                "runs": [_run(r) for r in runs],
                "counts": counts,
                "capped": capped,
                "workflows": workflows,
                "now": self.app.clock.now(),
            }
        )

    async def get_run(self, request: Request) -> JSONResponse:
        run_id: str = request.path_params["run_id"]
        info = await self._info(run_id)
        entries = await self.app.get_run(run_id).journal()
        return JSONResponse(
            {
                "run": _run(info),
                "journal": [e._asdict() for e in entries],
                "timeline": timeline(entries),
                "now": self.app.clock.now(),
            }
        )

    async def cancel(self, request: Request) -> JSONResponse:
        run_id: str = request.path_params["run_id"]
        await _json_object(request, empty_ok=True)
        info = await self._info(run_id)
        if info.status in TERMINAL_STATUSES:
            raise ApiError(409, f"run {run_id!r} is {info.status}: there is nothing to cancel")
        await self.app.cancel(run_id)
        return JSONResponse({"run": _run(await self._info(run_id))})

    async def retry(self, request: Request) -> JSONResponse:
        run_id: str = request.path_params["run_id"]
        await _json_object(request, empty_ok=True)
        await self._info(run_id)
        try:
            handle = await self.app.retry(run_id)
        except ValueError as exc:
            raise ApiError(409, str(exc)) from None
        # A step's final failure is retried as a new run: answer with that one.
        return JSONResponse({"run": _run(await self._info(handle.run_id))})

    async def fork(self, request: Request) -> JSONResponse:
        run_id: str = request.path_params["run_id"]
        body = await _json_object(request, empty_ok=False)
        unknown = sorted(set(body) - {"from_step", "run_id"})
        if unknown:
            raise ApiError(422, f"unknown fields {unknown}: a fork takes from_step and optionally run_id")
        step, new_id = body.get("from_step"), body.get("run_id")
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ApiError(422, f"from_step must be an integer from 1 (steps counted from 1), got {step!r}")
        if new_id is not None and (not isinstance(new_id, str) or not new_id):
            raise ApiError(422, f"run_id must be a non-empty string when given, got {new_id!r}")
        await self._info(run_id)
        try:
            handle = await self.app.fork(run_id, step, run_id=new_id)
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        return JSONResponse({"run": _run(await self._info(handle.run_id))})

    async def send_event(self, request: Request) -> JSONResponse:
        body = await _json_object(request, empty_ok=False)
        unknown = sorted(set(body) - {"name", "data", "id"})
        if unknown:
            raise ApiError(422, f"unknown fields {unknown}: an event has name, data and optionally id")
        name, data, event_id = body.get("name"), body.get("data", {}), body.get("id")
        if not isinstance(name, str) or not name:
            raise ApiError(422, f"name must be a non-empty string, got {name!r}")
        if not isinstance(data, dict):
            raise ApiError(422, f"data must be a JSON object, got {json.dumps(data)}")
        if event_id is not None and (not isinstance(event_id, str) or not event_id):
            raise ApiError(422, f"id must be a non-empty string when given, got {event_id!r}")
        stored = await self.app.send_event(name, data, id=event_id)
        return JSONResponse({"id": stored, "name": name})

    async def openapi(self, request: Request) -> JSONResponse:
        return JSONResponse(openapi())


def api_routes(app: App) -> list[Route]:
    """The API's routes, bound to ``app``."""
    api = _Api(app)
    return [
        Route("/api/runs", api.list_runs, methods=["GET"]),
        Route("/api/runs/{run_id:path}/cancel", api.cancel, methods=["POST"]),
        Route("/api/runs/{run_id:path}/retry", api.retry, methods=["POST"]),
        Route("/api/runs/{run_id:path}/fork", api.fork, methods=["POST"]),
        Route("/api/runs/{run_id:path}", api.get_run, methods=["GET"]),
        Route("/api/events", api.send_event, methods=["POST"]),
        Route("/api/openapi.json", api.openapi, methods=["GET"]),
    ]
