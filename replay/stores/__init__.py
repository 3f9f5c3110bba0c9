"""Stores: where runs and journals live. ``open_store(url)`` picks one by URL scheme."""

from __future__ import annotations

import importlib

from replay.stores.base import Store

__all__ = ("Store", "open_store")

# scheme -> (module, class); imported only when used, so optional drivers stay optional.
_BACKENDS = {
    "memory": ("replay.stores.memory", "MemoryStore"),
    "sqlite": ("replay.stores.sqlite", "SqliteStore"),
}


def open_store(url: str) -> Store:
    """A store for ``url``, not yet opened.

    Raises:
        ValueError: the URL's scheme names no known store.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"a store URL looks like memory:// or sqlite:///path, got {url!r}")
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in _BACKENDS:
        known = ", ".join(f"{s}://" for s in sorted(_BACKENDS))
        raise ValueError(f"unknown store {url!r}: replay knows {known}")
    module_name, class_name = _BACKENDS[scheme]
    cls = getattr(importlib.import_module(module_name), class_name)
    store: Store = cls(url)
    return store
