"""A 30-epoch tiny run's review page, screenshotted with headless Chromium: "try first", its reason and the
floor sentence. Prints JSON.

    python bench/review_screenshot.py [--out bench/results/review-try-first.png] [--epochs 30]

`animad train` (foreground, CPU) on a tiny random model set and a small synthetic dataset, stop-at-floor
off so the run trains all its epochs; its last line (which epoch to try first) is printed in the JSON.
Then Debian's chromium (tests/browser_cdp.py) opens the package's index.html and takes a screenshot of
the page's top: the try-first box, its reason, and the floor verdict.
"""

from __future__ import annotations

import argparse
import json
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
from animad.demo.synthetic import make_dataset, tiny_job, write_daemon_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "review-try-first.png")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    chromium = chromium_path()
    if chromium is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="animad-review-shot-") as tmp:
        tmp = Path(tmp)
        models = make_tiny_model_set(tmp / "models")
        config = write_daemon_config(tmp / "animad.yaml", models, windows=["always"], inhibit_sleep=False)
        make_dataset(tmp / "outfit", count=8, size=(64, 64), seed=3,
                     job=tiny_job(epochs=args.epochs, selection={"stop_at_floor": False}))
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "animad", "--config", str(config), "train", str(tmp / "outfit"),
                              "--out", str(tmp / "work")], capture_output=True, text=True, cwd=tmp)
        seconds = time.perf_counter() - start
        if run.returncode != 0:
            raise SystemExit(f"animad train failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        page = tmp / "work" / "review" / "index.html"
        summary = json.loads((page.parent / "summary.json").read_text())
        browser = Browser(chromium, tmp / "profile", width=1100, height=1400)
        try:
            browser.open(page.as_uri())
            browser.wait_for("!!document.getElementById('try-first')", what="the try-first box")
            shown = browser.js("[document.getElementById('try-first').innerText, "
                               "document.getElementById('floor-message').innerText.split('The numbers')[0]]")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            browser.screenshot(args.out, full_page=False)
        finally:
            browser.close()
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    print(json.dumps({"screenshot": str(args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out),
                      "train_seconds": round(seconds, 1), "epochs": args.epochs,
                      "train_last_line": lines[-1] if lines else "", "try_first_box": shown[0],
                      "floor_sentence": shown[1], "shortlist": [p["epoch"] for p in summary["shortlist"]],
                      "status": summary["analysis"]["status"]}, indent=2))


if __name__ == "__main__":
    main()
