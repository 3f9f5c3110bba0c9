"""Hypothesis strategies for property tests of your own workflows.

``json_values`` draws values that survive the journal unchanged (so a step may
return them and a replayed run sees the same), ``event_data`` draws event
payloads, ``delays`` draws durations for sleeps and timeouts. Needs hypothesis
(``pip install 'replay[testing]'``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("replay.testing.strategies needs hypothesis: pip install 'replay[testing]'") from exc

__all__ = ("delays", "event_data", "json_values")

_INT64 = 2**63 - 1


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """JSON values that read back from the journal equal to what was written.

    Strings, 64-bit integers, finite floats, booleans, None, lists, and dicts
    with string keys; no tuples (they read back as lists) and no NaN.
    """
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-_INT64, max_value=_INT64),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.dictionaries(st.text(max_size=10), children, max_size=5),
        ),
        max_leaves=max_leaves,
    )


def event_data(max_leaves: int = 10) -> st.SearchStrategy[dict[str, Any]]:
    """Event payloads: dicts with string keys and ``json_values`` inside."""
    return st.dictionaries(st.text(max_size=10), json_values(max_leaves), max_size=5)


def delays(max_delay: timedelta = timedelta(days=30)) -> st.SearchStrategy[timedelta]:
    """Durations from zero to ``max_delay``, in whole milliseconds."""
    return st.integers(min_value=0, max_value=int(max_delay.total_seconds() * 1000)).map(
        lambda ms: timedelta(milliseconds=ms)
    )
