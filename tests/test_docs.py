"""Every Python example in docs/ runs, so the docs cannot drift from the code.

Each page's fenced ```python blocks run in order in one namespace, as one script
would: ``__name__`` is ``"__main__"``, so an ``if __name__ == "__main__":`` block
runs too. Then every ``async def test_*`` the page defined runs, in the order the
page defined them, each under its own ``asyncio.run``. Tracebacks point at the
line of the page itself. Sync ``test_*`` functions (hypothesis properties) run
too, and a test that takes the ``replay_env`` fixture gets a ``TestEnv`` of the
page's ``app``.

A page that defines a ``StoreConformance`` subclass (docs/testing.md shows how a
third-party store reuses the suite) also gets that class collected here, so its
cases run as real pytest cases.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from replay.testing import StoreConformance, TestEnv

DOCS = Path(__file__).parent.parent / "docs"
PAGES = tuple(sorted(path.name for path in DOCS.glob("*.md")))
# Pages that teach by example: each must show (and so test) at least a few tests.
TEACHING_PAGES = ("tutorial.md", "testing.md")
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(page: str) -> list[tuple[int, str]]:
    """The page's ```python blocks, each with the line (0-based) its code starts on."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)), m.group(1)) for m in FENCE.finditer(text)]


def exec_page(page: str, module_name: str) -> dict[str, Any]:
    """Run the page's blocks in order in one fresh namespace and return it."""
    namespace: dict[str, Any] = {"__name__": module_name}
    for line, code in python_blocks(page):
        # Padding keeps line numbers in tracebacks equal to the page's own.
        compiled = compile("\n" * line + code, str(DOCS / page), "exec")
        exec(compiled, namespace)
    return namespace


def page_tests(namespace: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        (name, fn) for name, fn in namespace.items() if name.startswith("test_") and inspect.isfunction(fn)
    ]


async def run_with_fixture(namespace: dict[str, Any], fn: Any) -> None:
    """A test that takes the ``replay_env`` fixture gets a TestEnv of the page's ``app``."""
    async with TestEnv(namespace["app"]) as env:
        await fn(env)


@pytest.mark.parametrize("page", PAGES)
def test_the_examples_of_a_page_run(page: str) -> None:
    namespace = exec_page(page, "__main__")
    for name, fn in page_tests(namespace):
        try:
            if not inspect.iscoroutinefunction(fn):
                fn()  # a sync test, such as a hypothesis property
            elif "replay_env" in inspect.signature(fn).parameters:
                asyncio.run(run_with_fixture(namespace, fn))
            else:
                asyncio.run(fn())
        except BaseException as exc:
            exc.add_note(f"in {name}, defined by docs/{page}")
            raise


@pytest.mark.parametrize("page", TEACHING_PAGES)
def test_a_teaching_page_tests_what_it_shows(page: str) -> None:
    assert page in PAGES, f"docs/{page} is missing"
    assert len(page_tests(exec_page(page, "docs_example"))) >= 3


def test_the_fence_finder_sees_every_python_block() -> None:
    for page in PAGES:
        text = (DOCS / page).read_text(encoding="utf-8")
        opened = len(re.findall(r"^```python", text, re.MULTILINE))
        assert len(python_blocks(page)) == opened, page


def _conformance_classes() -> dict[str, type[StoreConformance]]:
    """StoreConformance subclasses the pages define, to be collected as pytest classes."""
    found: dict[str, type[StoreConformance]] = {}
    for page in PAGES:
        try:
            namespace = exec_page(page, f"docs.{Path(page).stem}")
        except Exception:  # noqa: BLE001 - test_the_examples_of_a_page_run reports it
            continue
        for name, obj in namespace.items():
            if (
                name.startswith("Test")
                and isinstance(obj, type)
                and issubclass(obj, StoreConformance)
                and obj is not StoreConformance
            ):
                found[f"{name}FromDocs"] = obj
    return found


globals().update(_conformance_classes())
