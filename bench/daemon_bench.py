"""How quickly the daemon queues a settled folder, and what it costs while idle. Prints JSON.

    python bench/daemon_bench.py [--drops 5] [--idle 30] [--images 12 200]

Runs the daemon's Service in this process, ticked as `animad run` ticks it but at noon with a
22:00-07:00 window, so queued jobs stay queued and nothing else competes for the CPU. The tiny
model set is written by a child process (`animad make-tiny`), so this process never imports torch:
it holds what the daemon holds, and its CPU and memory are the daemon's.

- drop -> queued: a generated dataset is moved into the inbox. "Settled" is the folder's newest
  ctime/mtime plus settle_seconds, the earliest moment the settle rule allows; the figure is the
  time from then until the job's row says `queued` (the watcher's wake-up, validation of every
  image and caption, and the move into the job folder). Measured with the inotify watcher and
  with the polling watcher (poll_seconds=1), for each dataset size.
- idle: user+system CPU of this process (all its threads, the watchdog observer's included) over
  --idle seconds of the loop with an empty inbox and a closed window, as a share of one core, and
  its resident memory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from animad.config.daemon import load_daemon_config  # noqa: E402
from animad.daemon.inbox import latest_change  # noqa: E402
from animad.daemon.service import Service  # noqa: E402
from animad.daemon.states import Status  # noqa: E402
from animad.demo.synthetic import make_dataset, tiny_job, write_daemon_config  # noqa: E402

SETTLE = 2.0
NOON = dt.datetime(2026, 6, 3, 12, 0).astimezone()  # the 22:00-07:00 window is shut
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tiny_models(out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "animad", "make-tiny", str(out)], check=True, stdout=subprocess.DEVNULL)
    return {**{k: out / f"{k}.safetensors" for k in ("dit", "text_encoder", "vae")}, "tokenizers": out / "tokenizers"}


class Daemon:
    def __init__(self, root: Path, models: dict, poll_seconds: float):
        self.root = root
        root.mkdir(parents=True)
        config = write_daemon_config(root / "animad.yaml", models, windows=["22:00-07:00"],
                                     settle_seconds=SETTLE, poll_seconds=poll_seconds, inhibit_sleep=False)
        self.service = Service(load_daemon_config(config))
        self.queue = self.service.queue
        self.service.open()
        self.serve_for(2.0)  # past start-up (the first inbox scan)

    def step(self) -> None:
        """One turn of `animad run`'s loop: a tick, then its own sleep."""
        self.service.tick(NOON)
        self.service.sleep()

    def serve_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.step()

    def stop(self) -> None:
        self.service.close()

    def queued_at(self, name: str, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.step()
            for row in self.queue.by_status(Status.QUEUED):
                if row["name"] == name:
                    return row["updated"]  # written in the same update that set `queued`
        raise SystemExit(f"{name} was not queued in {timeout}s")


def measure_drops(daemon: Daemon, staging: Path, images: int, drops: int) -> list[float]:
    latencies = []
    for i in range(drops):
        name = f"bench-{images}-{i}"
        folder = staging / name
        make_dataset(folder, count=images, size=(64, 64), job=tiny_job(), seed=i)
        target = daemon.root / "inbox" / name
        shutil.move(str(folder), target)
        settled = latest_change(target) + SETTLE
        latencies.append(daemon.queued_at(name) - settled)
    return latencies


def summary(values: list[float]) -> dict:
    return {"median_s": round(statistics.median(values), 3), "min_s": round(min(values), 3),
            "max_s": round(max(values), 3), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drops", type=int, default=5)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--images", type=int, nargs="+", default=[12, 200])
    args = parser.parse_args()
    result = {"settle_seconds": SETTLE, "cpu_count": os.cpu_count(), "drop_to_queued": {}, "idle": {}}
    with tempfile.TemporaryDirectory(prefix="animad-daemon-bench-") as tmp:
        tmp = Path(tmp)
        models = tiny_models(tmp / "models")
        watchers = {"inotify": 0.0, "polling_1s": 1.0}
        # Idle first, for both: the first validation imports torch (LoRA size estimate) for good.
        for watcher, poll in watchers.items():
            daemon = Daemon(tmp / "idle" / watcher, models, poll)
            try:
                start_cpu, start = cpu_seconds(), time.monotonic()
                daemon.serve_for(args.idle)
                used, wall = cpu_seconds() - start_cpu, time.monotonic() - start
                result["idle"][watcher] = {"cpu_percent_of_one_core": round(100 * used / wall, 3),
                                           "cpu_seconds": round(used, 3), "wall_s": round(wall, 1),
                                           "rss_mb": round(rss_mb(), 1)}
            finally:
                daemon.stop()
        for watcher, poll in watchers.items():
            daemon = Daemon(tmp / "drops" / watcher, models, poll)
            try:
                for images in args.images:
                    latencies = measure_drops(daemon, tmp / "staging", images, args.drops)
                    result["drop_to_queued"][f"{watcher}/{images}_images"] = summary(latencies)
            finally:
                daemon.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
