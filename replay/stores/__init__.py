"""Stores: where runs and journals live. ``open_store(url)`` picks one by URL scheme."""

from __future__ import annotations

import importlib

from replay.stores.base import Store

__all__ = ("Store", "open_store")

# scheme -> (module, class); imported only when used, so optional drivers stay optional.
_BACKENDS = {
    "memory": ("replay.stores.memory", "MemoryStore"),
    "sqlite": ("replay.stores.sqlite", "SqliteStore"),
    "postgresql": ("replay.stores.postgres", "PostgresStore"),
    "postgres": ("replay.stores.postgres", "PostgresStore"),
}
# scheme -> (the driver it imports, the extra that installs it)
_DRIVERS = {"postgresql": ("asyncpg", "postgresql"), "postgres": ("asyncpg", "postgresql")}


def open_store(url: str) -> Store:
    """A store for ``url``, not yet opened.

    Raises:
        ValueError: the URL's scheme names no known store.
        ImportError: the store's driver is not installed (the message names the extra).
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"a store URL looks like memory:// or sqlite:///path, got {url!r}")
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in _BACKENDS:
        known = ", ".join(f"{s}://" for s in sorted(_BACKENDS))
        raise ValueError(f"unknown store {url!r}: replay knows {known}")
    module_name, class_name = _BACKENDS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        driver, extra = _DRIVERS.get(scheme, ("", ""))
        if not driver or exc.name != driver:
            raise
        raise ImportError(
            f"the {scheme}:// store needs {driver}, which is not installed: pip install 'replay[{extra}]'"
        ) from exc
    cls = getattr(module, class_name)
    store: Store = cls(url)
    return store
