"""The public API is curated: exported, importable, sorted and documented.

After anyio's tests/test_all_attributes.py. A public name is one in a public
module's namespace that does not start with ``_``, is not a submodule, and is
defined in replay (so ``typing.Any`` imported by ``replay.testing`` is not one);
each must be in the module's ``__all__``, and each name in ``__all__`` must be
importable from the module and carry a docstring of its own.
"""

from __future__ import annotations

import importlib
import inspect
import types
from typing import Any

import pytest

import replay
import replay.testing
from replay.app import App, RunHandle
from replay.context import Context
from replay.testing import TestEnv

MODULES = (replay, replay.testing)
DOCUMENTED_CLASSES = (App, Context, RunHandle, TestEnv)


def own_doc(obj: Any) -> str | None:
    """The object's own docstring: for a class, not one inherited from a base."""
    doc = vars(obj).get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return doc.strip() if isinstance(doc, str) and doc.strip() else None


def public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and not isinstance(obj, types.ModuleType)
        and str(getattr(obj, "__module__", None)).split(".")[0] == "replay"
    }


def exported() -> list[tuple[str, str]]:
    return [(module.__name__, name) for module in MODULES for name in module.__all__]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_all_is_a_sorted_tuple_without_duplicates(module: types.ModuleType) -> None:
    assert isinstance(module.__all__, tuple)
    assert len(set(module.__all__)) == len(module.__all__), "duplicates in __all__"
    assert list(module.__all__) == sorted(module.__all__)


@pytest.mark.parametrize(("module_name", "name"), exported())
def test_every_exported_name_is_importable_and_documented(module_name: str, name: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"from {module_name} import {name}", namespace)  # as users import it
    obj = namespace[name]
    assert obj is getattr(importlib.import_module(module_name), name)
    assert own_doc(obj), f"{module_name}.{name} has no docstring"


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_nothing_public_is_missing_from_all(module: types.ModuleType) -> None:
    missing = public_names(module) - set(module.__all__)
    assert not missing, f"public in {module.__name__} but not in its __all__: {sorted(missing)}"


@pytest.mark.parametrize("cls", DOCUMENTED_CLASSES, ids=lambda c: c.__name__)
def test_every_public_method_has_a_docstring(cls: type) -> None:
    members = {
        name: member
        for name, member in vars(cls).items()
        if not name.startswith("_")
        and isinstance(member, types.FunctionType | property | staticmethod | classmethod)
    }
    assert members, f"{cls.__name__} shows no public methods"
    undocumented = sorted(name for name, member in members.items() if not own_doc(member))
    assert not undocumented, f"{cls.__name__} methods without a docstring: {undocumented}"


def test_the_lazy_export_is_an_export_too() -> None:
    # StoreConformance is loaded on first access, so that importing
    # replay.testing does not import pytest; it must still be listed and work.
    assert "StoreConformance" in replay.testing.__all__
    assert inspect.isclass(replay.testing.StoreConformance)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        replay.testing.nope  # noqa: B018
