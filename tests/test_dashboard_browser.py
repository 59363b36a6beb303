"""The dashboard in a real headless Chromium, driven over the DevTools protocol, while `animad run` trains.

A tiny job trains; the page must show it running, its phase, and a loss curve that grows epoch by
epoch without a reload; a mouse click on its pause button must pause it (the daemon saves it and the
row says paused). A job whose name is markup shows as text. The screenshot is kept as
test-artifacts/dashboard.png for a person to look at.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from browser_cdp import Browser, require_chromium
from dashboard_helpers import Dashboard
from animad.config.daemon import load_daemon_config
from animad.daemon.queue import Queue, queue_path
from animad.demo.synthetic import make_dataset, tiny_job

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
EVIL = "<img src=x onerror=alert(1)>"


def cell(job_id: int, name: str) -> str:
    return f"(document.querySelector('#job-{job_id} .{name}') || {{}}).textContent"


def points() -> str:
    return "Number((document.querySelector('#curve .eval') || {dataset: {}}).dataset.points || 0)"


@pytest.mark.slow
def test_dashboard_shows_a_training_job_and_pauses_it(tmp_path, daemon_config):
    chromium = require_chromium()
    daemon = load_daemon_config(daemon_config)
    queue = Queue(queue_path(daemon))
    queue.insert(1, name=EVIL, status="failed", error=f"<script>alert(2)</script>{EVIL} is not a dataset")
    dashboard = Dashboard(daemon_config)
    browser = None
    try:
        staging = tmp_path / "staging" / "cat"
        make_dataset(staging, count=8, size=(64, 64), job=tiny_job(epochs=120, selection={"stop_at_floor": False}))
        shutil.move(str(staging), daemon.dir("inbox") / "cat")
        row = dashboard.daemon.wait_status("cat", "running")

        browser = Browser(chromium, tmp_path / "profile", width=1280, height=1100)
        browser.open(f"http://127.0.0.1:{dashboard.port}/")
        job = row["id"]
        browser.wait_for(f"{cell(job, 'status')} === 'running'", what="the job shown running")
        # The phase: caching first, then the epoch loop's own words.
        browser.wait_for(f"/epoch \\d+\\/\\d+ step/.test({cell(job, 'progress')})", what="the training phase shown")
        first = browser.wait_for(f"{points()} >= 1 && {points()}", what="the first point of the curve")
        grown = browser.wait_for(f"{points()} > {first} && {points()}", what="the curve to grow without a reload")
        assert grown > first
        assert browser.js("document.getElementById('job-title').textContent") == f"Job {job}: cat"
        assert browser.js("document.getElementById('log').textContent").count("animad.train") >= 1

        # A hostile name is text: no element was made of it, and no script ran.
        assert browser.js(cell(1, "name")) == EVIL
        assert browser.js("document.querySelectorAll('img').length") == 0
        assert browser.js("document.scripts.length") == 1  # the page's own script only
        assert "<script>alert(2)</script>" in browser.js(cell(1, "progress"))

        ARTIFACTS.mkdir(exist_ok=True)
        browser.screenshot(ARTIFACTS / "dashboard.png")

        browser.click(f"#job-{job} button[data-verb='pause']")
        # Paused by a person: held, so the next window does not start it again until it is resumed.
        browser.wait_for(f"{cell(job, 'status')} === 'paused (held)'", what="the job shown paused")
        browser.wait_for("/will save its state at the next step and pause/.test("
                         "document.getElementById('message').textContent)", what="the action's answer")
        paused = dashboard.daemon.queue.get(job)
        assert paused["status"] == "paused" and paused["held"] == 1
        assert browser.js(f"[...document.querySelectorAll('#job-{job} button')].map(b => b.dataset.verb)") == \
            ["resume", "cancel"]
        assert json.loads((tmp_path / "state" / "dashboard.json").read_text())["port"] == dashboard.port
    finally:
        if browser is not None:
            browser.close()
        dashboard.stop()
