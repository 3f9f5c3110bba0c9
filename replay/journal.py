"""Journal entries and their wire format: the only module that speaks orjson.

A run's journal is an append-only list of entries numbered from 1. A store keeps
each entry encoded as one compact JSON array (``encode_entry``)::

    [3, "step_completed", 1764284400.25, {"op": 2, "attempt": 1, "result": 3}]

that is ``[seq, kind, at, data]``, where ``at`` is seconds since the epoch (UTC).
The first entry is always ``workflow_started`` and its data carries
``"journal": FORMAT_VERSION``. A journal exported to a file (``dump_journal``) is
JSON lines: a header ``{"format": "replay-journal", "version": 1, "run_id": ...}``
then one object per entry, ``{"seq": ..., "kind": ..., "at": ..., "data": ...}``.
docs/journal-format.md describes every kind's data.
"""

from __future__ import annotations

import functools
import gc
import traceback as tb_module
from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

import orjson

from replay.errors import SchemaError, SerializationError, StepFailed

__all__ = (
    "COMMAND_KINDS",
    "FORMAT_VERSION",
    "Entry",
    "decode_carried",
    "decode_entries",
    "decode_value",
    "dump_journal",
    "encode_entry",
    "encode_value",
    "error_data",
    "load_journal",
)

#: Version of the wire format written by this release.
FORMAT_VERSION: Final = 1

WORKFLOW_STARTED: Final = "workflow_started"
STEP_SCHEDULED: Final = "step_scheduled"
STEP_COMPLETED: Final = "step_completed"
STEP_FAILED: Final = "step_failed"
TIMER_STARTED: Final = "timer_started"
TIMER_FIRED: Final = "timer_fired"
WAIT_STARTED: Final = "wait_started"
EVENT_RECEIVED: Final = "event_received"
WAIT_TIMED_OUT: Final = "wait_timed_out"
SIDE_EFFECT: Final = "side_effect"
CHILD_STARTED: Final = "child_started"
CHILD_COMPLETED: Final = "child_completed"
PATCH: Final = "patch"
CANCEL_REQUESTED: Final = "cancel_requested"
WORKFLOW_COMPLETED: Final = "workflow_completed"
WORKFLOW_FAILED: Final = "workflow_failed"
WORKFLOW_CANCELLED: Final = "workflow_cancelled"

#: Entries that record something the workflow itself asked for, in the order it
#: asked. On replay, the workflow must ask for them again in the same order.
COMMAND_KINDS: Final = frozenset(
    {STEP_SCHEDULED, TIMER_STARTED, WAIT_STARTED, SIDE_EFFECT, CHILD_STARTED, PATCH}
)
#: Entries that end a run.
TERMINAL_KINDS: Final = frozenset({WORKFLOW_COMPLETED, WORKFLOW_FAILED, WORKFLOW_CANCELLED})
ALL_KINDS: Final = (
    COMMAND_KINDS
    | TERMINAL_KINDS
    | {
        WORKFLOW_STARTED,
        STEP_COMPLETED,
        STEP_FAILED,
        TIMER_FIRED,
        EVENT_RECEIVED,
        WAIT_TIMED_OUT,
        CHILD_COMPLETED,
        CANCEL_REQUESTED,
    }
)


class Entry(NamedTuple):
    """One journal entry, immutable.

    A named tuple rather than an attrs class: a woken run decodes its whole
    journal, and building a tuple costs a third of a frozen attrs instance.

    Attributes:
        seq: position in the run's journal, from 1.
        kind: one of the kinds listed in docs/journal-format.md.
        at: when it was journaled, in seconds since the epoch.
        data: the kind's body, a JSON object.
    """

    seq: int
    kind: str
    at: float
    data: dict[str, Any]


def encode_value(value: Any, what: str = "value", *what_args: object) -> bytes:
    """Encode a user value as JSON.

    Args:
        value: anything orjson can encode.
        what: a description for the error message, such as "argument 2 of charge".
        *what_args: if given, ``what`` is a %-format of them, formatted only on
            an error (the hot paths call this for every step).

    Raises:
        SerializationError: the value cannot be encoded.
    """
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        if what_args:
            what %= what_args
        raise SerializationError(
            f"{what} cannot be stored: {exc}. Workflow and step arguments and results "
            "must be JSON values (dict with str keys, list, str, int, float, bool, None, "
            "or types orjson encodes such as dataclasses and datetimes)."
        ) from None


def decode_value(raw: bytes) -> Any:
    """Decode JSON produced by ``encode_value``."""
    return orjson.loads(raw)


def round_trip(value: Any, what: str = "value", *what_args: object) -> Any:
    """Return ``value`` as it will read back from the journal (tuples become lists...).

    Live runs hand workflows this form, so a replayed run sees exactly what the
    live run saw. ``what`` and ``what_args`` are ``encode_value``'s.
    """
    return orjson.loads(encode_value(value, what, *what_args))


def encode_entry(entry: Entry) -> bytes:
    """Encode one entry in the wire format.

    Raises:
        SerializationError: the entry's data holds a value orjson cannot encode.
    """
    try:
        return orjson.dumps(tuple(entry))
    except TypeError as exc:
        raise SerializationError(f"journal entry {entry.kind} cannot be stored: {exc}") from None


# tuple.__new__ straight from C: the fastest way to turn decoded rows into entries.
_make_entry = functools.partial(tuple.__new__, Entry)


def decode_entries(blobs: Sequence[bytes]) -> list[Entry]:
    """Decode encoded entries, in one orjson call for speed.

    Raises:
        SchemaError: the journal was written by a newer replay.
    """
    if not blobs:
        return []
    # Decoding allocates many containers at once, and JSON values cannot form
    # cycles: the cyclic GC has nothing to find here, and pausing it halves the cost.
    paused = gc.isenabled()
    gc.disable()
    try:
        entries: list[Entry] = list(map(_make_entry, orjson.loads(b"[" + b",".join(blobs) + b"]")))
    finally:
        if paused:
            gc.enable()
    first = entries[0]
    if first.kind == WORKFLOW_STARTED:
        version = first.data.get("journal", 1)
        if version > FORMAT_VERSION:
            raise SchemaError(
                f"journal format {version} was written by a newer replay; "
                f"this one reads up to {FORMAT_VERSION}: upgrade replay"
            )
    return entries


def decode_carried(blobs: Sequence[bytes]) -> list[Entry] | None:
    """``decode_entries(blobs)`` for a claim to carry, or None where that raises.

    A claim carries the journals of many runs. One that cannot be decoded (written
    by a newer replay, or damaged) must not fail the claim of the others: its claim
    carries None, its driver reads the journal itself, and that run alone fails
    (and is handed back) as it would have without the carried journals.
    """
    try:
        return decode_entries(blobs)
    except (SchemaError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None


def dump_journal(run_id: str, entries: Iterable[Entry]) -> bytes:
    """Export a journal as JSON lines: a header, then one entry a line."""
    lines = [orjson.dumps({"format": "replay-journal", "version": FORMAT_VERSION, "run_id": run_id})]
    lines.extend(orjson.dumps(e._asdict()) for e in entries)
    return b"\n".join(lines) + b"\n"


def load_journal(raw: bytes) -> tuple[str, list[Entry]]:
    """Read a journal exported by ``dump_journal``.

    Returns:
        The run id and the entries.

    Raises:
        SchemaError: the text is not a replay journal or is from a newer replay.
    """
    lines = [line for line in raw.splitlines() if line.strip()]
    try:
        header = orjson.loads(lines[0]) if lines else {}
    except orjson.JSONDecodeError:
        header = {}
    if not isinstance(header, dict) or header.get("format") != "replay-journal":
        raise SchemaError("not a replay journal: the first line is not its header")
    if header.get("version", 0) > FORMAT_VERSION:
        raise SchemaError(f"journal format {header['version']} is newer than {FORMAT_VERSION}")
    objects = [orjson.loads(line) for line in lines[1:]]
    blobs = [orjson.dumps([o["seq"], o["kind"], o["at"], o["data"]]) for o in objects]
    return str(header["run_id"]), decode_entries(blobs)


def error_data(exc: BaseException) -> dict[str, Any]:
    """Describe an exception as journaled data: type, message and traceback text."""
    if isinstance(exc, StepFailed):
        return {
            "type": "StepFailed",
            "step": exc.step,
            "cause": exc.type_name,
            "message": exc.message,
            "traceback": exc.traceback,
            "attempts": exc.attempts,
        }
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ in ("builtins", "replay.errors")
        else (f"{kind.__module__}.{kind.__qualname__}")
    )
    text = "".join(tb_module.format_exception(kind, exc, exc.__traceback__))
    return {"type": name, "message": str(exc), "traceback": text}
