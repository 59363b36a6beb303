"""Nothing a user owns is lost when the queue database is reset, emptied, deleted or damaged (issue 11).

Real files, a real SQLite file and the real Service (ticked in this process at a local time outside
the window, so nothing trains) or a real `animad` process; every wait is for a state.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from animad.config.daemon import load_daemon_config
from animad.daemon.freeze import finish_accepting
from animad.daemon.queue import Queue
from animad.daemon.states import Phase, Status
from animad.demo.synthetic import make_dataset, tiny_job
from animad.outcomes import Exit
from daemon_helpers import HANG_SECONDS, ServiceInProcess, configure, hashes

NOON = dt.datetime(2026, 3, 2, 12, 0)  # outside the 22:00-07:00 window: jobs are queued, none starts
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def config(daemon_config):
    return configure(daemon_config, windows=["22:00-07:00"])


def all_dataset_hashes(state: Path) -> list[dict[str, str]]:
    return [hashes(d / "dataset") for d in sorted((state / "jobs").iterdir()) if (d / "dataset").is_dir()]


def reset_database(state: Path, how: str) -> None:
    db = state / "animad.sqlite"
    for part in (Path(f"{db}-wal"), Path(f"{db}-shm")):
        part.unlink(missing_ok=True)
    if how == "truncate":
        db.write_bytes(b"")  # `: > state/animad.sqlite`
    else:
        db.unlink()


def drop_and_queue(service: ServiceInProcess, inbox: Path, name: str, seed: int, extra: bool = False):
    folder = make_dataset(inbox / name, job=tiny_job(), seed=seed)
    if extra:
        (folder / "extra.txt").write_text("a file only the second drop has\n")
    before = hashes(folder)
    count = len([r for r in service.queue.all() if r["status"] == Status.QUEUED])
    service.wait(lambda: len([r for r in service.queue.all() if r["status"] == Status.QUEUED]) > count,
                 HANG_SECONDS, f"{name} to be queued")
    assert not folder.exists()
    return before


# -- 1: a job folder name is never reused; the inbox goes only after a copy of that very folder ------

@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_redropped_dataset_after_a_database_reset_keeps_every_byte_of_both_drops(config, how):
    daemon = load_daemon_config(config)
    state, inbox = daemon.dir("state"), daemon.dir("inbox")
    first = ServiceInProcess(config, NOON)
    old = drop_and_queue(first, inbox, "drop00", seed=1)
    first.close()
    first.queue.disconnect()
    reset_database(state, how)

    second = ServiceInProcess(config, NOON)  # the old job is re-registered from its folder
    new = drop_and_queue(second, inbox, "drop00", seed=2, extra=True)
    second.close()
    third = ServiceInProcess(config, NOON)  # the restart that used to delete the new drop
    third.tick(3)
    rows = third.queue.all()
    third.close()

    kept = all_dataset_hashes(state)
    assert old in kept and new in kept and old != new
    assert len({r["job_dir"] for r in rows}) == len(rows) == 2
    assert {r["status"] for r in rows} == {Status.QUEUED}


def test_accept_that_finds_another_jobs_dataset_keeps_the_inbox_folder(config):
    """The old failure: an `accepting` row whose job folder holds an older job's dataset."""
    daemon = load_daemon_config(config)
    queue = Queue(daemon.dir("state") / "animad.sqlite")
    old_dataset = make_dataset(daemon.dir("state") / "jobs" / "1-drop00" / "dataset", job=tiny_job(), seed=1)
    new = make_dataset(daemon.dir("inbox") / "drop00", job=tiny_job(), seed=2)
    before = hashes(new)
    job_id = queue.add("drop00", str(new))
    queue.update(job_id, job_dir=str(old_dataset.parent))
    finish_accepting(daemon, queue)
    assert hashes(new) == before  # no manifest of this folder was verified: it stays
    assert queue.get(job_id)["status"] != Status.ACCEPTING


def test_ids_start_above_every_job_folder_on_disk(config):
    daemon = load_daemon_config(config)
    (daemon.dir("state") / "jobs" / "41-old").mkdir(parents=True)
    queue = Queue(daemon.dir("state") / "animad.sqlite")
    from animad.daemon.freeze import handle_folder
    job_id = handle_folder(make_dataset(daemon.dir("inbox") / "new", job=tiny_job()), daemon, queue)
    assert job_id == 42 and Path(queue.get(job_id)["job_dir"]).name == "42-new"


def test_an_accept_that_cannot_finish_leaves_the_inbox_folder_and_no_accepting_row(config):
    daemon = load_daemon_config(config)
    queue = Queue(daemon.dir("state") / "animad.sqlite")
    folder = make_dataset(daemon.dir("inbox") / "cat", job=tiny_job())
    before = hashes(folder)
    daemon.dir("state").mkdir(parents=True, exist_ok=True)
    (daemon.dir("state") / "jobs").write_text("in the way")  # no job folder can be made
    from animad.daemon.freeze import handle_folder
    with pytest.raises(OSError):
        handle_folder(folder, daemon, queue)
    assert hashes(folder) == before
    assert [r["status"] for r in queue.all()] == [Status.CANCELLED]


def test_a_copy_to_another_file_system_is_checked_against_its_manifest(config, tmp_path):
    from animad.daemon.freeze import MANIFEST, folder_manifest, matches_manifest, move_dataset

    source = make_dataset(tmp_path / "src", job=tiny_job())
    manifest = folder_manifest(source)
    assert matches_manifest(source, manifest, copy=False)
    (source / "job.yaml").write_text("changed: after the settle\n")
    assert not matches_manifest(source, manifest, copy=False)
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system")
    other = make_dataset(shm / f"animad-durability-{os.getpid()}", job=tiny_job())
    try:
        before = hashes(other)
        target = tmp_path / "jobs" / "1-x" / "dataset"
        move_dataset(other, target)
        assert hashes(target) == before and not other.exists()
        assert json.loads((target.parent / MANIFEST).read_text())["source"] == str(other)
    finally:
        shutil.rmtree(other, ignore_errors=True)


# -- 2: an emptied or deleted database is rebuilt from the job folders --------------------------------

def fifty_job_folders(config) -> tuple[Path, dict[int, tuple]]:
    """Accept one job for real, then make 50 job folders from it in every state a folder can be in."""
    daemon = load_daemon_config(config)
    state = daemon.dir("state")
    service = ServiceInProcess(config, NOON)
    drop_and_queue(service, daemon.dir("inbox"), "seed", seed=3)
    service.close()
    template = Path(service.queue.all()[0]["job_dir"])
    service.queue.disconnect()
    expected = {}
    for job_id in range(2, 52):
        name = f"job{job_id:02d}"
        folder = state / "jobs" / f"{job_id}-{name}"
        shutil.copytree(template, folder)
        meta = json.loads((folder / "job.json").read_text())
        (folder / "job.json").write_text(json.dumps({**meta, "name": name}))
        record = json.loads((folder / "accept.json").read_text())  # the job's own record, as accepting writes it
        (folder / "accept.json").write_text(json.dumps({**record, "job": job_id, "name": name,
                                                        "outbox_dir": str(daemon.dir("outbox") / name)}))
        kind = job_id % 5
        if kind == 1:  # paused mid-run: a resume state
            (folder / "state").mkdir(exist_ok=True)
            (folder / "state" / "resume.pt").write_bytes(b"state")
            expected[job_id] = (Status.QUEUED, Phase.TRAIN, 1)
        elif kind == 2:  # trained, killed before its package
            (folder / "finished.txt").write_text("floor\n")
            expected[job_id] = (Status.QUEUED, Phase.SELECT, 1)
        elif kind == 3:  # done: trained and packaged
            (folder / "finished.txt").write_text("floor\n")
            (daemon.dir("outbox") / name).mkdir(parents=True)
            (daemon.dir("outbox") / name / "index.html").write_text("<html></html>")
            expected[job_id] = (Status.DONE, Phase.SELECT, 0)
        elif kind == 4:  # killed between the move and the job files
            for file in ("job.resolved.yaml", "job.json", "report.json"):
                (folder / file).unlink()
            expected[job_id] = (Status.QUEUED, Phase.TRAIN, 0)
        else:
            expected[job_id] = (Status.QUEUED, Phase.TRAIN, 0)
    expected[1] = (Status.QUEUED, Phase.TRAIN, 0)
    return state, expected


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_fifty_jobs_survive_an_emptied_or_deleted_database(config, how):
    state, expected = fifty_job_folders(config)
    datasets = all_dataset_hashes(state)
    reset_database(state, how)
    service = ServiceInProcess(config, NOON)
    rows = {r["id"]: r for r in service.queue.all()}
    service.close()
    assert len(rows) == 51
    for job_id, (status, phase, first) in expected.items():
        row = rows[job_id]
        assert (row["status"], row["phase"], row["resume_first"]) == (status, phase, first), row
        assert Path(row["job_dir"]).name.startswith(f"{job_id}-") and (Path(row["job_dir"]) / "job.resolved.yaml").is_file()
    assert all_dataset_hashes(state) == datasets
    assert len({r["outbox_dir"] for r in rows.values()}) == 51


# -- 3: a damaged database -----------------------------------------------------------------------------

def damage(state: Path) -> bytes:
    db = state / "animad.sqlite"
    data = bytearray(db.read_bytes())
    data[:16] = b"this is garbage!"
    db.write_bytes(bytes(data))
    for part in (Path(f"{db}-wal"), Path(f"{db}-shm")):
        part.unlink(missing_ok=True)
    return bytes(data)


def animad(config: Path, *args, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "animad", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=HANG_SECONDS, cwd=config.parent, **popen)


def test_a_damaged_database_is_set_aside_and_rebuilt_and_status_says_so_in_one_line(config, caplog):
    state, expected = fifty_job_folders(config)
    garbage = damage(state)
    shown = animad(config, "status")
    assert shown.returncode == 2 and "Traceback" not in shown.stderr, shown.stderr
    assert len(shown.stderr.strip().splitlines()) == 1 and str(state / "animad.sqlite") in shown.stderr

    with caplog.at_level("ERROR", logger="animad.daemon"):
        service = ServiceInProcess(config, NOON)
    rows = service.queue.all()
    service.close()
    aside = list(state.glob("animad.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage  # kept as it was, never deleted
    assert str(aside[0]) in caplog.text and str(state / "animad.sqlite") in caplog.text
    assert len(rows) == len(expected) == 51
    assert animad(config, "status").returncode == 0


def test_a_database_that_cannot_be_rebuilt_exits_needing_a_person(config):
    state, _ = fifty_job_folders(config)
    damage(state)

    def no_file_writes():  # the new database cannot be written: nothing the daemon may fix alone
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    ran = animad(config, "run", preexec_fn=no_file_writes)
    said = ran.stdout + ran.stderr  # the daemon logs to stdout (journald)
    assert ran.returncode == Exit.NEEDS_PERSON, said
    assert "Traceback" not in said and "by hand" in said and str(state / "animad.sqlite") in said
    assert (state / "jobs").is_dir() and not list(state.glob("animad.sqlite.corrupt-*-wal"))
    unit = (REPO / "systemd" / "animad.service").read_text()
    assert f"RestartPreventExitStatus={int(Exit.NEEDS_PERSON)}" in unit


# -- 7: a writer that pauses past the settle never writes into a frozen job ---------------------------

WRITER = """
import sys
path = sys.argv[1]
with open(path, "a") as handle:
    handle.write("first half, ")
    handle.flush()
    print("open", flush=True)
    sys.stdin.readline()  # paused, handle open, until the test says go on
    handle.write("second half\\n")
print("closed", flush=True)
"""


def test_a_paused_writer_keeps_its_folder_in_the_inbox_until_it_is_done(config):
    from animad.daemon.freeze import FolderBusy, handle_folder

    daemon = load_daemon_config(config)
    queue = Queue(daemon.dir("state") / "animad.sqlite")
    folder = make_dataset(daemon.dir("inbox") / "cat", job=tiny_job())
    caption = sorted(folder.glob("*.txt"))[0]
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(caption)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(FolderBusy, match=f"pid {writer.pid}"):
            handle_folder(folder, daemon, queue)
        assert folder.is_dir() and not list((daemon.dir("state") / "jobs").glob("*/dataset"))
        assert all(r["status"] != Status.ACCEPTING for r in queue.all())
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "closed"
    finally:
        writer.stdin.close()
        writer.wait(timeout=HANG_SECONDS)
    content = caption.read_text()
    job_id = handle_folder(folder, daemon, queue)
    frozen = Path(queue.get(job_id)["job_dir"]) / "dataset" / caption.name
    assert frozen.read_text() == content and content.endswith("first half, second half\n")


def test_a_folder_written_after_it_settled_is_put_back_for_another_settle(config, tmp_path):
    from animad.daemon.freeze import FolderBusy, folder_manifest, move_dataset

    source = make_dataset(tmp_path / "inbox" / "cat", job=tiny_job())
    settled = folder_manifest(source, hashes=False)
    writer = subprocess.run([sys.executable, "-c", f"open({str(source / 'late.txt')!r}, 'w').write('late')"])
    assert writer.returncode == 0
    before = hashes(source)
    target = tmp_path / "jobs" / "1-cat" / "dataset"
    with pytest.raises(FolderBusy, match="changed after it settled"):
        move_dataset(source, target, settled)
    assert hashes(source) == before and not target.exists()
    move_dataset(source, target, folder_manifest(source, hashes=False))  # settled again: taken
    assert hashes(target) == before


def test_an_accept_stopped_after_the_freeze_is_completed_at_the_next_start(config):
    daemon = load_daemon_config(config)
    queue = Queue(daemon.dir("state") / "animad.sqlite")
    job_dir = daemon.dir("state") / "jobs" / "1-cat"
    make_dataset(job_dir / "dataset", job=tiny_job())
    job_id = queue.add("cat", str(daemon.dir("inbox") / "cat"))
    queue.update(job_id, job_dir=str(job_dir), status=Status.FAILED, error="accepting stopped: disk full")
    service = ServiceInProcess(config, NOON)
    row = service.queue.get(job_id)
    service.close()
    assert row["status"] == Status.QUEUED and (job_dir / "job.resolved.yaml").is_file()


# -- cancelled jobs stay cancelled when the queue is rebuilt from the job folders ---------------------

def test_cancelled_jobs_stay_cancelled_after_the_database_is_rebuilt_and_retry_clears_it(config):
    daemon = load_daemon_config(config)
    state = daemon.dir("state")
    service = ServiceInProcess(config, NOON)
    drop_and_queue(service, daemon.dir("inbox"), "keep", seed=1)
    drop_and_queue(service, daemon.dir("inbox"), "drop", seed=2)
    service.close()
    ids = {r["name"]: r["id"] for r in service.queue.all()}
    service.queue.disconnect()
    cancelled = animad(config, "cancel", "drop")
    assert cancelled.returncode == 0, cancelled.stderr
    reset_database(state, "delete")
    service = ServiceInProcess(config, NOON)
    rows = {r["name"]: r for r in service.queue.all()}
    service.close()
    service.queue.disconnect()
    assert rows["drop"]["status"] == Status.CANCELLED and rows["drop"]["id"] == ids["drop"]
    assert rows["keep"]["status"] == Status.QUEUED
    # retry undoes the cancel on disk too: a second rebuild queues it
    assert animad(config, "retry", "drop").returncode == 0
    reset_database(state, "truncate")
    service = ServiceInProcess(config, NOON)
    rows = {r["name"]: r for r in service.queue.all()}
    service.close()
    assert rows["drop"]["status"] == Status.QUEUED
