"""How quickly the daemon queues a settled folder, and what it costs while idle. Prints JSON.

    python bench/daemon_bench.py [--drops 5] [--idle 30] [--images 12 200]

Runs the real daemon (`animad run`) on a temp dir with a tiny model set. The window is kept
closed with a fake clock, so queued jobs stay queued and nothing else competes for the CPU.

- drop -> queued: a generated dataset is moved into the inbox. "Settled" is the folder's newest
  ctime/mtime plus settle_seconds, the earliest moment the settle rule allows; the figure is the
  time from then until the job's row says `queued` (the watcher's wake-up, validation of every
  image and caption, and the move into the job folder). Measured with the inotify watcher and
  with the polling watcher (poll_seconds=1), for each dataset size.
- idle: user+system CPU of the daemon process (from /proc/PID/stat) over --idle seconds with an
  empty inbox and a closed window, as a share of one core, and its resident memory.
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
from animad.daemon.queue import Queue  # noqa: E402
from animad.daemon.queue import queue_path  # noqa: E402
from animad.anima.tiny import make_tiny_model_set  # noqa: E402
from animad.demo.synthetic import make_dataset, tiny_job, write_daemon_config  # noqa: E402

SETTLE = 2.0
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Daemon:
    def __init__(self, root: Path, models: dict, poll_seconds: float):
        self.root = root
        root.mkdir(parents=True)
        clock = root / "clock"
        clock.write_text(dt.datetime(2026, 6, 3, 12, 0).astimezone().isoformat())  # noon: window shut
        self.config = write_daemon_config(root / "animad.yaml", models, windows=["22:00-07:00"],
                                          settle_seconds=SETTLE, poll_seconds=poll_seconds, inhibit_sleep=False)
        self.queue = Queue(queue_path(load_daemon_config(self.config)))
        self.log = open(root / "daemon.log", "a")
        self.process = subprocess.Popen([sys.executable, "-m", "animad", "--config", str(self.config), "run"],
                                        stdout=self.log, stderr=subprocess.STDOUT, cwd=root,
                                        env={**os.environ, "ANIMAD_FAKE_CLOCK_FILE": str(clock)})
        pid_file = load_daemon_config(self.config).dir("state") / "daemon.pid"
        deadline = time.monotonic() + 60
        while not pid_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the daemon did not start:\n" + (root / "daemon.log").read_text()[-3000:])
            time.sleep(0.05)
        time.sleep(2.0)  # past start-up (imports, the first inbox scan)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()

    def queued_at(self, name: str, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for row in self.queue.all():
                if row["name"] == name and row["status"] == "queued":
                    return row["updated"]  # written in the same update that set `queued`
            time.sleep(0.02)
        raise SystemExit(f"{name} was not queued in {timeout}s:\n" + (self.root / "daemon.log").read_text()[-3000:])


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
        models = make_tiny_model_set(tmp / "models")
        for watcher, poll in (("inotify", 0.0), ("polling_1s", 1.0)):
            daemon = Daemon(tmp / watcher, models, poll)
            try:
                start_cpu, start = cpu_seconds(daemon.process.pid), time.monotonic()
                time.sleep(args.idle)
                used, wall = cpu_seconds(daemon.process.pid) - start_cpu, time.monotonic() - start
                result["idle"][watcher] = {"cpu_percent_of_one_core": round(100 * used / wall, 3),
                                           "cpu_seconds": round(used, 3), "wall_s": round(wall, 1),
                                           "rss_mb": round(rss_mb(daemon.process.pid), 1)}
                for images in args.images:
                    latencies = measure_drops(daemon, tmp / "staging", images, args.drops)
                    result["drop_to_queued"][f"{watcher}/{images}_images"] = summary(latencies)
            finally:
                daemon.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
