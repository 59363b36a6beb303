"""Screenshots of the dashboard with one job finished, one training and one queued. Prints JSON.

    python bench/dashboard_screenshot.py [--out bench/results/dashboard.png]

A real `animad run` on a tiny model set (CPU): three jobs are dropped into its inbox one after the
other; the first trains 4 epochs and gets its review package, the second trains, the third waits.
Once the second job's curve has a few points, headless Chromium (Debian's chromium, driven over the
DevTools pipe by tests/browser_cdp.py) opens the dashboard and takes a full-page screenshot, then
clicks the finished job and takes a second one of its review (`<out>-review.png`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browser_cdp import Browser, chromium_path  # noqa: E402

from animad.anima.tiny import make_tiny_model_set  # noqa: E402
from animad.config.daemon import load_daemon_config  # noqa: E402
from animad.daemon.queue import Queue, queue_path  # noqa: E402
from animad.demo.synthetic import make_dataset, tiny_job, write_daemon_config  # noqa: E402

HANG = 1800


def wait(what: str, predicate, daemon: subprocess.Popen, log: Path):
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited while waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dashboard.png")
    parser.add_argument("--port", type=int, default=18679)
    args = parser.parse_args()
    chromium = chromium_path()
    if chromium is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="animad-dashboard-shot-") as tmp:
        tmp = Path(tmp)
        models = make_tiny_model_set(tmp / "models")
        config = write_daemon_config(tmp / "animad.yaml", models, windows=["always"], settle_seconds=1.0,
                                     inhibit_sleep=False, dashboard={"port": args.port})
        queue = Queue(queue_path(load_daemon_config(config)))
        log = tmp / "daemon.log"
        daemon = subprocess.Popen([sys.executable, "-m", "animad", "--config", str(config), "run"],
                                  stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=tmp)
        browser = None
        try:
            jobs = {"first-look": tiny_job(epochs=4, selection={"stop_at_floor": False}),
                    "outfit-v2": tiny_job(epochs=30, selection={"stop_at_floor": False}),
                    "style-test": tiny_job(epochs=6)}
            for n, (name, job) in enumerate(jobs.items()):
                make_dataset(tmp / "staging" / name, count=8, size=(64, 64), job=job, seed=n)
                shutil.move(str(tmp / "staging" / name), tmp / "inbox" / name)
                wait(f"{name} queued", lambda name=name: any(r["name"] == name and r["status"] != "accepting"
                                                               for r in queue.all()), daemon, log)

            def status(name):
                return next((r for r in queue.all() if r["name"] == name), {}).get("status")

            wait("first-look done", lambda: status("first-look") == "done", daemon, log)
            training = next(r for r in queue.all() if r["name"] == "outfit-v2")
            epochs = Path(training["job_dir"]) / "epochs.jsonl"
            wait("a few epochs of outfit-v2", lambda: epochs.is_file() and len(epochs.read_text().splitlines()) >= 5,
                 daemon, log)
            browser = Browser(chromium, tmp / "profile", width=1280, height=1000)
            browser.open(f"http://127.0.0.1:{args.port}/")
            browser.wait_for("Number((document.querySelector('#curve .eval') || {dataset: {}}).dataset.points || 0) >= 5",
                             what="the curve drawn")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            browser.screenshot(args.out)
            shown = browser.js("[...document.querySelectorAll('#queue tbody tr')].map(r => "
                               "[r.children[1].textContent, r.children[2].textContent])")
            # The finished job picked by hand: its review, the shortlist on its curve and "keep this epoch".
            browser.click("#job-1 td.name")
            browser.wait_for("!document.getElementById('review').hidden", what="the review of the finished job")
            review_shot = args.out.with_name(args.out.stem + "-review.png")
            browser.screenshot(review_shot)
        finally:
            if browser is not None:
                browser.close()
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=300)
    print(json.dumps({"screenshot": str(args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out),
                      "review_screenshot": str(review_shot.name), "jobs_shown": shown,
                      "bytes": os.path.getsize(args.out)}, indent=2))


if __name__ == "__main__":
    main()
