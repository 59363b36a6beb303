"""The status snapshot: what `animad status`, `animad status --json` and the dashboard show, built once.

One look at the queue, the daemon's pid file, the window and the inbox, with each row's printable
figures (`progress_figures`). The CLI prints it as a table or as JSON; the dashboard serves the same
JSON at /api/status. Nothing here writes anything.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import time
from pathlib import Path

import yaml

from animad.config.daemon import Daemon
from animad.config.window import parse_windows
from animad.daemon.inbox import folder_words, inbox_view
from animad.daemon.progress import progress_figures
from animad.daemon.queue import Queue, pid_alive, queue_path
from animad.daemon.states import ACTIVE, RUNNABLE
from animad.daemon.window import is_open, local_now, next_close, next_open
from animad.layout import JobPaths
from animad.network_shapes import TITLES
from animad.select.try_first import package_try_first

DASHBOARD_FILE = "dashboard.json"  # written by the daemon once its dashboard listens, removed when it stops


@dataclasses.dataclass
class Snapshot:
    daemon_pid: int | None  # from the pid file, whether or not that process lives
    alive: bool
    window_open: bool
    change: dt.datetime | None  # the window's next close (open) or open (closed)
    rows: list[dict]
    shown: dict[int, dict]  # row id -> progress_figures(row) plus "gpu"
    inbox: list[dict]
    many_slots: bool  # parallel_jobs with more than one slot: each running job says which GPU it has
    dashboard: str | None = None  # the running daemon's dashboard URL (None: off, failed, or no daemon)

    def as_json(self) -> dict:
        """What `animad status --json` prints and GET /api/status returns."""
        return {"daemon": {"running": self.alive, "pid": self.daemon_pid if self.alive else None,
                           "dashboard": self.dashboard},
                "window": {"open": self.window_open, "next_change": self.change.isoformat() if self.change else None},
                "jobs": [{**r, "shown": self.shown[r["id"]]} for r in self.rows],
                "inbox": [{**e, "shown": folder_words(e)} for e in self.inbox]}


def daemon_pid(daemon: Daemon) -> int | None:
    """The pid the daemon wrote at start (None: no file, or not a number)."""
    pid_file = daemon.dir("state") / "daemon.pid"
    try:
        text = pid_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def daemon_alive(daemon: Daemon) -> bool:
    return pid_alive(daemon_pid(daemon))


def take_snapshot(daemon: Daemon, queue: Queue | None = None, now: dt.datetime | None = None,
                  clock: float | None = None) -> Snapshot:
    queue = queue or Queue(queue_path(daemon))
    rows = queue.all()
    pid = daemon_pid(daemon)
    alive = pid_alive(pid)
    windows = parse_windows(daemon.config.windows)
    now = now or local_now()
    open_now = is_open(now, windows)
    change = next_close(now, windows) if open_now else next_open(now, windows)
    clock = time.time() if clock is None else clock
    # A row says running only while its process lives: one that exited (a full disk can keep the
    # daemon from recording it) shows that, never its last rate and ETA.
    shown = {r["id"]: row_figures(r, clock) for r in rows}
    many_slots = len(daemon.slot_devices()) > 1
    for row in rows:  # with parallel_jobs each running job says which GPU it has (--json: shown.gpu too)
        shown[row["id"]]["gpu"] = where_it_runs(row, shown[row["id"]]) if many_slots else None
        shown[row["id"]]["status"] = status_word(row, shown[row["id"]])
        shown[row["id"]]["line"] += package_try_first(row)  # a done job: "(try epoch N first)", as its page says
        shown[row["id"]]["network"] = network_title(row)
        if shown[row["id"]]["network"] != TITLES["lora"]:  # LoRA, the default, goes without saying
            shown[row["id"]]["line"] = f"{shown[row['id']]['network']} \u00b7 {shown[row['id']]['line']}"
    inbox = inbox_view(daemon, rows, alive, clock, daemon_pid=pid)
    return Snapshot(pid, alive, open_now, change, rows, shown, inbox, many_slots,
                    dashboard_url(daemon) if alive else None)


def network_title(row: dict) -> str:
    """LoRA, LoKr or LoHa: the kind the job trains, from its job.resolved.yaml (LoRA until that exists)."""
    if not row.get("job_dir"):
        return TITLES["lora"]
    path = JobPaths(row["job_dir"]).resolved
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return TITLES["lora"]
    return resolved_network_title(str(path), stamp)


@functools.lru_cache(maxsize=512)
def resolved_network_title(path: str, stamp: int) -> str:
    # Cached by the file's mtime: the dashboard asks every 2 s for every row, the file is written once.
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return TITLES["lora"]
    network = data.get("network") if isinstance(data, dict) else None
    kind = network.get("type") if isinstance(network, dict) else None
    return TITLES.get(kind, TITLES["lora"])


def dashboard_url(daemon: Daemon) -> str | None:
    """Where the running daemon serves its dashboard, as it wrote at start (None: off or not serving)."""
    try:
        url = json.loads((daemon.dir("state") / DASHBOARD_FILE).read_text()).get("url")
    except (OSError, ValueError, AttributeError):
        return None
    return url if isinstance(url, str) else None


def row_figures(row: dict, clock: float) -> dict:
    """progress_figures for a row, told whether its process lives (looked up for a running row only)."""
    return progress_figures(row, clock, pid_alive(row["pid"]) if row["status"] in ACTIVE and row["pid"] else None)


def status_word(row: dict, shown: dict) -> str:
    """The STATUS column: the row's status, "(held)" on a held runnable job, "exited" for a dead process."""
    if shown["phase"] == "exited":
        return "exited"  # the row still says running; its process is gone (the line beside it says so)
    return row["status"] + (" (held)" if row["held"] and row["status"] in RUNNABLE else "")


def where_it_runs(row: dict, shown: dict) -> str | None:
    """"gpu 1" for a job running in a parallel_jobs slot (the GPU its child was pinned to); None otherwise."""
    if row["status"] not in ACTIVE or shown["phase"] == "exited" or row.get("slot") is None:
        return None
    return f"gpu {row['gpu']}" if row.get("gpu") is not None else f"slot {row['slot']}"
