"""The app in a real browser: headless Chromium (Debian's package) driven by Playwright.

Loads the page, runs a bundled example with one click (the default policy of a backbone without an
allocator, attention, with its probe cost), waits for the streamed answer and the budget chart,
checks the status lines (what runs, from where, the default policy and why) and the example's
expected answer, and saves a full-page screenshot whose path is printed in the test output.
"""

from __future__ import annotations

import shutil
import socket

import pytest

import app
from resadapt.assets import examples
from resadapt.backbone import Backbone
from resadapt.pipeline import Pipeline

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def url():
    demo = app.build_demo(Pipeline(Backbone.load("tiny-random-qwen2.5-vl")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def test_example_click_shows_answer_and_budget_chart(url, tmp_path, capsys):
    playwright = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed: apt-get install -y chromium")
    example = examples()[1]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            # the examples table shows the question; its first line is unique to the clip
            page.get_by_text(example["question"].splitlines()[0]).first.click(timeout=TIMEOUT_MS)
            page.wait_for_function(
                "() => document.querySelector('#summary')?.innerText.includes('total')",
                timeout=TIMEOUT_MS,
            )
            answer = page.locator("#answer textarea").input_value()
            page.locator("#budget-chart canvas, #budget-chart svg").first.wait_for(
                timeout=TIMEOUT_MS
            )
            assert page.locator("#frames img").count() > 0
            summary = page.locator("#summary").inner_text()
            status = page.locator("#status").inner_text()
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    with capsys.disabled():
        print(f"\nscreenshot: {shot}")
    assert answer.strip()
    assert "visual tokens" in summary and "retention" in summary
    assert "meaningless" in status  # the tiny random backbone is labelled as such
    # what runs, from where, and why the default: no allocator, so the attention policy ran
    assert "(built in code by name, random weights)" in status
    assert "Default policy: attention — no allocator is loaded" in status
    assert "Policy attention" in summary and "probe pass read" in summary
    assert "Expected answer (bundled example)" in summary  # the example's gold is shown
    assert shot.stat().st_size > 10_000
