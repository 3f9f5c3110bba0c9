"""The page itself, in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

The dashboard runs under uvicorn on a free loopback port, with a token, so the
test also walks the browser's side of the token: the first load with
``?token=`` trades it for the cookie the page's API calls then carry.

Without chromium or playwright the test skips with the reason, except in CI
(``CI=true``), where it fails: there ``tests/run`` must have installed them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard import shop
from tests.dashboard.shop import LiveDashboard, app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "browser-token"


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (bash tests/run installs it with the dev extra)"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (Debian: apt-get install chromium; bash tests/run does it as root)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser test must run in CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def live() -> Iterator[LiveDashboard]:
    with LiveDashboard(token=TOKEN) as dashboard:
        yield dashboard


@pytest.fixture
def page(browser: Any, live: LiveDashboard) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live.url}?token={TOKEN}")  # sets the cookie, then drops the token from the URL
    assert "token=" not in page.url
    yield page
    context.close()
    assert errors == [], f"the page raised: {errors}"


def test_the_runs_list_shows_live_counts_and_filters(page: Any, live: LiveDashboard) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#runs tbody tr")).to_have_count(8)
    expect(page.locator('.count[data-status="failed"] b')).to_have_text("2")
    expect(page.locator('.count[data-status="suspended"] b')).to_have_text("2")
    page.select_option("#filter-status", "failed")
    expect(page.locator("#runs tbody tr")).to_have_count(2)
    expect(page.locator('#runs tr[data-run="checkout-declined-7"] td.detail')).to_contain_text(
        "StepFailed: card declined"
    )
    # Live: a change in the store shows up without reloading the page.
    live.call(app.cancel(live.ids["other_suspended"]))
    page.select_option("#filter-status", "")
    expect(page.locator('.count[data-status="cancelled"] b')).to_have_text("1")


def test_a_failed_run_shows_its_error_and_its_timeline(page: Any, live: LiveDashboard) -> None:
    from playwright.sync_api import expect

    page.click('a[href="#/runs/checkout-declined-7"]')
    expect(page.locator("#run-status")).to_have_text("failed")
    expect(page.locator("#run-error-message")).to_contain_text(
        "step charge failed after 3 attempt(s): ConnectionRefusedError: card declined for declined-7"
    )
    expect(page.locator("#run-error-traceback")).to_contain_text("raise ConnectionRefusedError")
    expect(page.locator("#run-input")).to_contain_text("declined-7")
    rows = page.locator("#timeline .span-row")
    expect(rows).to_have_count(3)
    charge = rows.nth(2)
    expect(charge).to_contain_text("charge")
    expect(charge).to_contain_text("3 failed attempts")
    expect(charge.locator(".bar.bad")).to_have_count(3)
    expect(charge.locator(".bar.retry")).to_have_count(2)
    expect(rows.nth(1).locator(".bar.timer")).to_have_count(1)
    expect(page.locator("#cancel-btn")).to_be_disabled()
    expect(page.locator("#retry-btn")).to_be_enabled()


def test_retry_after_the_fix_runs_the_failed_step_again_and_completes(page: Any, live: LiveDashboard) -> None:
    from playwright.sync_api import expect

    source = live.ids["failed"]
    page.goto(f"{live.url}#/runs/{source}")
    expect(page.locator("#run-status")).to_have_text("failed")
    order = source.removeprefix("checkout-")
    shop.approved.add(order)  # the card works now
    try:
        page.on("dialog", lambda dialog: dialog.accept())
        page.click("#retry-btn")
        expect(page.locator("#run-title")).to_have_text(f"{source}-retry-1")
        expect(page.locator("#run-status")).to_have_text("completed", timeout=15_000)
        expect(page.locator("#run-output")).to_contain_text("receipt-")
    finally:
        shop.approved.discard(order)


def test_cancel_after_confirming_cancels_a_suspended_run(page: Any, live: LiveDashboard) -> None:
    from playwright.sync_api import expect

    run_id = live.ids["suspended"]
    page.goto(f"{live.url}#/runs/{run_id}")
    expect(page.locator("#run-status")).to_have_text("suspended")
    wait = page.locator('#timeline .span-row[data-kind="wait"]')
    expect(wait).to_contain_text("order.shipped")
    expect(wait).to_contain_text("waiting")

    questions: list[str] = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
    page.click("#cancel-btn")
    expect(page.locator("#run-status")).to_have_text("suspended")
    assert questions and run_id in questions[0]  # dismissed: nothing was sent

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-btn")
    expect(page.locator("#flash")).to_contain_text("Cancellation requested")
    expect(page.locator("#run-status")).to_have_text("cancelled")
    assert live.call(app.get_run(run_id).status()) == "cancelled"
    assert live.call(app.get_run(live.ids["other_suspended"]).status()) == "suspended"


def test_fork_asks_for_a_step_then_opens_the_new_run(page: Any, live: LiveDashboard) -> None:
    from playwright.sync_api import expect

    source = live.ids["failed"]
    page.goto(f"{live.url}#/runs/{source}")
    expect(page.locator("#run-status")).to_have_text("failed")
    asked: list[tuple[str, str]] = []

    def answer(dialog: Any) -> None:
        asked.append((dialog.type, dialog.default_value))
        dialog.accept("2") if dialog.type == "prompt" else dialog.accept()

    page.on("dialog", answer)
    page.click("#fork-btn")
    expect(page.locator("#flash")).to_contain_text(f"Forked {source} from step 2")
    expect(page.locator("#run-title")).not_to_have_text(source)
    assert asked == [("prompt", "2"), ("confirm", "")]  # the failed step is proposed
    new_id = page.locator("#run-title").text_content()
    journal = live.call(app.get_run(new_id).journal())
    assert journal[0].data["forked_from"] == {"run_id": source, "step": 2}
