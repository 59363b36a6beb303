"""Inbox: settle rules, validation reports, freezing into job folders, collisions, crash recovery."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from animad.config.daemon import load_daemon_config
from animad.daemon.freeze import finish_accepting, handle_folder
from animad.daemon.inbox import SettleTracker
from animad.daemon.queue import Queue
from animad.daemon.states import Status
from animad.layout import JobPaths
from animad.demo.synthetic import make_dataset, tiny_job


def age(folder: Path, seconds: float) -> None:
    """Make a folder look as if it was written `seconds` ago (mtime; ctime is handled by `now`)."""
    past = time.time() - seconds
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            os.utime(os.path.join(root, name), (past, past))


def test_folder_is_ready_only_after_the_settle_time(setup):
    daemon, _, inbox = setup
    tracker = SettleTracker(inbox, settle_seconds=30)
    folder = make_dataset(inbox / "cat", job=tiny_job())
    ready, wait = tracker.scan()
    assert ready == [] and 0 < wait <= 30  # just written: not yet
    ready, _ = tracker.scan(now=time.time() + 31)
    assert ready == [folder]
    (folder / "late.png").write_bytes((folder / "img000.png").read_bytes())  # still being copied
    ready, _ = tracker.scan(now=time.time() + 5)
    assert ready == []


def test_folder_without_job_yaml_waits(setup):
    _, _, inbox = setup
    make_dataset(inbox / "cat")
    assert SettleTracker(inbox, 0).scan(now=time.time() + 100)[0] == []


def test_moved_in_folder_is_ready_at_once(setup, tmp_path):
    _, _, inbox = setup
    staging = make_dataset(tmp_path / "elsewhere" / "cat", job=tiny_job())
    time.sleep(1.2)  # the files' ctimes are now older than the 1 s settle time
    os.rename(staging, inbox / "cat")  # a rename keeps the contents' ctimes
    ready, _ = SettleTracker(inbox, settle_seconds=1).scan()
    assert ready == [inbox / "cat"]


def test_good_folder_is_frozen_into_a_job(setup):
    daemon, queue, inbox = setup
    folder = make_dataset(inbox / "cat", job=tiny_job())
    job_id = handle_folder(folder, daemon, queue)
    row = queue.get(job_id)
    assert row["status"] == Status.QUEUED and not folder.exists()
    paths = JobPaths(Path(row["job_dir"]))
    assert (paths.root / "dataset" / "img000.png").is_file() and paths.resolved.is_file()
    assert "max_epochs: 3" in paths.resolved.read_text() and "dim: 4" in paths.resolved.read_text()
    assert Path(row["outbox_dir"]).name == "cat"


def test_same_name_twice_never_collides(setup):
    daemon, queue, inbox = setup
    first = handle_folder(make_dataset(inbox / "cat", job=tiny_job()), daemon, queue)
    second = handle_folder(make_dataset(inbox / "cat", job=tiny_job()), daemon, queue)
    a, b = queue.get(first), queue.get(second)
    assert a["job_dir"] != b["job_dir"] and Path(a["outbox_dir"]).name == "cat"
    assert Path(b["outbox_dir"]).name == "cat-2"


def test_bad_folder_gets_a_report_and_is_taken_once_fixed(setup):
    daemon, queue, inbox = setup
    folder = make_dataset(inbox / "broken", job=tiny_job())
    (folder / "job.yaml").write_text("netwrok: {dim: 4}\n")
    (folder / "img001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert handle_folder(folder, daemon, queue) is None
    report = (folder / "ERRORS.txt").read_text()
    assert "netwrok: unknown key" in report and "img001.png" in report
    assert folder.is_dir() and (folder / "img000.png").is_file()  # nothing moved or deleted
    tracker = SettleTracker(inbox, 0)
    tracker.mark_rejected(folder)
    assert tracker.scan(now=time.time() + 100)[0] == []  # not checked again until it changes
    (folder / "img001.png").unlink()
    (folder / "img001.txt").unlink()
    (folder / "job.yaml").write_text("trigger: '@demo'\ndata: {resolution: 64, min_bucket: 64}\n")
    assert tracker.scan(now=time.time() + 100)[0] == [folder]
    assert handle_folder(folder, daemon, queue) is not None
    assert not folder.exists()


def test_cross_filesystem_move_copies_and_verifies(tmp_path, daemon_config):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system available")
    import yaml

    inbox = Path(os.environ.get("TMPDIR_SHM", shm)) / f"animad-test-{os.getpid()}-{time.time_ns()}"
    config = yaml.safe_load(daemon_config.read_text())
    config["dirs"] = {"inbox": str(inbox)}
    daemon_config.write_text(yaml.safe_dump(config))
    daemon = load_daemon_config(daemon_config)
    queue = Queue(daemon.dir("state") / "animad.sqlite")
    folder = make_dataset(inbox / "cat", job=tiny_job())
    original = {p.name: p.read_bytes() for p in folder.iterdir()}
    job_id = handle_folder(folder, daemon, queue)
    dataset = Path(queue.get(job_id)["job_dir"]) / "dataset"
    assert {p.name: p.read_bytes() for p in dataset.iterdir()} == original and not folder.exists()
    import shutil

    shutil.rmtree(inbox, ignore_errors=True)


def test_interrupted_accept_is_finished_on_restart(setup):
    daemon, queue, inbox = setup
    folder = make_dataset(inbox / "cat", job=tiny_job())
    # A kill right after the rename into the job folder, before the row became 'queued':
    job_id = queue.add("cat", str(folder))
    job_dir = daemon.dir("state") / "jobs" / f"{job_id}-cat"
    job_dir.mkdir(parents=True)
    os.rename(folder, job_dir / "dataset")
    queue.update(job_id, job_dir=str(job_dir), outbox_dir=str(daemon.dir("outbox") / "cat"))
    # ... and one killed before anything moved:
    other = make_dataset(inbox / "dog", job=tiny_job())
    early = queue.add("dog", str(other))
    finish_accepting(daemon, queue)
    assert queue.get(job_id)["status"] == Status.QUEUED and (job_dir / "job.resolved.yaml").is_file()
    assert queue.get(early)["status"] == Status.CANCELLED and other.is_dir()  # still in the inbox, taken again


def test_stopping_the_watcher_logs_no_error(setup, caplog):
    """`animad run --once` ends with the watcher's stop: watchdog's emitter may run its loop once more
    after that (a race in its stop), which it logs as an ERROR; a clean exit must log none."""
    import logging
    import threading

    from animad.daemon.inbox import InboxWatcher

    _, _, inbox = setup
    watcher = InboxWatcher(inbox, threading.Event())
    watcher.start()
    (inbox / "a.txt").write_text("an event in flight")
    emitters = list(watcher.observer.emitters)
    with caplog.at_level(logging.INFO):
        watcher.stop()
        for emitter in emitters:  # the loop's one more turn, as the race makes it
            emitter.queue_events(0)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
