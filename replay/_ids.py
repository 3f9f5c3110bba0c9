"""Ids for runs and events that sort by when they were made.

A run's journal rows are keyed by its id, in SQLite and in PostgreSQL alike.
With purely random ids (UUID version 4), runs started together land all over
the journal's B-tree: once the store holds a few thousand runs, each group
commit of a couple of hundred steps writes a couple of hundred pages, and W1
on such a store ran at half its speed on a fresh one. Ids that begin with the
time keep the runs hot now side by side at the tree's edge, where a commit
touches a few pages however big the store grows.

The layout is that of a UUID version 7 (RFC 9562), written as 32 hex digits
like ``uuid4().hex``: 48 bits of Unix time in milliseconds, then the version,
74 random bits and the variant. Ids of one millisecond are in random order.
Python's ``uuid`` module has no version 7 before 3.14.
"""

from __future__ import annotations

import os
import time

__all__ = ("new_id",)

_RAND_B = (1 << 62) - 1


def new_id() -> str:
    """A new random id, 32 hex digits, that sorts after the ids made in earlier milliseconds."""
    return _id_at(time.time_ns() // 1_000_000, int.from_bytes(os.urandom(10), "big"))


def _id_at(ms: int, rand: int) -> str:
    """The id of millisecond ``ms`` (48 bits) with the random bits of ``rand`` (80 bits, 74 used)."""
    rand_a = (rand >> 64) & 0xFFF
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand & _RAND_B
    return f"{value:032x}"
