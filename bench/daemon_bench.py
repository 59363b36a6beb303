"""How quickly the daemon queues a settled folder, and what it costs while idle. Prints JSON.

    python bench/daemon_bench.py [--drops 5] [--idle 30] [--images 12 200] [--dashboard 30] [--blocks 4]
                                 [--only-dashboard]

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
- dashboard: the same daemon with its dashboard on (the server thread is in this process), idle and
  while a tiny job trains, in blocks of --dashboard seconds with the page open in headless Chromium
  (polling every 2 s, driven by tests/browser_cdp.py) and closed (the tab on about:blank), closed and
  open alternating. Per block: the daemon's CPU (this process), Chromium's CPU (its whole process
  tree) and, while training, the mean seconds per epoch of the epochs that ran wholly inside it.
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

sys.path.insert(0, str(ROOT / "tests"))
from browser_cdp import Browser, chromium_path  # noqa: E402

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


def tree_cpu_seconds(pid: int) -> float:
    """user+system CPU of a process and all its descendants now alive (Chromium's renderer, GPU process...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
        except (OSError, IndexError, ValueError):
            pass
        todo += children.get(current, [])
    return total


class Daemon:
    def __init__(self, root: Path, models: dict, poll_seconds: float, windows=("22:00-07:00",),
                 dashboard_port: int = 0):
        self.root = root
        root.mkdir(parents=True)
        config = write_daemon_config(root / "animad.yaml", models, windows=list(windows),
                                     settle_seconds=SETTLE, poll_seconds=poll_seconds, inhibit_sleep=False,
                                     dashboard={"port": dashboard_port})
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


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure_block(daemon: Daemon, browser: Browser, seconds: float, epochs_log: Path | None) -> dict:
    done_before = len(epochs_log.read_text().splitlines()) if epochs_log and epochs_log.is_file() else 0
    own, chrome, start = cpu_seconds(), tree_cpu_seconds(browser.process.pid), time.monotonic()
    daemon.serve_for(seconds)
    wall = time.monotonic() - start
    out = {"daemon_cpu_percent": round(100 * (cpu_seconds() - own) / wall, 2),
           "chromium_cpu_percent": round(100 * (tree_cpu_seconds(browser.process.pid) - chrome) / wall, 2)}
    if epochs_log is not None:
        records = [json.loads(line) for line in epochs_log.read_text().splitlines()]
        inside = records[done_before + 1:]  # the first one began before the block
        out["epochs"] = len(inside)
        out["seconds_per_epoch"] = round(statistics.mean(r["seconds"] for r in inside), 3) if inside else None
    return out


def dashboard_cost(tmp: Path, models: dict, seconds: float, blocks: int = 4) -> dict:
    """The daemon's CPU with the dashboard open in a browser vs closed, idle and while a job trains."""
    chromium = chromium_path()
    if chromium is None:
        return {"skipped": "needs Debian's chromium (apt-get install chromium)"}
    result = {}
    for phase in ("idle", "training"):
        port = free_port()
        windows = ("22:00-07:00",) if phase == "idle" else ("always",)
        daemon = Daemon(tmp / "dashboard" / phase, models, 0.0, windows=windows, dashboard_port=port)
        browser = Browser(chromium, tmp / "dashboard" / f"profile-{phase}")
        epochs_log = None
        try:
            if phase == "training":
                name = "dash-bench"
                make_dataset(tmp / "staging" / name, count=8, size=(64, 64), seed=7,
                             job=tiny_job(epochs=1000, selection={"stop_at_floor": False}))
                shutil.move(str(tmp / "staging" / name), daemon.root / "inbox" / name)
                deadline = time.monotonic() + 900
                while time.monotonic() < deadline:
                    daemon.step()
                    rows = [r for r in daemon.queue.all() if r["name"] == name and r["job_dir"]]
                    if rows and (Path(rows[0]["job_dir"]) / "epochs.jsonl").is_file() and \
                            len((Path(rows[0]["job_dir"]) / "epochs.jsonl").read_text().splitlines()) >= 2:
                        epochs_log = Path(rows[0]["job_dir"]) / "epochs.jsonl"
                        break
                else:
                    raise SystemExit("the bench job did not start training")
            browser.open("about:blank")
            runs = {"closed": [], "open": []}
            for block in range(blocks):
                state = "closed" if block % 2 == 0 else "open"
                browser.send("Page.navigate", {"url": "about:blank" if state == "closed" else
                                               f"http://127.0.0.1:{port}/"})
                runs[state].append(measure_block(daemon, browser, seconds, epochs_log))
            result[phase] = {**runs, "mean": mean_of(runs)}
        finally:
            browser.close()
            if epochs_log is not None:  # stop the job before the daemon is let go
                for row in daemon.queue.all():
                    if row["status"] == Status.RUNNING:
                        daemon.queue.update(row["id"], request="cancel")
                deadline = time.monotonic() + 300
                while daemon.service.runner.children and time.monotonic() < deadline:
                    daemon.step()
            daemon.stop()
    return result


def mean_of(runs: dict) -> dict:
    """Per state (closed, open): the mean of each figure over its blocks (epochs weighted by their count)."""
    out = {}
    for state, blocks in runs.items():
        out[state] = {key: round(statistics.mean(b[key] for b in blocks), 3)
                      for key in ("daemon_cpu_percent", "chromium_cpu_percent")}
        timed = [b for b in blocks if b.get("epochs")]
        if timed:
            epochs = sum(b["epochs"] for b in timed)
            out[state]["seconds_per_epoch"] = round(sum(b["seconds_per_epoch"] * b["epochs"] for b in timed) / epochs, 3)
            out[state]["epochs"] = epochs
    return out


def summary(values: list[float]) -> dict:
    return {"median_s": round(statistics.median(values), 3), "min_s": round(min(values), 3),
            "max_s": round(max(values), 3), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drops", type=int, default=5)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--images", type=int, nargs="+", default=[12, 200])
    parser.add_argument("--dashboard", type=float, default=30.0, help="seconds per dashboard block (0: skip)")
    parser.add_argument("--blocks", type=int, default=4, help="dashboard blocks per phase, closed and open alternating")
    parser.add_argument("--only-dashboard", action="store_true", help="measure the dashboard's cost only")
    args = parser.parse_args()
    result = {"settle_seconds": SETTLE, "cpu_count": os.cpu_count(), "drop_to_queued": {}, "idle": {}}
    with tempfile.TemporaryDirectory(prefix="animad-daemon-bench-") as tmp:
        tmp = Path(tmp)
        models = tiny_models(tmp / "models")
        if args.dashboard:
            # The job children write their log lines to the daemon's stdout: to stderr here, so stdout is the JSON.
            stdout = os.dup(1)
            os.dup2(2, 1)
            try:
                result["dashboard"] = dashboard_cost(tmp, models, args.dashboard, args.blocks)
            finally:
                os.dup2(stdout, 1)
                os.close(stdout)
        if args.only_dashboard:
            print(json.dumps(result, indent=2))
            return
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
