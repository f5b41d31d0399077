"""The app's chat in a real browser: headless Chromium driven by Playwright (as test_browser.py).

With the bundled pair at the app's 15 % budget: uploads the issue's clip, asks about the purple
card, then about the yellow one; checks both answers (each the vanilla answer to that question
alone), both turns' token counts, that the follow-up's largest chunk is the yellow card's, and the
"how the budget moved" chart with one line per turn; saves a full-page screenshot whose path is
printed in the test output.
"""

from __future__ import annotations

import re
import shutil

import pytest

from resadapt.config import ModelConfig, Request
from resadapt.pipeline import load_pipeline
from tests import test_app
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS
from tests.test_chat import PURPLE, VIDEO, YELLOW

url = test_app.url  # its app fixture, serving this module's ``pipeline``

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def pipeline():
    """The bundled pair (test_app's ``url`` fixture serves it)."""
    return load_pipeline(ModelConfig())


@pytest.fixture(scope="module")
def bundled(pipeline):
    return pipeline


def ask(page, question: str, turn: int) -> None:
    """Send ``question`` and wait until its turn is done: its line is in the chart and the
    question box was emptied (what follows a finished turn)."""
    page.locator("#chat-question textarea").fill(question)
    page.locator("#chat-send").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#moved-chart [aria-label]')]"
        f".some(e => e.getAttribute('aria-label').includes('turn: turn {turn}')) && "
        "document.querySelector('#chat-question textarea').value === ''",
        timeout=TIMEOUT_MS,
    )


def test_chat_follow_up_moves_the_budget(url, bundled, tmp_path, capsys):
    playwright = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed: apt-get install -y chromium")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.locator("input[type=file]").first.set_input_files(VIDEO)
            player = page.locator('video[data-testid="Video-player"]')
            player.first.wait_for(timeout=TIMEOUT_MS)  # the upload landed in the video input
            page.wait_for_timeout(1000)  # its change event (a new video: an empty chat) has run
            ask(page, PURPLE, 1)
            ask(page, YELLOW, 2)
            page.locator("#moved-chart svg").first.wait_for(timeout=TIMEOUT_MS)
            chat = page.locator("#chat").inner_text()
            legend = page.locator("#moved-chart").inner_text()
            points = [
                e.get_attribute("aria-label")
                for e in page.locator("#moved-chart [aria-label]").all()
            ]
            page.locator("#chat").scroll_into_view_if_needed()
            shot = tmp_path / "chat.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    with capsys.disabled():
        print(f"\nscreenshot: {shot}")
    answers = re.findall(r"letter\.\s+(\S+)\s+turn \d:", chat)
    want = [
        bundled.ask(VIDEO, Request(question=q, policy="vanilla")).answer for q in (PURPLE, YELLOW)
    ]
    assert answers == want
    spent = re.findall(r"turn (\d): (\d+) of (\d+) visual tokens", chat)
    assert [t for t, *_ in spent] == ["1", "2"]
    for _, used, full in spent:
        assert 0 < int(used) <= 0.15 * int(full)
    second = chat.split("turn 2:", 1)[1]
    assert "largest: chunk 1 (frames 2, 3)" in second
    assert "largest: chunk 0 (frames 0, 1)" in chat.split("turn 2:", 1)[0]
    assert "turn 1" in legend and "turn 2" in legend
    assert any("turn: turn 1" in (p or "") for p in points)
    assert shot.stat().st_size > 10_000
