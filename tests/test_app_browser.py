"""The web demo in a real browser: `t2i serve` as a subprocess, driven by headless Chromium
(Debian's /usr/bin/chromium through Python playwright; no browser download).

The screenshot is kept in artifacts/app_browser.png (git-ignored). Run with
T2I_UPDATE_SCREENSHOT=1 to also copy it to docs/img/app.png, and with T2I_APP_MODEL=DIR to use
a trained model instead of the tiny one (for a better screenshot).

A missing Chromium or playwright is a failure, not a skip: `make test` installs both.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import playwright.sync_api as playwright  # noqa: E402  (a dev dependency: fail, never skip)

from test_app import start_server, stop_server  # noqa: E402
from tiny_model import tiny_model_fixture  # noqa: E402

CHROMIUM = os.environ.get("T2I_CHROMIUM", "/usr/bin/chromium")  # `make test CHROMIUM=...` sets it
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[1]
DOCS_SCREENSHOT = ROOT / "docs" / "img" / "app.png"
ARTIFACT = ROOT / "artifacts" / "app_browser.png"

# Records every image the preview shows: frames can replace each other faster than a test polls.
RECORD_PREVIEWS = """() => {
    window.__t2iFrames = new Set();
    window.__t2iSteps = new Set();
    const preview = document.querySelector('#t2i-preview');
    const info = document.querySelector('#t2i-info');
    const record = () => {
        preview.querySelectorAll('img').forEach(img => window.__t2iFrames.add(img.src));
        const m = info.innerText.match(/step (\\d+)\\/(\\d+)/);
        if (m) window.__t2iSteps.add(m[1]);
    };
    const options = {subtree: true, childList: true, attributes: true, characterData: true};
    new MutationObserver(record).observe(preview, options);
    new MutationObserver(record).observe(info, options);
}"""


@pytest.fixture(scope="session")
def browser_model(tmp_path_factory, synth_dir):
    if os.environ.get("T2I_APP_MODEL"):
        return Path(os.environ["T2I_APP_MODEL"])
    return tiny_model_fixture(tmp_path_factory, synth_dir)


@pytest.fixture(scope="module")
def app_url(browser_model, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is not installed: `make browser` says how to get it")
    log_path = tmp_path_factory.mktemp("serve_browser") / "serve.log"
    proc, url = start_server(browser_model, log_path, "--max-steps", "50", "--max-images", "4")
    yield url
    stop_server(proc)


@pytest.fixture
def page(app_url):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(app_url, wait_until="domcontentloaded", timeout=60_000)
            page.locator("#t2i-prompt textarea").wait_for(timeout=60_000)
            yield page
        finally:
            browser.close()


def set_slider(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_prompt_generate_previews_then_results(page, tmp_path):
    # Structured prompting: the attribute boxes write the prompt in the training vocabulary.
    page.get_by_text("Compose the prompt from attributes").click()
    page.get_by_label("woman", exact=True).check()
    page.locator("#t2i-has").get_by_label("Smiling", exact=True).check()
    page.locator("#t2i-has").get_by_label("Eyeglasses", exact=True).check()
    page.locator("#t2i-without").get_by_label("Wearing hat", exact=True).check()
    prompt = page.locator("#t2i-prompt textarea")
    # Wait for the reply to the last click, then check that no older reply overwrites it.
    page.wait_for_function("document.querySelector('#t2i-prompt textarea').value.includes('AND NOT')",
                           timeout=30_000)
    page.wait_for_timeout(500)
    composed = prompt.input_value()
    assert all(word in composed for word in ("woman", "smile", "glasses", "AND NOT a photo of a person wearing a hat")), \
        composed

    page.get_by_text("Compose the prompt from attributes").click()  # fold it away again
    prompt.fill("a photo of a smiling woman with blond hair wearing glasses")
    set_slider(page, "t2i-steps", 40)
    set_slider(page, "t2i-images", 2)
    page.evaluate(RECORD_PREVIEWS)
    page.locator("#t2i-generate").click()
    page.wait_for_function("document.querySelector('#t2i-info').innerText.includes('per image')", timeout=180_000)

    frames = page.evaluate("window.__t2iFrames.size")
    steps_seen = page.evaluate("[...window.__t2iSteps].map(Number).sort((a, b) => a - b)")
    assert frames >= 3, f"saw {frames} preview images"  # intermediate previews, then the final one
    assert len(steps_seen) >= 2 and steps_seen[0] < 40, steps_seen
    gallery = page.locator("#t2i-gallery img")
    gallery.first.wait_for(timeout=30_000)
    assert gallery.count() == 2
    info = page.locator("#t2i-info").inner_text()
    assert "sampler euler-a" in info and "40 steps" in info and "s per image" in info

    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)
    if os.environ.get("T2I_UPDATE_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        _save_small_png(shot, DOCS_SCREENSHOT)


def test_empty_prompt_shows_an_error(page):
    page.locator("#t2i-prompt textarea").fill("   ")
    page.locator("#t2i-generate").click()
    page.get_by_text("prompt is empty").first.wait_for(timeout=60_000)


def _save_small_png(src: Path, dst: Path, limit: int = 300_000) -> None:
    """Copy a screenshot for the docs, quantised to a palette to stay well under `limit` bytes."""
    from PIL import Image

    with Image.open(src) as im:
        small = im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        small.save(dst, optimize=True)
    if dst.stat().st_size > limit:
        shutil.copyfile(src, dst)
        with Image.open(dst) as im:
            w, h = im.size
            im.convert("RGB").resize((w * 3 // 4, h * 3 // 4)).quantize(colors=64).save(dst, optimize=True)
