"""A visitor's journeys through the app in headless Debian chromium (Playwright's Python package, never
`playwright install`), at 1440×900 and at phone width (390×844). Screenshots go to artifacts/screenshots."""

import os
import shutil
from pathlib import Path

import pytest
from matplotlib import cbook

from app.examples import load_examples, outcome

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
EXAMPLE = sorted(str(p.resolve()) for p in Path("tests/data/minilink-3").glob("*.png"))
PHOTO = str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
EXAMPLES = load_examples()
SHAPES = EXAMPLES[0].images  # MiniLINK images the model knows
SHOTS = Path(os.environ.get("SAM_SCREENSHOTS", "artifacts/screenshots"))
DESKTOP, PHONE = {"width": 1440, "height": 900}, {"width": 390, "height": 844}
TABS = ("Guidance", "Attention", "Tokens", "Alignment", "Report")
SAM, BASELINE = "SAM (guided)", "Baseline (each image alone)"
VISIBLE_FIGURES = "() => [...document.querySelectorAll('#views [role=tabpanel] img')].filter(i => i.offsetParent).map(i => i.src)"


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        yield browser
        browser.close()


def open_app(browser, app_url, viewport=DESKTOP):
    page = browser.new_page(viewport=viewport)
    page.goto(app_url)
    page.get_by_role("button", name="Compare SAM with the baseline").wait_for()
    page.wait_for_function("() => (document.querySelector('#examples button')?.innerText || '').trim().length > 0")
    return page


def answer(page, label: str) -> str:
    return page.get_by_label(label, exact=True).input_value()


def wait_for_answers(page, timeout=90_000):
    try:
        page.wait_for_function(
        f"""() => ['{SAM}', '{BASELINE}'].every(label => {{
                const box = [...document.querySelectorAll('label')].find(l => l.innerText.trim() === label);
                const area = box && box.parentElement.querySelector('textarea');
                return area && area.value.trim().length > 0; }})""",
            timeout=timeout,
        )
    except Exception:
        page.screenshot(path=SHOTS / "failed-waiting-for-answers.png", full_page=True)
        raise AssertionError(page.evaluate("() => document.body.innerText")) from None


def wait_for_no_answers(page, timeout=10_000):
    page.wait_for_function("() => [...document.querySelectorAll('textarea.scroll-hide, .answer textarea')]"
                           ".every(t => t.value.trim() === '')", timeout=timeout)


def visible_figures(page) -> int:
    """Figures with decoded pixels in the tab on show."""
    return page.evaluate(
        """() => [...document.querySelectorAll('#views [role=tabpanel] img')]
               .filter(img => img.offsetParent !== null && img.complete && img.naturalWidth > 0).length"""
    )


def load_example(page, index: int):
    """Click an example and wait for its reference and its final answers (the answer cost shows when they are)."""
    page.locator("#examples button").nth(index).click()
    page.wait_for_function("(shows) => document.querySelector('#reference').innerText.includes(shows)",
                           arg=EXAMPLES[index].shows, timeout=30_000)
    page.wait_for_function("() => document.querySelector('#stats').innerText.includes('Both answers')", timeout=90_000)


def explain(page):
    page.get_by_role("button", name="Explain the difference").click()
    page.wait_for_function("() => document.querySelector('#views').innerText.includes('Explaining')", timeout=10_000)
    page.wait_for_function("() => [...document.querySelectorAll('#views img')].some(i => i.offsetParent && i.naturalWidth > 0)",
                           timeout=180_000)


def compare(page):
    page.get_by_role("button", name="Compare SAM with the baseline").click()
    wait_for_answers(page)
    page.wait_for_function("() => document.querySelector('#stats').innerText.includes('Both answers')", timeout=90_000)


def text_of(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def test_real_photos_get_an_out_of_domain_notice(browser, app_url):
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page = open_app(browser, app_url, viewport)
        assert "knows only MiniLINK" in text_of(page, "#banner")  # the model notice, at the top, not folded away
        page.locator("#gallery input[type=file]").set_input_files([PHOTO, *SHAPES[:2]])
        page.wait_for_function("() => document.querySelector('#domain-warning').innerText.includes('Image 1')", timeout=30_000)
        compare(page)
        assert "Image 1 looks unlike what this model was trained on" in text_of(page, "#domain-warning")
        explain(page)
        assert "Image 1" in text_of(page, "#explain-note")  # the views say it too
        page.screenshot(path=SHOTS / f"photo-{name}.png", full_page=True)
        page.close()


def test_every_change_of_images_or_task_clears_what_belonged_to_the_old_ones(browser, app_url):
    page = open_app(browser, app_url)
    load_example(page, 0)
    assert EXAMPLES[0].reference in text_of(page, "#reference")
    page.get_by_role("button", name="Explain the difference").click()
    for _ in range(5):  # Explain's progress does not blank the answers
        assert answer(page, SAM).strip() and answer(page, BASELINE).strip()
        page.wait_for_timeout(100)
    page.wait_for_function("() => [...document.querySelectorAll('#views img')].some(i => i.offsetParent && i.naturalWidth > 0)",
                           timeout=180_000)
    def upload():
        page.locator("#gallery input[type=file]").set_input_files(EXAMPLE)
        page.wait_for_function("(count) => document.querySelectorAll('#gallery .thumbnail-lg img').length === count", arg=len(EXAMPLE))

    changes = {  # name: (the change, whether there are answers to clear before it)
        "random set": (lambda: page.get_by_role("button", name="New random MiniLINK set").click(), True),
        "task": (lambda: page.get_by_role("radio", name="Storytelling").check(), True),
        "remove all": (lambda: page.get_by_role("button", name="Remove all").click(), True),
        "upload": (upload, False),
        "reorder": (lambda: (page.locator("#gallery .thumbnail-item").nth(1).click(),
                             page.get_by_role("button", name="◀ Earlier").click()), True),
        "remove": (lambda: (page.locator("#gallery .thumbnail-item").nth(0).click(),
                            page.get_by_role("button", name="Remove", exact=True).click()), True),
    }
    for name, (change, answered) in changes.items():
        if answered and name != "random set":
            page.get_by_role("radio", name="Group captioning").check()
            page.wait_for_timeout(500)  # a person's pace: a change's cancel must not meet the Compare clicked after it
            compare(page)
        change()
        wait_for_no_answers(page)
        assert visible_figures(page) == 0, name
        reference = text_of(page, "#reference")
        assert ("A new random MiniLINK set" in reference) if name == "random set" else EXAMPLES[0].reference not in reference
    load_example(page, 1)  # an example brings its own reference
    assert EXAMPLES[1].reference in text_of(page, "#reference") and visible_figures(page) == 0
    page.screenshot(path=SHOTS / "stale-cleared.png", full_page=True)


def test_examples_show_their_reference_and_stated_outcome(browser, app_url):
    page = open_app(browser, app_url)
    cards = page.locator("#examples button")
    assert cards.count() == len(EXAMPLES)
    for index, example in enumerate(EXAMPLES):
        assert example.shows in cards.nth(index).inner_text()
        load_example(page, index)
        shown = text_of(page, "#reference")
        assert example.reference in shown and example.shows in shown
        measured = {"sam": outcome(answer(page, SAM), example.reference), "baseline": outcome(answer(page, BASELINE), example.reference)}
        assert measured == example.outcome, example.name
    page.screenshot(path=SHOTS / "examples.png", full_page=True)


def test_token_picker_updates_every_attribution_view_with_one_numbering(browser, app_url):
    page = open_app(browser, app_url)
    load_example(page, 0)
    explain(page)
    page.get_by_role("tab", name="Tokens").click()
    figures = lambda: page.evaluate(VISIBLE_FIGURES)  # noqa: E731
    before, words_before = figures(), text_of(page, "#word-attribution")
    assert len(before) == 2 and "the whole answer" in words_before
    sam_tokens = answer(page, SAM).split()  # the embedded model's tokens are its words
    page.get_by_label("Attribute: SAM's whole answer or one of its tokens").click()
    options = [text.replace("✓", "").strip() for text in page.locator("ul[role=listbox] li").all_inner_texts()]
    assert options[0] == "whole answer" and options[1].startswith("1: ")  # counted from 1, like the figures
    page.get_by_role("option", name=f"6: {sam_tokens[5]}").click()
    page.wait_for_function(f"() => document.querySelector('#word-attribution').innerText.includes('token 6')", timeout=30_000)
    page.wait_for_function(f"(old) => {{ const now = ({VISIBLE_FIGURES})(); return now.length === 2 && now.every((src, i) => src !== old[i]); }}",
                           arg=before, timeout=30_000)
    words = text_of(page, "#word-attribution")
    assert f"token 6 “{sam_tokens[5]}”" in words and ("baseline" in words)
    page.screenshot(path=SHOTS / "tokens-desktop.png", full_page=True)


def test_at_phone_width_every_tab_is_reachable_and_shows_its_figure(browser, app_url):
    page = open_app(browser, app_url, PHONE)
    assert page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth") <= 2
    page.screenshot(path=SHOTS / "phone-start.png", full_page=True)
    load_example(page, 0)
    overflow = page.evaluate("() => { const grid = document.querySelector('#gallery .grid-container');"
                             " return grid.scrollWidth - grid.clientWidth; }")
    assert overflow <= 1  # every image of the set is in view, none scrolled off to the side
    explain(page)
    for tab in TABS:
        button = page.get_by_role("tab", name=tab)
        assert button.is_visible(), f"{tab} is hidden (in an overflow menu?)"
        button.click()
        page.wait_for_timeout(400)
        if tab == "Report":
            page.get_by_role("button", name="Write the report").click()
            try:
                page.wait_for_function("() => document.querySelector('#views').innerText.includes('sam_report')", timeout=90_000)
            except Exception:
                page.screenshot(path=SHOTS / "failed-report.png", full_page=True)
                raise
        else:
            assert visible_figures(page) >= 1, tab
            width = page.evaluate("() => Math.max(...[...document.querySelectorAll('#views [role=tabpanel] img')]"
                                  ".filter(i => i.offsetParent).map(i => i.getBoundingClientRect().right))")
            assert width <= PHONE["width"], (tab, width)
        page.locator("#views").screenshot(path=SHOTS / f"phone-tab-{tab.lower()}.png")
    assert page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth") <= 2


def test_desktop_tabs(browser, app_url):
    page = open_app(browser, app_url)
    page.screenshot(path=SHOTS / "desktop-start.png")
    load_example(page, 1)
    explain(page)
    for tab in TABS:
        page.get_by_role("tab", name=tab).click()
        page.wait_for_timeout(400)
        if tab == "Report":
            page.get_by_role("button", name="Write the report").click()
            page.wait_for_function("() => document.querySelector('#views').innerText.includes('sam_report')", timeout=90_000)
        else:
            assert visible_figures(page) >= 1, tab
        page.locator("#views").screenshot(path=SHOTS / f"desktop-tab-{tab.lower()}.png")
    assert "Traceback" not in page.content()


def test_the_log_has_no_example_cache_lines(app_server):
    assert "Caching examples" not in app_server.log_path.read_text()  # examples are answered live, not cached


def test_bad_upload_shows_a_message_not_a_traceback(browser, app_url, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    page = open_app(browser, app_url)
    page.locator("#gallery input[type=file]").set_input_files([EXAMPLE[0], str(fake)])
    page.wait_for_timeout(1500)
    page.get_by_role("button", name="Compare SAM with the baseline").click()
    page.get_by_text("not a readable image").first.wait_for(timeout=30_000)
    assert "Traceback" not in page.content()


def test_reorder_and_remove_images(browser, app_url):
    page = open_app(browser, app_url)
    page.locator("#gallery input[type=file]").set_input_files(EXAMPLE)
    page.wait_for_function("() => document.querySelectorAll('#gallery img').length >= 3")
    names = lambda: page.evaluate("() => [...document.querySelectorAll('#gallery .thumbnail-lg img')].map(i => i.src.split('/').pop())")  # noqa: E731
    page.locator("#gallery .thumbnail-item").nth(1).click()
    page.get_by_role("button", name="◀ Earlier").click()
    page.wait_for_timeout(1500)
    after = names()
    assert after[0].endswith("2.png") and after[1].endswith("1.png"), after
    page.get_by_role("button", name="Remove", exact=True).click()
    page.wait_for_timeout(1500)
    assert len(names()) == 2
