"""The console for a person: keyboard only, every control labelled, 1280×800 and a phone-sized
screen without sideways scrolling, and dark mode — in Chromium, on ``conveyor demo --console``
(the one command a new user runs; its broker is the embedded one)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.console.conftest import ROOT, Process, free_port, shoot

UNLABELLED = """() => Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea, button'))
    .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
    .map((el) => el.outerHTML)"""
OVERFLOW = "() => document.documentElement.scrollWidth - window.innerWidth"
LUMINANCE = """(prop) => {
    const [r, g, b] = getComputedStyle(document.body)[prop].match(/\\d+/g).map(Number);
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
}"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    process = Process(["demo", "--jobs", "60", "--console", "--console-port", str(port)],
                      {**env, "PYTHONPATH": str(ROOT)}, tmp_path_factory.mktemp("demo"), "demo")
    try:
        process.wait_for("listening on")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


def open_page(browser: Browser, width: int = 1280, height: int = 800, scheme: str = "light") -> Page:
    context = browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme)  # type: ignore[arg-type]
    page = context.new_page()
    page.set_default_timeout(15_000)
    return page


def first_entry(page: Page, demo: str) -> str:
    page.goto(demo + "/dead-letters?reason=permanent")
    href = page.locator("a.row-link").first.get_attribute("href")
    assert href
    return demo + href


def test_keyboard_alone_reaches_every_page_and_row(browser: Browser, demo: str) -> None:
    page = open_page(browser)
    try:
        page.goto(demo + "/")
        page.keyboard.press("Tab")
        expect(page.locator(":focus")).to_have_text("Skip to content")
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.id") == "main"
        page.keyboard.press("g")
        page.keyboard.press("d")
        page.wait_for_url("**/dead-letters")
        page.keyboard.press("j")
        page.keyboard.press("j")
        page.keyboard.press("k")
        first = page.locator("#entries tbody tr").first
        expect(first).to_have_class("current")
        expect(first.locator("a.row-link")).to_be_focused()
        page.keyboard.press("/")
        expect(page.locator("#f-reason")).to_be_focused()
        page.keyboard.press("Tab")  # typing in a field is typing, not a shortcut
        page.keyboard.press("j")
        expect(page.locator("#f-job_type")).to_have_value("j")
        page.locator("#f-job_type").fill("")
        page.locator("a.row-link").first.focus()
        page.keyboard.press("Enter")
        page.wait_for_url("**/dead-letters/conveyor.default/**")
        expect(page.locator("#entry-reason")).to_be_visible()
        for _ in range(40):  # the edit form is reachable with Tab
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") in ("edit-payload", "replay-one"):
                break
        else:
            raise AssertionError("Tab never reached the entry's actions")
    finally:
        page.context.close()


def test_every_control_has_a_label(browser: Browser, demo: str) -> None:
    page = open_page(browser)
    try:
        for url in (demo + "/", demo + "/dead-letters", first_entry(page, demo)):
            page.goto(url)
            assert page.evaluate(UNLABELLED) == [], url
        page.goto(demo + "/dead-letters")
        page.get_by_role("button", name="Purge all matching…").click()
        assert page.evaluate(UNLABELLED) == []
        expect(page.get_by_label("Type purge to confirm")).to_be_visible()
    finally:
        page.context.close()


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (390, 844)])
def test_no_sideways_scrolling(browser: Browser, demo: str, width: int, height: int) -> None:
    page = open_page(browser, width, height)
    try:
        for name, url in (("overview", demo + "/"), ("dead-letters", demo + "/dead-letters"),
                          ("dead-letter", first_entry(page, demo))):
            page.goto(url)
            assert page.evaluate(OVERFLOW) <= 0, f"{name} scrolls sideways at {width}×{height}"
            if width < 500:
                shoot(page, f"narrow-{name}")
            elif name != "dead-letters":
                page.wait_for_timeout(1500 if name == "overview" else 0)  # a few samples for the chart
                shoot(page, f"demo-{name}")
    finally:
        page.context.close()


def test_dark_mode_follows_the_browser(browser: Browser, demo: str) -> None:
    for scheme in ("dark", "light"):
        page = open_page(browser, scheme=scheme)
        try:
            page.goto(first_entry(page, demo))
            background, text = page.evaluate(LUMINANCE, "backgroundColor"), page.evaluate(LUMINANCE, "color")
            if scheme == "dark":
                assert background < 0.15 and text > 0.8
                shoot(page, "dark-dead-letter")
                page.goto(demo + "/")
                shoot(page, "dark-overview")
            else:
                assert background > 0.9 and text < 0.2
        finally:
            page.context.close()
