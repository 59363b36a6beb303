"""Open index.html in real headless Chromium from file:// with no network; keep a screenshot."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from test_package import EVIL, build_review

from animad.select.package import write_review_package

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("ANIMAD_REQUIRE_BROWSER") == "1":
            pytest.fail("ANIMAD_REQUIRE_BROWSER=1 but no chromium is installed")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def test_review_page_in_headless_chromium(tmp_path):
    browser = chromium()
    review, analysis, _ = build_review(tmp_path)
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    url = (out / "index.html").resolve().as_uri()
    profile = tmp_path / "profile"
    dom = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=60).stdout
    assert 'id="contact-sheet"' in dom and "contact_sheet.png" in dom
    for epoch in analysis.shortlist:
        assert f'id="pick-{epoch}"' in dom
    assert "<script" not in dom.lower()  # the hostile prompt stayed text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "review_page.png"
    shot.unlink(missing_ok=True)
    subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                    "--window-size=1280,2200", url], capture_output=True, timeout=60)
    image = Image.open(shot).convert("L")
    low, high = image.getextrema()
    assert image.size == (1280, 2200) and high - low > 100  # a real page, not a blank frame
    assert EVIL not in (out / "index.html").read_text()
