"""The daemon on a temp dir: drops, slow copies, bad folders, windows, kill -9.

The window tests tick the Service in this process at a time they set; the others run the real
`animad run` process (the CLI talks to it, kill -9 hits it).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from animad.daemon.states import ACTIVE, Status
from animad.demo.synthetic import make_dataset, tiny_job
from animad.layout import read_epochs_log

from daemon_helpers import DaemonProcess, ServiceInProcess, configure, drop

pytestmark = pytest.mark.slow


def epochs_of(row) -> list[int]:
    return [r["epoch"] for r in read_epochs_log(Path(row["job_dir"]) / "epochs.jsonl")]


def epoch_files(row) -> list[str]:
    return sorted(p.name for p in (Path(row["job_dir"]) / "epochs").glob("*.safetensors"))


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_two_drops_one_slow_copy_and_a_bad_folder(tmp_path, daemon_config):
    configure(daemon_config)
    daemon = DaemonProcess(daemon_config).start()
    inbox = tmp_path / "inbox"
    try:
        # 1) a bad folder: malformed job.yaml and a corrupt image -> ERRORS.txt naming both
        bad = make_dataset(tmp_path / "staging" / "bad", count=4, job=tiny_job())
        (bad / "job.yaml").write_text("data: {batch_size: four}\n")
        (bad / "img002.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
        bad = drop(bad, inbox)
        report = daemon.wait(lambda: (bad / "ERRORS.txt").is_file() and (bad / "ERRORS.txt").read_text(),
                             what="ERRORS.txt")
        assert "data.batch_size" in report and "img002.png" in report

        # 2) "first" is moved in whole; "slow" is copied file by file over ~3 s (settle time is 1 s)
        first = make_dataset(tmp_path / "staging" / "first", count=6, job=tiny_job(epochs=2))
        source = make_dataset(tmp_path / "staging" / "slow-src", count=6, job=tiny_job(epochs=2))
        time.sleep(1.1)
        drop(first, inbox)
        slow = inbox / "slow"
        slow.mkdir()
        copied_at = {}

        def copy_slowly():
            for path in sorted(source.iterdir()):
                (slow / path.name).write_bytes(path.read_bytes())
                copied_at[path.name] = time.time()
                time.sleep(0.25 if path.name != "job.yaml" else 0.9)

        files = sorted(p.name for p in source.iterdir())
        files.remove("job.yaml")
        (slow / "job.yaml").write_text((source / "job.yaml").read_text())  # job.yaml first: worst case
        copier = threading.Thread(target=copy_slowly)
        copier.start()
        first_row = daemon.wait_status("first", Status.QUEUED, *ACTIVE, Status.DONE)
        copier.join()
        slow_row = daemon.wait_status("slow", Status.QUEUED, *ACTIVE, Status.DONE)
        taken = daemon.queue.get(slow_row["id"])["created"]
        assert taken >= max(copied_at.values()) + 0.9  # never taken before the copy had settled
        assert first_row["id"] < slow_row["id"]

        # 3) the daemon kept serving: fixing the bad folder's job.yaml in place gets it accepted
        (bad / "img002.png").unlink()
        (bad / "img002.txt").unlink()
        (bad / "job.yaml").write_text(json.dumps(tiny_job(epochs=1)))
        daemon.wait_status("bad", Status.QUEUED, *ACTIVE, Status.DONE)

        # 4) both are trained and done, in order, each with a review package
        done_first = daemon.wait_status("first", Status.DONE, Status.FAILED)
        done_slow = daemon.wait_status("slow", Status.DONE, Status.FAILED)
        assert done_first["status"] == Status.DONE, done_first["error"]
        assert done_slow["status"] == Status.DONE, done_slow["error"]
        assert done_first["finished"] < done_slow["finished"]
        for row in (done_first, done_slow):
            assert (Path(row["outbox_dir"]) / "index.html").is_file()
            assert epochs_of(row) == list(range(1, len(epochs_of(row)) + 1))
    finally:
        daemon.stop()


def test_status_shows_a_running_jobs_progress(tmp_path, daemon_config):
    configure(daemon_config)
    daemon = DaemonProcess(daemon_config).start()
    try:
        job = tiny_job(epochs=30, selection={"stop_at_floor": False}, data={"batch_size": 1, "repeats": 4})
        drop(make_dataset(tmp_path / "staging" / "busy", count=8, job=job), tmp_path / "inbox")
        daemon.wait(lambda: (row := daemon.job("busy")) and "s_per_it" in (row["progress"] or {}),
                    what="training progress")
        out = subprocess.run([sys.executable, "-m", "animad", "--config", str(daemon_config), "status"],
                             capture_output=True, text=True, timeout=60).stdout
        assert "busy" in out and "running" in out and "epoch" in out and "loss" in out and "s/it" in out
        data = json.loads(subprocess.run([sys.executable, "-m", "animad", "--config", str(daemon_config), "status",
                                          "--json"], capture_output=True, text=True, timeout=60).stdout)
        progress = [j for j in data["jobs"] if j["name"] == "busy"][0]["progress"]
        assert {"epoch", "step", "loss", "s_per_it", "eta_seconds"} <= set(progress)
        assert data["daemon"]["running"] and data["window"]["open"]
        # pause and resume through the CLI
        subprocess.run([sys.executable, "-m", "animad", "--config", str(daemon_config), "pause", "busy"], check=True,
                       capture_output=True, timeout=60)
        paused = daemon.wait_status("busy", Status.PAUSED)
        assert paused["held"] == 1
        subprocess.run([sys.executable, "-m", "animad", "--config", str(daemon_config), "cancel", "busy"], check=True,
                       capture_output=True, timeout=60)
        assert daemon.wait_status("busy", Status.CANCELLED)
    finally:
        daemon.stop()


def test_window_close_pauses_and_next_window_resumes(tmp_path, daemon_config):
    configure(daemon_config, windows=["22:00-07:00"])
    daemon = ServiceInProcess(daemon_config, now=at("2026-11-23T23:00:00+01:00"))  # inside 22:00-07:00
    try:
        job = tiny_job(epochs=6, selection={"stop_at_floor": False}, data={"batch_size": 1, "repeats": 6})
        drop(make_dataset(tmp_path / "staging" / "night", count=8, job=job), tmp_path / "inbox")
        row = daemon.wait(lambda: (r := daemon.job("night")) and r["job_dir"] and len(epochs_of(r)) >= 2 and r,
                          what="two epochs")
        daemon.now = at("2026-11-24T07:00:30+01:00")  # the window closes mid-run
        paused = daemon.wait_status("night", Status.PAUSED)
        assert not paused["held"]
        import torch

        state = torch.load(Path(row["job_dir"]) / "state" / "resume.pt", weights_only=False)
        saved_step = state["global_step"]
        daemon.tick(20)
        assert daemon.job("night")["status"] == Status.PAUSED  # stays paused while the window is closed
        assert daemon.service.runner.child is None
        daemon.now = at("2026-11-24T22:00:05+01:00")  # the next night
        done = daemon.wait_status("night", Status.DONE, Status.FAILED)
        assert done["status"] == Status.DONE, done["error"]
        assert epochs_of(done) == [1, 2, 3, 4, 5, 6]
        assert epoch_files(done) == [f"night-e{e:04d}.safetensors" for e in range(1, 7)]
        log = (Path(done["job_dir"]) / "train.log").read_text()
        assert f"(optimizer step {saved_step})" in log  # resumed from exactly the saved step
    finally:
        daemon.close()


def test_kill_9_of_daemon_and_job_mid_training_then_restart(tmp_path, daemon_config):
    configure(daemon_config)
    daemon = DaemonProcess(daemon_config).start()
    job = tiny_job(epochs=5, selection={"stop_at_floor": False}, data={"batch_size": 1, "repeats": 6},
                   schedule={"max_epochs": 5, "state_every_minutes": 0.005})
    drop(make_dataset(tmp_path / "staging" / "crash", count=8, job=job), tmp_path / "inbox")
    daemon.wait(lambda: (r := daemon.job("crash")) and r["job_dir"] and len(epochs_of(r)) >= 2, what="2 epochs")
    time.sleep(0.5)
    daemon.kill_everything()
    assert daemon.job("crash")["status"] == Status.RUNNING  # what a power cut leaves behind
    restarted = DaemonProcess(daemon_config).start()
    try:
        done = restarted.wait_status("crash", Status.DONE, Status.FAILED)
        assert done["status"] == Status.DONE, done["error"]
        assert epochs_of(done) == [1, 2, 3, 4, 5]  # nothing lost, nothing duplicated
        assert epoch_files(done) == [f"crash-e{e:04d}.safetensors" for e in range(1, 6)]
        assert "resumes from its last saved state" in restarted.log_text()
        assert done["attempts"] >= 3  # train, resumed train, select
    finally:
        restarted.stop()


def test_twenty_folders_dropped_at_once_are_all_queued_in_order(tmp_path, daemon_config):
    configure(daemon_config, windows=["22:00-07:00"])
    staging = tmp_path / "staging"
    folders = [make_dataset(staging / f"set{i:02d}", count=2, seed=i, job=tiny_job(epochs=1)) for i in range(18)]
    for i in range(2):  # two drops whose job.yaml asks for the same name
        folders.append(make_dataset(staging / f"twin{i}", count=2, seed=50 + i, job={**tiny_job(epochs=1),
                                                                                     "name": "twin"}))
    bad = make_dataset(staging / "broken", count=2, job=tiny_job())
    (bad / "job.yaml").write_text("optimizer: {type: adamw, lr: fast}\n")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    # Noon: the window is closed, so the jobs queue up and wait.
    daemon = ServiceInProcess(daemon_config, now=at("2026-11-24T12:00:00+01:00"))
    try:
        for folder in [*folders, bad]:  # 21 renames within a few milliseconds
            drop(folder, inbox)
        rows = daemon.wait(lambda: len(r := daemon.queue.by_status(Status.QUEUED)) == 20 and r,
                           what="20 queued jobs")
        report = daemon.wait(lambda: (inbox / "broken" / "ERRORS.txt").is_file()
                             and (inbox / "broken" / "ERRORS.txt").read_text(), what="the bad folder's report")
        assert "optimizer.lr" in report
        # Every good folder was frozen into its own job folder with all its files; none collided.
        job_dirs = {row["job_dir"] for row in rows}
        assert len(job_dirs) == 20
        assert sorted(row["name"] for row in rows) == sorted([f"set{i:02d}" for i in range(18)] + ["twin"] * 2)
        for row in rows:
            images = list((Path(row["job_dir"]) / "dataset").glob("*.png"))
            assert len(images) == 2, row
        assert sorted(p.name for p in inbox.iterdir()) == ["broken"]  # only the rejected one stays
        # FIFO: nothing jumps the queue, nothing runs outside the window, and the daemon carries on
        # (a tick that raised would fail this test: nothing catches it here).
        ordered = sorted(rows, key=lambda r: r["id"])
        assert [r["created"] for r in ordered] == sorted(r["created"] for r in ordered)
        daemon.tick(20)
        assert not daemon.queue.by_status(*ACTIVE) and daemon.service.runner.child is None
    finally:
        daemon.close()
