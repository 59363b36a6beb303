"""Chaos (issue 11): kill -9 the daemon and its job at moments a fixed seed picks across a whole run
(caching, start-up, mid-epoch, a checkpoint being written, an epoch's end, selection, preview
rendering), restart each time, and the final LoRA equals an uninterrupted run's, bit for bit, with a
complete review package. The real `animad run` process, real SQLite, real job children.

Every moment is a state the test observes (a row's phase, a resume state saved mid-epoch, a new
epoch record, a temp file created, a new preview image); the random part is which moment comes
next and a short jitter after it. The checkpoint moment is caught by an inotify event on the temp
file's creation and the job is killed from the event handler: it lands during the write or just
after the rename (the test prints which, as "torn" when a temp file was left behind).
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from animad.config.daemon import load_daemon_config
from animad.daemon.accept_record import AcceptRecord
from animad.daemon.queue import pid_alive
from animad.daemon.states import Phase, Status
from animad.demo.synthetic import make_dataset, tiny_job
from animad.layout import JobPaths, read_epochs_log
from daemon_helpers import HANG_SECONDS, DaemonProcess, configure, drop

pytestmark = pytest.mark.slow

SEED = 20261201
EPOCHS = 8  # room for every training moment: each kill costs at most one epoch
TRAINING_MOMENTS = ("startup", "mid-epoch", "checkpoint", "epoch-end")
SELECTION_MOMENTS = ("selecting", "previews")
MIN_KILLS = 10


def moment_plan(rng: random.Random) -> tuple[list[str], list[str]]:
    """(training's moments, selection's): caching first (only the first launch caches for long), then
    every training moment once in a random order and four more drawn at random; selection starts
    with a kill mid-render and one at its start. Selection's random moments then make up MIN_KILLS
    if some moment never came (the run went past it)."""
    training = ["caching", *rng.sample(TRAINING_MOMENTS, len(TRAINING_MOMENTS)),
                *(rng.choice(TRAINING_MOMENTS) for _ in range(4))]
    return training, ["previews", "selecting"]


class Baseline:
    """What the job folder held at a restart: a moment counts only if it comes after this."""

    def __init__(self, paths: JobPaths, dead_pids: set[int], cache: Path):
        self.paths, self.dead_pids, self.cache = paths, dead_pids, cache
        self.cache_entries = cache_entries(cache)
        self.epochs = len(read_epochs_log(paths.epochs_log))
        self.state = resume_point(paths)
        self.previews = previews_of(paths)


def resume_point(paths: JobPaths) -> tuple[int, int] | None:
    try:
        state = torch.load(paths.resume_state, weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError):
        return None
    return state["epoch"], state["batch_index"]


def cache_entries(cache: Path) -> int:
    return len(list(cache.glob("*/*.safetensors")))  # latents and text embeddings (train/caches.py)


def previews_of(paths: JobPaths) -> int:
    return len(list(paths.selection.rglob("*.png"))) if paths.selection.is_dir() else 0  # selection/<settings>/


def live_child(row: dict, base: Baseline) -> int | None:
    pid = row["pid"]
    return pid if pid and pid not in base.dead_pids and pid_alive(pid) else None


def observed(row: dict, moment: str, base: Baseline) -> str | None:
    """'kill' when the moment has come, 'missed' when the run went past where it can come, else None."""
    if row["status"] == Status.FAILED:
        raise AssertionError(f"the job failed: {row['error']}")
    if row["status"] == Status.DONE:
        return "missed"
    pid = live_child(row, base)
    if moment in (*TRAINING_MOMENTS, "caching") and row["status"] == Status.SELECTING:
        return "missed"  # training is over
    if pid is None:
        return None
    progress = row["progress"] or {}
    if moment == "caching":
        if progress.get("phase") in ("training", "eval", "saving"):
            return "missed"  # caching went by between two progress reports
        caching = progress.get("phase") == "caching" or cache_entries(base.cache) > base.cache_entries
        return "kill" if row["status"] == Status.RUNNING and caching else None
    if moment in ("startup", "selecting"):
        wanted = Status.RUNNING if moment == "startup" else Status.SELECTING
        return "kill" if row["status"] == wanted else None
    if moment == "mid-epoch":
        point = resume_point(base.paths)
        return "kill" if point and point[1] > 0 and point != base.state else None
    if moment == "epoch-end":
        return "kill" if len(read_epochs_log(base.paths.epochs_log)) > base.epochs else None
    if moment == "previews":
        return "kill" if previews_of(base.paths) > base.previews else None
    raise AssertionError(moment)


class KillOnTempFile(FileSystemEventHandler):
    """kill -9 the job's process group the moment a temp file (an atomic write in progress) appears."""

    def __init__(self):
        self.pid: int | None = None  # the job's; armed while set
        self.daemon: subprocess.Popen | None = None
        self.fired = threading.Event()
        self.file: Path | None = None

    def on_created(self, event):
        name = os.path.basename(event.src_path)
        if self.pid is None or self.fired.is_set() or ".tmp-" not in name:
            return
        try:
            group = os.getpgid(self.pid)
        except ProcessLookupError:
            return
        self.daemon.kill()  # the daemon first: it must not see its job die and record a failure
        os.killpg(group, signal.SIGKILL)
        self.file = Path(event.src_path)
        self.fired.set()


def kill_at(daemon: DaemonProcess, moment: str, base: Baseline, rng: random.Random, watcher: KillOnTempFile) -> str:
    """Wait for the moment and kill everything then; returns what happened ('missed' if it never came)."""
    if moment == "checkpoint":
        row = daemon.wait(lambda: (r := daemon.job("chaos")) and (r["status"] in (Status.DONE, Status.SELECTING)
                                                                   or live_child(r, base)) and r,
                          what="a training child to watch")
        if row["status"] != Status.RUNNING:
            return "missed"
        watcher.fired.clear()
        watcher.daemon, watcher.pid = daemon.process, row["pid"]
        deadline = time.monotonic() + HANG_SECONDS
        while not watcher.fired.wait(0.1) and daemon.job("chaos")["status"] == Status.RUNNING:
            assert time.monotonic() < deadline, "no checkpoint write within the hang guard"
        watcher.pid = None
        if not watcher.fired.is_set():
            return "missed"
        torn = watcher.file.exists()
        daemon.kill_daemon_then_job()  # both are dead already: this reaps them
        return "killed (torn)" if torn else "killed (after the rename)"
    outcome = daemon.wait(lambda: observed(daemon.job("chaos"), moment, base), what=f"the moment '{moment}'")
    if outcome == "missed":
        return outcome
    time.sleep(rng.uniform(0.0, 1.0 if moment in ("startup", "selecting") else 0.05 if moment == "caching" else 0.2))
    daemon.kill_daemon_then_job()
    return "killed"


def reference_run(config: Path, dataset: Path, out: Path) -> None:
    process = subprocess.run([sys.executable, "-m", "animad", "--config", str(config), "train", str(dataset),
                              "--out", str(out), "--no-select"], capture_output=True, text=True, timeout=HANG_SECONDS)
    assert process.returncode == 0, (process.stdout + process.stderr)[-3000:]


def test_kill_9_at_random_moments_across_a_whole_run_ends_bit_identical(tmp_path, daemon_config):
    configure(daemon_config, keep_epochs="all")
    job = tiny_job(epochs=EPOCHS, precision={"save": "fp32"}, selection={"stop_at_floor": False},
                   data={"batch_size": 1, "repeats": 3}, network={"dim": 4, "dropout": 0.1},
                   schedule={"max_epochs": EPOCHS, "state_every_minutes": 0.002},
                   previews={"prompts": ["@demo, red circle", "@demo, blue square"], "prompts_mode": "replace",
                             "steps": 2})
    staging = make_dataset(tmp_path / "staging" / "chaos", count=4, job=job)

    rng = random.Random(SEED)
    watcher = KillOnTempFile()
    observer = Observer()
    daemon = DaemonProcess(daemon_config).start()
    drop(staging, tmp_path / "inbox")
    row = daemon.wait(lambda: (r := daemon.job("chaos")) and r["job_dir"] and r, what="the job folder")
    paths = JobPaths(Path(row["job_dir"]))
    for folder in (paths.state_dir, paths.epochs_dir, paths.selection):
        folder.mkdir(parents=True, exist_ok=True)
        observer.schedule(watcher, str(folder))
    observer.start()
    cache = load_daemon_config(daemon_config).dir("cache")
    dead: set[int] = set()
    training, selection = moment_plan(rng)
    log, kills, started = [], [], time.monotonic()
    try:
        while len(kills) < MIN_KILLS or selection:
            row = daemon.job("chaos")
            if row["status"] in (Status.DONE, Status.FAILED):
                break
            if training:
                moment = training.pop(0)
            elif row["phase"] is not Phase.SELECT:  # the rest of training runs undisturbed
                daemon.wait(lambda: daemon.job("chaos")["phase"] is Phase.SELECT, what="selection to begin")
                continue
            else:
                moment = selection.pop(0) if selection else rng.choice(SELECTION_MOMENTS)
            outcome = kill_at(daemon, moment, Baseline(paths, dead, cache), rng, watcher)
            log.append((round(time.monotonic() - started), moment, outcome))
            print("chaos:", *log[-1], flush=True)
            if outcome.startswith("killed"):
                kills.append(moment)
                dead.update(p for p in (daemon.job("chaos")["pid"],) if p)
                daemon = DaemonProcess(daemon_config).start()
        done = daemon.wait_status("chaos", Status.DONE, Status.FAILED)
    finally:
        observer.stop()
        observer.join()
        daemon.stop()
    print("kills (seconds into the run, moment, outcome):", log, f"done after {time.monotonic() - started:.0f}s")
    # Afterwards, so that the daemon's first launch really caches (the latent cache is shared).
    reference = tmp_path / "reference"
    reference_run(daemon_config, make_dataset(tmp_path / "again" / "chaos", count=4, job=job), reference)
    assert done["status"] == Status.DONE, done["error"]
    assert len(kills) >= MIN_KILLS, str(log)
    assert {"caching", *TRAINING_MOMENTS, "previews"} <= set(kills), str(log)  # every kind of moment was hit

    # The final LoRA (and every epoch before it) equals the uninterrupted run's, bit for bit.
    records, reference_records = read_epochs_log(paths.epochs_log), read_epochs_log(reference / "epochs.jsonl")
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    assert [r["step"] for r in records] == [r["step"] for r in reference_records]
    for epoch in range(1, EPOCHS + 1):
        ours = load_file(str(paths.epoch_file("chaos", epoch)))
        theirs = load_file(str(reference / "epochs" / f"chaos-e{epoch:04d}.safetensors"))
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), f"epoch {epoch} differs"
    assert [r["eval_loss"] for r in records] == [r["eval_loss"] for r in reference_records]

    # The review package is complete: every file its summary lists, every preview, every shortlisted LoRA.
    package = Path(done["outbox_dir"])
    summary = json.loads((package / "summary.json").read_text())
    assert all((package / name).is_file() for name in summary["files"]), summary["files"]
    assert not summary["missing_previews"] and summary["previews"]
    assert summary["shortlist"] and all((package / pick["file"]).is_file() for pick in summary["shortlist"])
    assert summary["contact_sheet"] and (package / "index.html").is_file()
    litter = [p for root in (paths.root, package.parent) for p in root.rglob("*")
              if ".tmp-" in p.name or ".partial-" in p.name]
    assert not litter, litter  # no temp file or half package left by any kill
    images = sorted((package / "previews").glob("*.png"))
    assert images
    for image in images:  # none torn by a kill mid-render
        with Image.open(image) as handle:
            handle.verify()


# -- accept-phase kills (issue 23): the daemon dies mid-accept, at every phase, and nothing is ------------
# -- duplicated, renamed or lost. The daemon kills itself at the chosen point (ANIMAD_KILL_AT,   ------------
# -- daemon/kill_points.py): deterministic, no timing race.                                      ------------

ACCEPT_KILLS = [  # (kill point, its n-th visit, whether the accept copies as across file systems)
    ("accept-copy-file", 1, True),  # mid-copy
    ("accept-copy-file", 5, True),
    ("accept-verified", 1, True),  # the copy verified, not yet in place
    ("accept-placed", 1, True),  # the verified copy in place, the inbox folder whole
    ("accept-remove-file", 5, True),  # half way through removing the inbox folder ...
    ("accept-remove-file", 1, True),  # ... and again while the restart finishes that removal
    ("accept-frozen", 1, True),  # the inbox folder gone, no job files yet
    ("accept-placed", 1, False),  # renamed into the job folder (one file system)
    ("accept-frozen", 1, False),
]


def closed_window() -> list[str]:
    """A training window that opens two hours from now: accepted jobs wait, nothing trains."""
    now = datetime.datetime.now()
    start, end = now + datetime.timedelta(hours=2), now + datetime.timedelta(hours=3)
    return [f"{start:%H:%M}-{end:%H:%M}"]


def dataset_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def die_at(daemon: DaemonProcess, point: str, queue_names: set[str]) -> None:
    """Wait for a daemon started with ANIMAD_KILL_AT to kill itself (failing if every drop got queued instead)."""
    deadline = time.monotonic() + HANG_SECONDS
    while daemon.process.poll() is None:
        rows = daemon.queue.all()
        queued = {r["name"] for r in rows if r["status"] == Status.QUEUED}
        assert not queue_names <= queued, f"every drop was queued; the daemon never reached {point}"
        assert time.monotonic() < deadline, f"the daemon never reached {point}"
        time.sleep(0.05)
    daemon.log.close()
    assert daemon.process.returncode == -signal.SIGKILL, daemon.log_text()[-3000:]


@pytest.mark.parametrize("filesystem", ["one", "two"])
def test_kills_at_every_accept_phase_leave_no_duplicate_no_renamed_job_and_no_lost_file(tmp_path, daemon_config,
                                                                                       filesystem):
    inbox = tmp_path / "inbox"
    if filesystem == "two":  # a real second file system: every accept copies, verifies and removes
        shm = Path("/dev/shm")
        if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("needs /dev/shm on another file system")
        inbox = shm / f"animad-chaos-{os.getpid()}-{time.time_ns()}"
    configure(daemon_config, windows=closed_window(), dirs={"inbox": str(inbox)})
    kills = [k for k in ACCEPT_KILLS if filesystem == "one" or k[2]]
    drops: dict[str, dict[str, str]] = {}
    per_phase: collections.Counter = collections.Counter()
    found: collections.Counter = collections.Counter()  # the accept.json phases the kills left
    try:
        for index, (point, visit, copy) in enumerate(kills):
            # A new drop each round (a subfolder too); the daemon first recovers the last round's kill.
            name = f"d{index}"
            folder = make_dataset(inbox / name, count=6, subsets={"": 4, "more": 3}, job=tiny_job(), seed=index)
            drops[name] = dataset_hashes(folder)
            env = {"ANIMAD_KILL_AT": f"{point}:{visit}", "ANIMAD_ACCEPT_COPY": "1" if copy else "0"}
            daemon = DaemonProcess(daemon_config, env=env).start()
            die_at(daemon, point, set(drops))
            per_phase[f"{point}:{visit}{' (copy)' if copy else ' (rename)'}"] += 1
            for row in daemon.queue.by_status(Status.ACCEPTING):  # what the next start will find
                record = AcceptRecord.read(Path(row["job_dir"])) if row["job_dir"] else None
                found[record.phase if record else "no record"] += 1
        daemon = DaemonProcess(daemon_config).start()  # no kill: every drop is taken
        rows = daemon.wait(lambda: (rs := daemon.queue.all()) and {r["name"] for r in rs if r["status"]
                                                                    == Status.QUEUED} == set(drops) and
                           not [r for r in rs if r["status"] == Status.ACCEPTING] and rs, what="every drop queued")
        daemon.stop()
        left_in_inbox = sorted(p.name for p in inbox.iterdir()) if inbox.is_dir() else []

        jobs = [r for r in rows  # an accept rolled back (cancelled, no job or outbox folder) is not a job
                if not (r["status"] == Status.CANCELLED and r["job_dir"] is None and r["outbox_dir"] is None)]
        duplicates = len(jobs) - len({r["name"] for r in jobs}) + len(left_in_inbox)
        renamed = 0
        lost = 0
        for row in jobs:
            paths = JobPaths(Path(row["job_dir"]))
            names = {row["name"], json.loads(paths.meta.read_text())["name"],
                     yaml.safe_load(paths.resolved.read_text())["name"]}
            renamed += names != {Path(row["source"]).name}
            have = dataset_hashes(paths.root / "dataset")
            lost += sum(have.get(rel) != digest for rel, digest in drops[row["name"]].items())
        outboxes = sorted(Path(r["outbox_dir"]).name for r in jobs)
        duplicates += len(outboxes) - len(set(outboxes)) + sum(o not in drops for o in outboxes)

        # The database lost: the rebuilt queue has the same jobs, names, creation times and outbox folders.
        for suffix in ("", "-wal", "-shm"):
            Path(f"{daemon.queue.path}{suffix}").unlink(missing_ok=True)
        daemon.queue.disconnect()
        daemon = DaemonProcess(daemon_config).start()
        rebuilt = daemon.wait(lambda: len(rs := daemon.queue.all()) == len(jobs) and rs, what="the rebuilt queue")
        daemon.stop()
        keys = ("id", "name", "created", "outbox_dir", "job_dir")
        renamed += sum([r[k] for k in keys] != [j[k] for k in keys] for r, j in zip(rebuilt, jobs))
    finally:
        if filesystem == "two":
            shutil.rmtree(inbox, ignore_errors=True)
    print(f"accept kills per phase ({filesystem} file system(s)):", dict(per_phase), "recorded phases left:",
          dict(found), f"duplicates {duplicates}, renamed jobs {renamed}, lost files {lost}", flush=True)
    assert sum(per_phase.values()) == len(kills)
    assert (duplicates, renamed, lost) == (0, 0, 0), (rows, left_in_inbox)
