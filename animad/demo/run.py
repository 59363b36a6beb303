"""`animad demo`: the whole inbox -> train -> select -> outbox path on a tiny model, on the CPU.

It builds a tiny model set and a small generated dataset in D, starts the real daemon with an
always-open window, moves the dataset folder into D/inbox, waits until the job is done, and prints
where the review package is. Everything stays in D to look at afterwards.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from animad.anima.tiny import make_tiny_model_set
from animad.config.daemon import load_daemon_config
from animad.daemon.progress import describe_progress
from animad.daemon.queue import Queue, queue_path
from animad.daemon.status import dashboard_url
from animad.daemon.states import FINAL, Status
from animad.demo.synthetic import make_dataset, tiny_job, write_daemon_config
from animad.errors import UserError
from animad.select.try_first import package_try_first_line

NAME = "demo-shapes"
# The job's description: the review page shows it at the top (and the LoRA files carry it), so the
# noise in the previews is not taken for a failure.
DEMO_DESCRIPTION = ("This is animad's demo: a tiny model with random weights, trained for a few minutes on the CPU. "
                    "Its previews are noise by design; the demo shows the path from the inbox to this page, not a "
                    "LoRA worth using. Train on the real Anima model files for real previews.")


def run_demo(root: Path, epochs: int) -> int:
    """Run the demo in root (kept afterwards); returns 0 once the review package is written."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    print(f"animad demo in {root}")
    captions = [f"@demo, {c} {s}, {b}, simple" for c in ("red", "blue", "green", "yellow")
                for s in ("circle", "square", "triangle") for b in ("white background", "black background")]
    models_dir = root / "models"
    if not (models_dir / "dit.safetensors").is_file():
        print("1/4 writing a tiny random Anima-shaped model set (real key layout) ...")
        models = make_tiny_model_set(models_dir, corpus=captions)
    else:
        models = {k: models_dir / f"{k}.safetensors" for k in ("dit", "text_encoder", "vae")}
        models["tokenizers"] = models_dir / "tokenizers"
    config = write_daemon_config(root / "animad.yaml", models, windows=["always"], settle_seconds=2.0,
                                 inhibit_sleep=False)
    staging = root / "drop" / NAME
    if staging.exists():
        shutil.rmtree(staging)
    print("2/4 generating a small dataset (12 images with tag captions) ...")
    # Batch "auto" (1 for 12 images): the demo follows the guide's "batch at most 10% of the images"
    # that animad check warns about (batch 2 with 2 repeats tripped it, for the same 12 steps per epoch).
    make_dataset(staging, count=12, size=(64, 64), trigger="@demo",
                 job=tiny_job(epochs=epochs, data={"batch_size": "auto"}, description=DEMO_DESCRIPTION))
    print("3/4 starting the daemon and dropping the folder into the inbox ...")
    log_file = open(root / "daemon.log", "a")
    daemon = subprocess.Popen([sys.executable, "-m", "animad", "--config", str(config), "run"], stdout=log_file,
                              stderr=subprocess.STDOUT, cwd=root)
    try:
        inbox = root / "inbox"
        inbox.mkdir(exist_ok=True)
        known = Queue(queue_path(load_daemon_config(config))).all()
        target = inbox / fresh_name(known, inbox, root / "outbox")
        staging.rename(target)  # moved in whole: taken at once
        row = wait_for_job(config, target.name, daemon, after=max((r["id"] for r in known), default=0))
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log_file.close()
    if row["status"] != Status.DONE:
        raise UserError(f"the demo job ended as {row['status']}: {row.get('error')}\nsee {root / 'daemon.log'}")
    index = Path(row["outbox_dir"]) / "index.html"
    print(f"4/4 done. Review package: {index}")
    print(f"     open it in a browser: file://{index}")
    first = package_try_first_line(index.parent)
    if first:
        print(f"     {first}")  # as the page, `animad train` and `animad status` say it
    return 0


def fresh_name(rows: list[dict], inbox: Path, outbox: Path) -> str:
    """demo-shapes, else demo-shapes-2, -3...: a name no earlier run's job, inbox folder or package holds.

    Each run is a new job: waiting on a reused name would find the last run's finished row and print its
    page, leaving this run's folder untrained in the inbox."""
    taken = {r["name"] for r in rows}
    name, n = NAME, 2
    while name in taken or (inbox / name).exists() or (outbox / name).exists():
        name, n = f"{NAME}-{n}", n + 1
    return name


def wait_for_job(config: Path, name: str, daemon: subprocess.Popen, after: int = 0, timeout: float = 900) -> dict:
    """The job row named name with an id above after (this run's job), once it is final."""
    queue = Queue(queue_path(load_daemon_config(config)))
    deadline = time.monotonic() + timeout
    last, told = "", False
    while time.monotonic() < deadline:
        url = None if told else dashboard_url(load_daemon_config(config))
        if url:
            print(f"     watch it in a browser: {url}", flush=True)
            told = True
        if daemon.poll() is not None:
            raise UserError(f"the daemon exited early (code {daemon.returncode}); see its log")
        rows = [r for r in queue.all() if r["name"] == name and r["id"] > after]
        if rows:
            row = rows[-1]
            line = f"     job {row['id']} ({row['status']}): {describe_progress(row)}"
            if line != last:
                print(line, flush=True)
                last = line
            if row["status"] in FINAL:
                return row
        time.sleep(1.0)
    raise UserError(f"the demo job did not finish within {timeout:.0f}s")
