"""A researcher's path through the "Evaluate a dataset" tab in headless Debian chromium: evaluate 24 MiniLINK
samples, keep those SAM got right and the baseline wrong, open one, explain it in the main view; at desktop
and at phone width. Screenshots go to artifacts/screenshots (evaluate-*.png)."""

import re

import pytest
from test_browser import SHOTS, browser  # noqa: F401  (the shared chromium fixture)

playwright = pytest.importorskip("playwright.sync_api")
SAM_RIGHT = "SAM right, baseline wrong"


def run_evaluation(page, app_url: str, samples: int) -> None:
    page.goto(app_url)
    page.get_by_role("tab", name="Evaluate a dataset").click()
    page.get_by_label("number input for Samples").fill(str(samples))
    page.get_by_label("number input for Samples").press("Enter")
    page.get_by_role("button", name="Run the evaluation").click()
    page.get_by_text(f"Evaluated {samples} samples").wait_for(timeout=120_000)
    page.get_by_text(f"{samples} of {samples} samples pass the filters").wait_for(timeout=30_000)
    page.wait_for_function("() => !document.querySelector('.eta-bar, .progress-text')", timeout=30_000)


def test_evaluate_filter_open_and_explain_a_sample(browser, app_url):  # noqa: F811
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    run_evaluation(page, app_url, 24)
    page.get_by_text("python -m sam_core.evaluate --data minilink --size 24").wait_for()
    page.screenshot(path=SHOTS / "evaluate-run.png", full_page=True)

    page.get_by_label("Who is right").click()
    page.get_by_role("option", name=SAM_RIGHT).click()
    page.wait_for_function(  # the filtered count, not the one before it nor a progress timer shown meanwhile
        "() => { const t = document.querySelector('#evaluation-count').innerText.trim();"
        " return /^\\d+ of 24 samples pass the filters/.test(t) && !t.startsWith('24 of 24'); }")
    note = page.locator("#evaluation-count").inner_text()
    assert re.match(r"[1-9]\d* of 24 samples pass the filters", note), note
    table = page.locator("#evaluation-table-samples [role=grid]")
    assert table.get_attribute("aria-rowcount") == str(int(note.split()[0]) + 1)  # the header and one row per sample
    rows = [text for text in table.locator("[role=row]").all_inner_texts() if re.search(r"\b2-\d+\b", text)]  # ids
    assert rows and all(SAM_RIGHT in text for text in rows), rows

    page.locator("#evaluation-samples .thumbnail-item").first.click()
    page.get_by_text(re.compile(rf"Sample 2-\d+ · .* · {SAM_RIGHT}")).wait_for(timeout=10_000)
    sam, baseline = (page.get_by_label(label, exact=True).input_value() for label in ("SAM", "Baseline"))
    reference = page.get_by_label("Reference", exact=True).input_value()
    assert sam and sam != baseline and reference
    page.screenshot(path=SHOTS / "evaluate-sample.png", full_page=True)

    page.get_by_role("tab", name="Where guidance helps").click()
    for title in ("By number of images", "By task", "By where the guidance weights α point", "Alignment of the visual tokens"):
        page.get_by_role("heading", name=title).scroll_into_view_if_needed()  # figures load as they come into view
        page.wait_for_timeout(300)
    page.wait_for_function("() => [...document.querySelectorAll('img')].filter(i => i.naturalWidth >= 400).length >= 5")
    page.screenshot(path=SHOTS / "evaluate-views.png", full_page=True)

    page.get_by_role("tab", name="Samples").click()
    page.get_by_role("button", name="Open in the main view and explain").click()
    page.get_by_role("tab", name="Compare and explain", selected=True).wait_for()
    page.get_by_text("from the dataset evaluation").wait_for()
    page.wait_for_function(  # Explain's figures (MiniLINK pictures are 64 px, the figures hundreds)
        """() => [...document.querySelectorAll('img')].some(i => i.offsetParent !== null && i.naturalWidth >= 400)""",
        timeout=120_000,
    )
    page.wait_for_function("() => !document.querySelector('.eta-bar, .progress-text')", timeout=60_000)
    assert page.get_by_label("SAM (guided)", exact=True).input_value().strip() == sam
    page.screenshot(path=SHOTS / "evaluate-explain.png", full_page=True)
    assert "Traceback" not in page.content()


def test_the_tab_fits_a_phone(browser, app_url):  # noqa: F811
    page = browser.new_page(viewport={"width": 390, "height": 844})
    run_evaluation(page, app_url, 24)
    page.locator("#evaluation-samples").scroll_into_view_if_needed()
    page.wait_for_function("() => [...document.querySelectorAll('#evaluation-samples img')].some(i => i.naturalWidth > 0)")
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 2
    page.screenshot(path=SHOTS / "evaluate-phone.png", full_page=True)
