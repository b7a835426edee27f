"""A person's path through the app in headless Debian chromium (Playwright's Python package, never
`playwright install`): upload, compare, explain, every tab, screenshots saved under artifacts/screenshots."""

import os
import shutil
from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
EXAMPLE = sorted(str(p.resolve()) for p in Path("examples/linked-star").glob("*.png"))
SHOTS = Path(os.environ.get("SAM_SCREENSHOTS", "artifacts/screenshots"))
TABS = ("Guidance maps", "Attention explorer", "Token attribution", "Alignment", "Report")


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        yield browser
        browser.close()


def textbox_value(page, label: str) -> str:
    return page.get_by_label(label, exact=True).input_value()


def rendered_images(page) -> int:
    """How many visible <img> elements in the selected tab have actually decoded pixels."""
    return page.evaluate(
        """() => [...document.querySelectorAll('[role=tabpanel] img')]
               .filter(img => img.offsetParent !== null && img.complete && img.naturalWidth > 0).length"""
    )


def test_upload_compare_explain_and_open_every_tab(browser, app_url):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(app_url)
    page.get_by_text("SAM studio").first.wait_for()
    page.locator("input[type=file]").first.set_input_files(EXAMPLE)
    page.wait_for_function("() => document.querySelectorAll('img').length >= 3")
    page.get_by_role("button", name="Compare SAM with the baseline").click()
    page.wait_for_function(
        """() => [...document.querySelectorAll('textarea')].filter(t => t.value.trim().length > 0).length >= 2""",
        timeout=60_000,
    )
    assert textbox_value(page, "SAM (guided)").strip() and textbox_value(page, "Baseline (each image alone)").strip()
    page.screenshot(path=SHOTS / "compare.png", full_page=True)

    page.get_by_role("button", name="Explain the difference").click()
    page.get_by_role("tab", name="Guidance maps").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[role=tabpanel] img')].some(i => i.naturalWidth > 0)", timeout=120_000
    )
    for tab in TABS:
        page.get_by_role("tab", name=tab).click()
        page.wait_for_timeout(500)
        if tab == "Report":
            page.screenshot(path=SHOTS / "tab-report.png", full_page=True)
            page.wait_for_function("() => document.body.innerText.includes('sam_report')", timeout=10_000)
        else:
            assert rendered_images(page) >= 1, f"no figure rendered in {tab}"
        page.screenshot(path=SHOTS / f"tab-{tab.lower().replace(' ', '-')}.png", full_page=True)
    assert "Traceback" not in page.content()


def test_bad_upload_shows_a_message_not_a_traceback(browser, app_url, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(app_url)
    page.locator("input[type=file]").first.set_input_files([EXAMPLE[0], str(fake)])
    page.wait_for_timeout(1500)
    page.get_by_role("button", name="Compare SAM with the baseline").click()
    page.get_by_text("not a readable image").first.wait_for(timeout=30_000)
    assert "Traceback" not in page.content()
    page.screenshot(path=SHOTS / "bad-upload.png")


def test_usable_at_phone_width(browser, app_url):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(app_url)
    page.get_by_role("button", name="Compare SAM with the baseline").wait_for()
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 2
    page.screenshot(path=SHOTS / "phone.png", full_page=True)


def test_reorder_and_remove_images(browser, app_url):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(app_url)
    page.locator("input[type=file]").first.set_input_files(EXAMPLE)
    page.wait_for_function("() => document.querySelectorAll('img').length >= 3")
    names = lambda: page.evaluate(  # noqa: E731
        "() => [...document.querySelectorAll('.grid-container img, [data-testid=gallery] img')].map(i => i.src.split('/').pop())"
    )
    before = names()
    page.locator("button.thumbnail-item, .thumbnail-item").nth(1).click()
    page.get_by_role("button", name="◀ Move selected earlier").click()
    page.wait_for_timeout(1500)
    after = names()
    assert after[0].endswith("2.png") and after[1].endswith("1.png"), (before, after)
    page.get_by_role("button", name="Remove selected").click()
    page.wait_for_timeout(1500)
    assert len(names()) == 2


def test_clicking_an_example_fills_the_inputs_and_both_answers(browser, app_url):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(app_url)
    page.get_by_text("Storytelling").last.wait_for()
    page.locator("table tbody tr, .examples-table tr, button.gallery-item, [data-testid=examples] tr").last.click()
    for _ in range(120):
        if textbox_value(page, "SAM (guided)").strip():
            break
        page.wait_for_timeout(500)
    assert textbox_value(page, "Caption of image 1").strip()  # the storytelling example fills its captions
    assert textbox_value(page, "SAM (guided)").strip() and textbox_value(page, "Baseline (each image alone)").strip()
    page.screenshot(path=SHOTS / "example.png", full_page=True)
