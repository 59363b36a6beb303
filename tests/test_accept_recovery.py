"""A daemon killed mid-accept (issue 23, defects 1-3 and two of 9): nothing duplicated, renamed or lost.

Each kill is real: tests/accept_kill.py runs the daemon's own accept in a process that SIGKILLs itself
at the chosen moment (mid-copy, after the dataset is in place, half way through removing the inbox
folder); the restart is the real Service (ticked in this process at a local time outside the window,
so nothing trains). Real files, real SQLite; every wait is for a state.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from animad.config.daemon import load_daemon_config
from animad.daemon.states import Status
from animad.demo.synthetic import make_dataset, tiny_job
from animad.layout import JobPaths
from daemon_helpers import HANG_SECONDS, ServiceInProcess, configure, hashes

NOON = dt.datetime(2026, 3, 2, 12, 0)  # outside the 22:00-07:00 window: jobs are queued, none starts
TESTS = Path(__file__).resolve().parent


@pytest.fixture()
def config(daemon_config):
    return configure(daemon_config, windows=["22:00-07:00"])


def kill_accept(config: Path, folder: Path, moment: str, copy: bool = False) -> None:
    """Accept folder in a process that is killed -9 at moment (see accept_kill.py)."""
    run = subprocess.run([sys.executable, str(TESTS / "accept_kill.py"), str(config), str(folder), moment]
                         + (["--copy"] if copy else []), capture_output=True, text=True, timeout=HANG_SECONDS)
    assert run.returncode == -signal.SIGKILL, (run.stdout + run.stderr)[-3000:]


def restart(config: Path) -> ServiceInProcess:
    """A new daemon (recovery at open), ticked until no row is accepting and the inbox holds no job."""
    service = ServiceInProcess(config, NOON)
    inbox = load_daemon_config(config).dir("inbox")
    service.wait(lambda: not [r for r in service.queue.all() if r["status"] == Status.ACCEPTING]
                 and not any((f / "job.yaml").exists() for f in inbox.iterdir()), what="the inbox to be taken")
    return service


def live(rows: list[dict]) -> list[dict]:
    """The rows that are jobs (an accept rolled back is cancelled with no outbox folder: not a job)."""
    return [r for r in rows
            if not (r["status"] == Status.CANCELLED and r["job_dir"] is None and r["outbox_dir"] is None)]


def lose_database(service: ServiceInProcess) -> None:
    service.close()
    service.queue.disconnect()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{service.queue.path}{suffix}").unlink(missing_ok=True)


def finish_training_and_package(row: dict) -> None:
    """What a trained and selected job leaves: finished.txt, then its review package in its outbox folder."""
    (Path(row["job_dir"]) / "finished.txt").write_text("floor\n")
    package = Path(row["outbox_dir"])
    package.mkdir(parents=True)
    (package / "index.html").write_text("<html></html>")


# -- 1: a half-removed inbox folder of a verified copy is removed, never trained again -----------------

def test_a_kill_while_the_inbox_folder_is_removed_finishes_the_removal_and_queues_nothing_again(config):
    daemon = load_daemon_config(config)
    folder = make_dataset(daemon.dir("inbox") / "xe", job=tiny_job(), count=20)
    before = hashes(folder)
    kill_accept(config, folder, "removed:9", copy=True)
    assert folder.is_dir() and 0 < len(hashes(folder)) < len(before)  # the kill landed half way

    service = restart(config)
    service.tick(5)
    rows = service.queue.all()
    service.close()
    assert not folder.exists()
    assert [(r["name"], r["status"], Path(r["outbox_dir"]).name) for r in live(rows)] == [("xe", Status.QUEUED, "xe")]
    assert hashes(Path(live(rows)[0]["job_dir"]) / "dataset") == before  # every file, from the verified copy


def test_a_new_folder_of_the_same_name_after_a_kill_mid_removal_is_a_new_job(config, tmp_path):
    daemon = load_daemon_config(config)
    folder = make_dataset(daemon.dir("inbox") / "xe", job=tiny_job(), count=6)
    kill_accept(config, folder, "removed:3", copy=True)
    # The user clears what is left and drops a new folder of the same name before the restart.
    shutil.rmtree(folder)
    newer = make_dataset(tmp_path / "staging" / "xe", job=tiny_job(), count=4, seed=7)
    newer_hashes = hashes(newer)
    os.rename(newer, folder)

    service = restart(config)
    rows = live(service.queue.all())
    service.close()
    assert [r["name"] for r in rows] == ["xe", "xe"]
    assert hashes(Path(rows[1]["job_dir"]) / "dataset") == newer_hashes


@pytest.mark.parametrize("moment", ["removed:5", "copied:3"])
def test_a_kill_mid_accept_and_a_lost_database_still_leave_one_job(config, moment):
    """The database lost too: the job folder's accept.json alone says how far the accept got."""
    daemon = load_daemon_config(config)
    folder = make_dataset(daemon.dir("inbox") / "xe", job=tiny_job(), count=8)
    before = hashes(folder)
    kill_accept(config, folder, moment, copy=True)
    queue_file = daemon.dir("state") / "animad.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{queue_file}{suffix}").unlink(missing_ok=True)

    service = restart(config)
    service.tick(5)
    rows = live(service.queue.all())
    service.close()
    assert not folder.exists()
    assert [(r["name"], r["status"], Path(r["outbox_dir"]).name) for r in rows] == [("xe", Status.QUEUED, "xe")]
    assert hashes(Path(rows[0]["job_dir"]) / "dataset") == before
    assert [p.name for p in (daemon.dir("state") / "jobs").iterdir()] == [Path(rows[0]["job_dir"]).name]


def test_an_inbox_folder_that_cannot_be_removed_after_its_copy_is_hidden_not_trained_again(config, monkeypatch):
    from animad.daemon.freeze import handle_folder

    daemon = load_daemon_config(config)
    folder = make_dataset(daemon.dir("inbox") / "xe", job=tiny_job(), count=6)
    before = hashes(folder)
    real_unlink, removed = os.unlink, []

    def unlink(path, *rest, **named):  # a read-only subfolder, as root cannot be refused by chmod
        if named.get("dir_fd") is not None and len(removed) >= 3:  # the removal: by directory descriptor
            raise PermissionError(13, "Permission denied", str(path))
        real_unlink(path, *rest, **named)
        if named.get("dir_fd") is not None:
            removed.append(path)

    monkeypatch.setenv("ANIMAD_ACCEPT_COPY", "1")
    monkeypatch.setattr(os, "unlink", unlink)
    service = ServiceInProcess(config, NOON)
    job_id = handle_folder(folder, daemon, service.queue)
    monkeypatch.setattr(os, "unlink", real_unlink)
    service.tick(5)
    rows = live(service.queue.all())
    service.close()
    aside = daemon.dir("inbox") / f".xe.accepted-as-job-{job_id}"
    assert not folder.exists() and aside.is_dir()
    assert [(r["id"], r["status"]) for r in rows] == [(job_id, Status.QUEUED)]
    assert hashes(Path(rows[0]["job_dir"]) / "dataset") == before


# -- 2: a job's name comes from its record, never from <job>/dataset ----------------------------------

@pytest.mark.parametrize("copy", [False, True], ids=["rename", "copy"])
def test_a_kill_after_the_dataset_was_placed_keeps_the_jobs_name(config, copy):
    daemon = load_daemon_config(config)
    folder = make_dataset(daemon.dir("inbox") / "cf", job=tiny_job())
    kill_accept(config, folder, "placed", copy=copy)

    service = restart(config)
    [row] = live(service.queue.all())
    paths = JobPaths(Path(row["job_dir"]))
    assert row["name"] == "cf" and row["status"] == Status.QUEUED
    assert json.loads(paths.meta.read_text())["name"] == "cf"
    assert json.loads(paths.meta.read_text())["source"] == str(folder)
    assert yaml.safe_load(paths.resolved.read_text())["name"] == "cf"

    lose_database(service)  # and the rebuilt row is `cf` too, with the same outbox folder and creation time
    service = ServiceInProcess(config, NOON)
    [rebuilt] = service.queue.all()
    assert [r["id"] for r in service.queue.by_name("cf")] == [row["id"]]  # what a chained job:cf looks up
    service.close()
    assert (rebuilt["name"], rebuilt["outbox_dir"], rebuilt["created"]) == (row["name"], row["outbox_dir"],
                                                                            row["created"])
    assert yaml.safe_load(paths.resolved.read_text())["name"] == "cf"


# -- 3: an accept rolled back holds no name and no outbox folder; a rebuild finds packages where they are

def test_a_kill_mid_copy_leaves_no_row_holding_the_name_or_its_outbox_folder(config):
    daemon = load_daemon_config(config)
    folder = make_dataset(daemon.dir("inbox") / "xa", job=tiny_job(), count=10)
    before = hashes(folder)
    kill_accept(config, folder, "copied:4", copy=True)
    assert hashes(folder) == before

    service = restart(config)  # rolled back, then the folder is taken again
    rows = service.queue.all()
    [job] = live(rows)
    assert Path(job["outbox_dir"]).name == "xa" and [r["id"] for r in service.queue.find("xa")] == [job["id"]]
    assert hashes(Path(job["job_dir"]) / "dataset") == before
    assert [p.name for p in (daemon.dir("state") / "jobs").iterdir()] == [Path(job["job_dir"]).name]
    finish_training_and_package(job)

    lose_database(service)
    service = ServiceInProcess(config, NOON)
    rebuilt = service.queue.all()
    service.close()
    assert [(r["id"], r["name"], r["status"], r["outbox_dir"]) for r in rebuilt] == [
        (job["id"], "xa", Status.DONE, job["outbox_dir"])]
    assert sorted(p.name for p in daemon.dir("outbox").iterdir()) == ["xa"]


def test_a_rebuilt_queue_keeps_names_creation_times_and_outbox_folders(config):
    daemon = load_daemon_config(config)
    service = ServiceInProcess(config, NOON)
    for seed in (1, 2):  # the same name twice: the second job's package goes to outbox/xa-2
        make_dataset(daemon.dir("inbox") / "xa", job=tiny_job(), seed=seed)
        service.wait(lambda: len([r for r in service.queue.all() if r["status"] == Status.QUEUED]) == seed,
                     what="the drop to be queued")
    rows = service.queue.all()
    assert [Path(r["outbox_dir"]).name for r in rows] == ["xa", "xa-2"]
    for row in rows:
        finish_training_and_package(row)
    lose_database(service)
    service = ServiceInProcess(config, NOON)
    rebuilt = service.queue.all()
    service.close()
    keys = ("id", "name", "created", "outbox_dir", "job_dir", "source")
    assert [[r[k] for k in keys] for r in rebuilt] == [[r[k] for k in keys] for r in rows]
    assert [r["status"] for r in rebuilt] == [Status.DONE, Status.DONE]


# -- 9: a killed package write leaves nothing behind once the package is written again ---------------

def test_a_killed_package_writes_leftovers_go_at_the_next_write_and_nothing_else_does(tmp_path):
    from animad.select.package import write_review_package
    from package_helpers import build_review

    outbox = tmp_path / "outbox"
    # The writer is killed -9 once the staging folder is full (LoRA copies, previews), before the rename.
    killed = subprocess.run([sys.executable, "-c", f"""
import os, signal, sys
sys.path.insert(0, {str(TESTS)!r})
from pathlib import Path
import animad.select.package as package
from package_helpers import build_review
review, _, _ = build_review(Path({str(tmp_path / 'killed')!r}))
real = package.build_package
def build_then_die(*args):
    real(*args)
    os.kill(os.getpid(), signal.SIGKILL)
package.build_package = build_then_die
package.write_review_package(Path({str(outbox)!r}) / "cat", review)
"""], capture_output=True, text=True, timeout=HANG_SECONDS)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    [leftover] = outbox.glob(".cat.partial-*")
    assert list(leftover.glob("*.safetensors"))
    # Not leftovers: a folder the user named so, and the staging folder of a writer that still runs.
    mine = outbox / ".cat.partial-my notes"
    mine.mkdir()
    (mine / "note.txt").write_text("mine\n")
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        other = outbox / f".cat.partial-{running.pid}-abcdefgh"
        other.mkdir()
        review, _, _ = build_review(tmp_path)
        package = write_review_package(outbox / "cat", review)  # the retry's write
        assert (package / "index.html").is_file()
        assert sorted(p.name for p in outbox.iterdir()) == sorted(["cat", mine.name, other.name])
    finally:
        running.kill()
        running.wait()
