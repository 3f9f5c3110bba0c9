"""The OpenAPI document of the dashboard's JSON API, written by hand.

A test checks that every API route is described here with its methods, so the
document cannot fall behind the routes.
"""

from __future__ import annotations

from typing import Any

from replay.stores.base import STATUSES

__all__ = ("openapi",)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json(_ref("Error"), "refused; nothing changed")
_RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "description": "the run's id (child runs' ids contain '/')",
    "schema": {"type": "string"},
}
_EMPTY_BODY = {
    "required": False,
    "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "what went wrong and what to do"}},
    },
    "Run": {
        "type": "object",
        "description": "a run as the store sees it (replay.RunInfo); times in epoch seconds",
        "properties": {
            "run_id": {"type": "string"},
            "workflow": {"type": "string"},
            "status": {"type": "string", "enum": list(STATUSES)},
            "args": {"type": "array", "items": {}},
            "created_at": {"type": "number"},
            "updated_at": {"type": "number"},
            "result": {"description": "the return value, once completed"},
            "error": {
                "type": ["object", "null"],
                "description": "once failed: type, message, traceback (and step, cause, attempts)",
            },
            "parent_id": {"type": ["string", "null"]},
            "wake_at": {"type": ["number", "null"]},
            "cancel_requested": {"type": "boolean"},
        },
    },
    "Entry": {
        "type": "object",
        "description": "a journal entry; docs/journal-format.md describes each kind's data",
        "properties": {
            "seq": {"type": "integer"},
            "kind": {"type": "string"},
            "at": {"type": "number"},
            "data": {"type": "object"},
        },
    },
    "Timeline": {
        "type": "object",
        "description": "the journal paired into spans (one per step, timer, wait, child) and instant marks",
        "properties": {
            "start": {"type": ["number", "null"]},
            "end": {"type": ["number", "null"]},
            "finished": {"type": "boolean"},
            "spans": {"type": "array", "items": {"type": "object"}},
            "marks": {"type": "array", "items": {"type": "object"}},
        },
    },
    "RunEnvelope": {"type": "object", "properties": {"run": _ref("Run")}},
}

_PATHS: dict[str, Any] = {
    "/api/runs": {
        "get": {
            "summary": "List runs, newest first, with counts per status",
            "parameters": [
                {"name": "workflow", "in": "query", "schema": {"type": "string"}},
                {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                },
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "runs": {"type": "array", "items": _ref("Run")},
                            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                            "capped": {"type": "boolean", "description": "a count stopped at 1000"},
                            "workflows": {"type": "array", "items": {"type": "string"}},
                            "now": {"type": "number"},
                        },
                    },
                    "the runs and the status counts (for the same workflow filter)",
                ),
                "400": _ERROR,
            },
        }
    },
    "/api/runs/{run_id}": {
        "get": {
            "summary": "One run, its journal and its timeline",
            "parameters": [_RUN_ID],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "run": _ref("Run"),
                            "journal": {"type": "array", "items": _ref("Entry")},
                            "timeline": _ref("Timeline"),
                            "now": {"type": "number"},
                        },
                    },
                    "the run",
                ),
                "404": _ERROR,
            },
        }
    },
    "/api/runs/{run_id}/cancel": {
        "post": {
            "summary": "Ask a run to stop (the workflow sees CancelledError at its next await)",
            "parameters": [_RUN_ID],
            "requestBody": _EMPTY_BODY,
            "responses": {
                "200": _json(_ref("RunEnvelope"), "cancellation requested"),
                "400": _ERROR,
                "404": _ERROR,
                "409": _json(_ref("Error"), "the run already finished"),
            },
        }
    },
    "/api/runs/{run_id}/retry": {
        "post": {
            "summary": "Resume a run parked by a NonDeterminismError, once the code is fixed",
            "parameters": [_RUN_ID],
            "requestBody": _EMPTY_BODY,
            "responses": {
                "200": _json(_ref("RunEnvelope"), "the run is pending again"),
                "400": _ERROR,
                "404": _ERROR,
                "409": _json(_ref("Error"), "the run is not parked: its journal is final"),
            },
        }
    },
    "/api/runs/{run_id}/fork": {
        "post": {
            "summary": "Start a new run that reuses this run's journal up to its from_step-th step",
            "parameters": [_RUN_ID],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["from_step"],
                            "additionalProperties": False,
                            "properties": {
                                "from_step": {
                                    "type": "integer",
                                    "minimum": 1,
                                    "description": "the step to run again, counting steps from 1",
                                },
                                "run_id": {"type": "string", "description": "the new run's id"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json(_ref("RunEnvelope"), "the new run, pending"),
                "400": _ERROR,
                "404": _ERROR,
                "422": _json(_ref("Error"), "no such step, or the new run id is taken"),
            },
        }
    },
    "/api/events": {
        "post": {
            "summary": "Send an event; every run waiting for it wakes",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["name"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "data": {"type": "object", "default": {}},
                                "id": {"type": "string", "description": "resending an id does nothing"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json(
                    {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": "string"}}},
                    "the event is stored",
                ),
                "400": _ERROR,
                "422": _ERROR,
            },
        }
    },
    "/api/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
        }
    },
}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "replay dashboard API",
            "version": "1",
            "description": (
                "What the dashboard page calls. With a token, send Authorization: Bearer TOKEN. "
                "POST bodies are JSON (Content-Type: application/json). Refusals are 4xx with "
                '{"error": "..."} and change nothing.'
            ),
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": _PATHS,
    }
