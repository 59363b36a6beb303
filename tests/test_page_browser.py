"""Open index.html in a real headless Chromium from file:// with no network; keep a screenshot.

Needs Debian's chromium (`apt-get install chromium`). Without it the test is skipped, unless
ANIMAD_REQUIRE_BROWSER=1 (set by CI when it installed one), where a missing browser is a failure.
The screenshot is kept as test-artifacts/review_page.png for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from animad.select.package import write_review_package
from animad.select.sheet import BACKGROUND

from package_helpers import EVIL, build_review, preview_colour

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars"]
TIMEOUT = 60  # seconds per browser run


def find_chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    if path is None:
        if os.environ.get("ANIMAD_REQUIRE_BROWSER") == "1":
            pytest.fail("ANIMAD_REQUIRE_BROWSER=1 but chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


class Dom(HTMLParser):
    """The parsed DOM as dumped by Chromium: element ids, script elements, visible text."""

    def __init__(self):
        super().__init__()
        self.ids, self.scripts, self.images, self.text = set(), 0, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.scripts += tag == "script"
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src"))

    def handle_data(self, data):
        self.text.append(data)


def run_browser(browser: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    result = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *arguments],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def near(colour, target, tolerance: int = 3) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, target))


def test_review_page_in_headless_chromium(tmp_path):
    browser = find_chromium()
    review, analysis, _ = build_review(tmp_path)
    review.extra["prompt_kinds"] = [{"kind": "caption", "label": "dataset caption"},
                                    {"kind": "novel", "label": "novel scene: new setting"}]
    review.extra["schedule"] = {"text": "cosine; floor confirmed at epoch 31, LR cooled to 0 over 6 epochs, "
                                        "stopped at 37 of max 200"}
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    url = (out / "index.html").resolve().as_uri()
    profile = tmp_path / "profile"

    dom = Dom()
    dom.feed(run_browser(browser, profile, "--dump-dom", url).stdout)
    text = " ".join(" ".join(dom.text).split())
    assert "contact-sheet" in dom.ids and "contact_sheet.png" in dom.images and "loss_curve.png" in dom.images
    for pick in analysis.picks:
        assert f"pick-{pick.epoch}" in dom.ids
        assert f"cat-e{pick.epoch:04d}-{pick.kind}.safetensors" in text
    assert "Low loss only shortlists; the previews decide." in text
    assert {"prompts", "prompt-kinds", "escaping", "schedule"} <= dom.ids
    assert "dataset caption" in text and "novel scene: new setting" in text and "LoraLoaderModelOnly" in text
    assert dom.scripts == 0  # the hostile prompt did not become a script element...
    assert f"@cat, {EVIL}" in text  # ...it is visible, inert text
    assert f"caption {EVIL} is odd" in text
    # The floor is said once in plain words; its numbers are folded into a <details> a browser shows closed.
    assert "floor-numbers" in dom.ids and "The numbers behind this" in text
    assert "The loss stopped improving around epoch" in text and "epochs-folder" in dom.ids

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "review_page.png"
    shot.unlink(missing_ok=True)
    run_browser(browser, profile, f"--screenshot={shot}", "--window-size=1280,2000", url)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    darkest, lightest = image.convert("L").getextrema()
    assert lightest - darkest > 100  # a rendered page, not a blank frame
    # The images loaded from file:// (relative links, CSP): the sheet's dark background and the
    # baseline row's preview colours are on screen.
    colours = image.getcolors(1 << 22)
    area = {target: sum(count for count, colour in colours if near(colour, target))
            for target in (BACKGROUND, preview_colour(0, 0), preview_colour(0, 1))}
    assert all(pixels > 2000 for pixels in area.values()), area
