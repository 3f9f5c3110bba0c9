"""Take the screenshots in docs/images: ``.venv/bin/python -m tests.dashboard.screenshots``.

The same populated dashboard the browser test uses, in Debian's chromium.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.dashboard.shop import LiveDashboard
from tests.dashboard.test_browser import CHROMIUM, CHROMIUM_ARGS


def main(out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with LiveDashboard() as live, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 560})
        page.goto(live.url)
        expect(page.locator("#runs tbody tr")).to_have_count(8)
        page.screenshot(path=out / "dashboard-runs.png")
        page.set_viewport_size({"width": 1100, "height": 900})
        page.goto(f"{live.url}#/runs/{live.ids['failed']}")
        expect(page.locator("#timeline .span-row")).to_have_count(3)
        page.locator("#timeline .span-row").nth(2).click()  # open the charge step's detail
        page.screenshot(path=out / "dashboard-failed-run.png", full_page=True)
        browser.close()
    for name in ("dashboard-runs.png", "dashboard-failed-run.png"):
        print(out / name, (out / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images"))
