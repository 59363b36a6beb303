"""What `animad status` shows (issue 13): the inbox beside the jobs, each phase with a figure and an ETA
while a live process works on it, nothing stale on jobs that no process runs, a table that stays aligned.

Real files, a real SQLite queue, the real Service ticked in this process (settle rules on the real
clock, the window at a local time the test sets) and the real `animad status` process.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from animad.config.daemon import load_daemon_config
from animad.daemon.inbox import SettleTracker
from animad.daemon.progress import PhaseClock, progress_figures
from animad.daemon.queue import Queue
from animad.daemon.states import Status
from animad.demo.synthetic import make_dataset, tiny_job
from daemon_helpers import HANG_SECONDS, ServiceInProcess, configure

NOON = dt.datetime(2026, 3, 2, 12, 0)  # outside the 22:00-07:00 window: jobs are queued, none starts


def animad(config: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "animad", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=HANG_SECONDS)


def set_settle(config: Path, seconds: float) -> None:
    data = yaml.safe_load(config.read_text())
    data["settle_seconds"] = seconds
    config.write_text(yaml.safe_dump(data))


def broken_folder(inbox: Path, name: str = "broken") -> Path:
    folder = make_dataset(inbox / name, job=tiny_job())
    (folder / "img001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


@pytest.fixture()
def config(daemon_config):
    return configure(daemon_config, windows=["22:00-07:00"])


# -- the inbox in status ------------------------------------------------------------------------------

def test_status_lists_settling_rejected_and_accepting_folders(config):
    daemon = load_daemon_config(config)
    inbox = daemon.dir("inbox")
    service = ServiceInProcess(config, NOON)
    try:
        broken = broken_folder(inbox)
        service.wait(lambda: (broken / "ERRORS.txt").is_file() and service.service.inbox.tracker.rejected,
                     what="the broken folder to be rejected")
    finally:
        service.close()
    set_settle(config, 600)  # the next drop settles for ten minutes: status shows it settling
    make_dataset(inbox / "fresh", job=tiny_job())
    halfway = make_dataset(inbox / "halfway", job=tiny_job())
    queue = Queue(daemon.dir("state") / "animad.sqlite")
    job_id = queue.add("halfway", str(halfway))  # what handle_folder writes first: the row, `accepting`
    (inbox / "nojob").mkdir()
    (inbox / "nojob" / "a.png").write_bytes((halfway / "img000.png").read_bytes())

    result = animad(config, "status")
    out = result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no jobs yet" not in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "rejected: ERROR img001.png" in lines["broken"] and str(broken / "ERRORS.txt") in lines["broken"]
    seconds = int(lines["fresh"].split("taken after ")[1].split()[0])
    assert "settling" in lines["fresh"] and 500 < seconds <= 600
    assert f"being accepted as job {job_id}" in lines["halfway"]
    assert "no job.yaml yet" in lines["nojob"]

    data = json.loads(animad(config, "status", "--json").stdout)
    by_name = {Path(e["folder"]).name: e for e in data["inbox"]}
    assert by_name["broken"]["state"] == "rejected" and by_name["broken"]["report"] == str(broken / "ERRORS.txt")
    assert by_name["fresh"]["state"] == "settling" and 500 < by_name["fresh"]["seconds_left"] <= 600
    assert by_name["halfway"] == {"folder": str(halfway), "state": "accepting", "job": job_id,
                                  "shown": f"being accepted as job {job_id} (frozen into its job folder)"}


def test_removing_the_image_the_report_names_gets_the_folder_checked_again_and_accepted(config, caplog):
    caplog.set_level(logging.INFO, logger="animad.inbox")
    inbox = load_daemon_config(config).dir("inbox")
    service = ServiceInProcess(config, NOON)
    try:
        broken = broken_folder(inbox)
        report = service.wait(lambda: (broken / "ERRORS.txt").is_file() and broken / "ERRORS.txt",
                              what="the broken folder to be rejected")
        assert "img001.png" in report.read_text()
        written = report.stat().st_mtime_ns
        # The report's own write is not a change: the folder is not checked again and again.
        settle = service.service.inbox.tracker.settle
        deadline = time.monotonic() + 3 * settle + 1
        while time.monotonic() < deadline:
            service.tick()
        assert report.stat().st_mtime_ns == written
        assert len([r for r in caplog.records if r.getMessage().startswith("rejected broken")]) == 1
        (broken / "img001.png").unlink()  # the fix the report asks for; job.yaml is not touched
        service.wait(lambda: (row := service.job("broken")) and row["status"] == Status.QUEUED,
                     what="the fixed folder to be accepted")
        assert not broken.exists()
    finally:
        service.close()


def test_the_tracker_sees_a_removal_and_settles_from_it(setup):
    _, _, inbox = setup
    folder = broken_folder(inbox)
    (folder / "ERRORS.txt").write_text("ERROR img001.png: cannot read\n")
    tracker = SettleTracker(inbox, settle_seconds=30)
    tracker.mark_rejected(folder)
    assert tracker.scan(now=time.time() + 100)[0] == []
    (folder / "ERRORS.txt").write_text("ERROR img001.png: cannot read (rewritten)\n")
    assert tracker.scan(now=time.time() + 100)[0] == []  # our report is not the user's change
    (folder / "img001.png").unlink()
    ready, wait = tracker.scan()
    assert ready == [] and 29 < wait <= 30  # a removal starts a new settle, like any change
    assert tracker.scan(now=time.time() + 31)[0] == [folder]


WRITER = """
import sys
with open(sys.argv[1], "a") as handle:
    handle.write("first half, ")
    handle.flush()
    print("open", flush=True)
    sys.stdin.readline()
    handle.write("second half\\n")
print("closed", flush=True)
"""


def test_a_folder_still_being_written_is_not_rejected_and_is_taken_when_closed(config):
    daemon = load_daemon_config(config)
    inbox = daemon.dir("inbox")
    service = ServiceInProcess(config, NOON)
    writer = None
    try:
        folder = make_dataset(inbox / "copying", job=tiny_job())
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder / "img000.txt")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "open"
        tracker = service.service.inbox.tracker
        service.wait(lambda: "copying" in tracker.busy, what="the folder to be seen busy")
        assert not (folder / "ERRORS.txt").exists() and "copying" not in tracker.rejected
        assert service.job("copying") is None  # no row at all: nothing was accepted or cancelled
        # The daemon writes its verdict for `status` (state/inbox.json) just after the tracker has it.
        def status_says_busy():
            out = animad(config, "status").stdout
            return out if "still open for writing" in out else None

        out = service.wait(status_says_busy, what="status to show the folder as still being written")
        assert "rejected" not in out, out
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "closed"
        row = service.wait_status("copying", Status.QUEUED)
        frozen = Path(row["job_dir"]) / "dataset" / "img000.txt"
        assert frozen.read_text().endswith("first half, second half\n") and not folder.exists()
    finally:
        if writer is not None:
            writer.stdin.close()
            writer.wait(timeout=HANG_SECONDS)
        service.close()
    assert not (daemon.dir("state") / "inbox.json").read_text().count("copying")


# -- each phase's figure and ETA ----------------------------------------------------------------------

def live(progress: dict, status=Status.RUNNING, heartbeat=None, **row) -> dict:
    return {"id": 1, "status": status, "pid": progress.get("pid"), "heartbeat": heartbeat, "held": 0,
            "progress": progress, "phase": "train", "error": None, **row}


def test_each_phase_has_a_figure_and_an_eta_from_its_own_rate():
    clock = PhaseClock()
    t = 1000.0
    clock.add({"phase": "loading"}, now=t)
    assert progress_figures(live(dict(clock.state)), t)["line"] == "loading the models"
    clock.add({"phase": "caching"}, now=t + 5)
    for done in range(0, 5):
        clock.add({"phase": "caching", "done": done, "total": 12}, now=t + 10 + 2 * done)  # 2 s an image
    shown = progress_figures(live(dict(clock.state), heartbeat=t + 18), t + 19)
    assert shown["line"].startswith("caching latents 4/12 ETA") and shown["eta_seconds"] == pytest.approx(15)
    # Training: two epochs of 10 steps at 1 s/it, then eval + save took 6 s; end at epoch 3.
    step = {"phase": "training", "epoch": 1, "max_epochs": 3, "step": 10, "total_steps": 30, "end_epoch": 3,
            "end_step": 30, "loss": 0.5, "s_per_it": 1.0, "eta_seconds": 20.0, "eta_until": "max_epochs 3"}
    clock.add(step, now=t + 100)
    assert "done" not in clock.state and "total" not in clock.state  # caching's counts are gone
    clock.add({"phase": "eval", "epoch": 1}, now=t + 101)
    clock.add({"phase": "saving", "epoch": 1}, now=t + 105)
    clock.add({**step, "epoch": 2, "step": 11, "eta_seconds": 19.0}, now=t + 107)
    assert clock.state["epoch_overhead_seconds"] == pytest.approx(6)
    shown = progress_figures(live(dict(clock.state), heartbeat=t + 107), t + 108)
    # 19 steps less the second since the report, plus eval+save for epochs 2 and 3.
    assert shown["eta_seconds"] == pytest.approx(18 + 2 * 6) and "ETA 0m30s to max_epochs 3" in shown["line"]
    clock.add({"phase": "eval", "epoch": 2}, now=t + 116)
    shown = progress_figures(live(dict(clock.state), heartbeat=t + 116), t + 118)
    assert "(evaluating epoch 2)" in shown["line"] and shown["eta_seconds"] == pytest.approx(19 + 4 + 6)
    # Selection, in its own process: its own words, then previews done/total with their ETA.
    select = PhaseClock()
    select.add({"phase": "selecting"}, now=t)
    line = progress_figures(live(dict(select.state), status=Status.SELECTING), t)["line"]
    assert line == "choosing the shortlist (floor analysis)"
    select.add({"phase": "previews", "done": 3, "total": 12, "eta_seconds": 90.0}, now=t + 30)
    shown = progress_figures(live(dict(select.state), status=Status.SELECTING, heartbeat=t + 30), t + 40)
    assert shown["line"] == "rendering previews 3/12 ETA 1m20s" and shown["eta_until"] == "the last preview"


def test_no_doubled_words_between_the_status_and_the_progress():
    for status in (Status.RUNNING, Status.SELECTING):
        for phase in ("loading", "caching", "selecting", "previews", "eval", "saving"):
            line = progress_figures(live({"phase": phase, "epoch": 1}, status=status))["line"]
            assert line.split()[0] != status, (status, phase, line)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_jobs_no_process_runs_show_where_they_stand_and_no_rate_or_eta(config):
    daemon = load_daemon_config(config)
    queue = Queue(daemon.dir("state") / "animad.sqlite")
    training = {"phase": "training", "epoch": 3, "max_epochs": 10, "step": 30, "total_steps": 100, "end_epoch": 10,
                "end_step": 100, "loss": 0.4, "s_per_it": 7.66, "eta_seconds": 2099.0, "eta_until": "max_epochs 10"}
    ids = {}
    for name, status, extra in [("paused", Status.PAUSED, {}), ("held", Status.QUEUED, {"held": 1}),
                                ("cancelled", Status.CANCELLED, {}), ("crashed", Status.QUEUED, {}),
                                ("exited", Status.RUNNING, {"pid": dead_pid()})]:
        ids[name] = queue.add(name, f"/nowhere/{name}")
        queue.update(ids[name], status=status, progress={**training, "pid": extra.get("pid", 1)}, **extra)
    result = animad(config, "status")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "s/it" not in out and "ETA" not in out, out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ID"))
    rows = lines[header + 1:header + 6]
    column = lines[header].index("PROGRESS")
    assert all(row[column - 1] == " " and row[column] != " " for row in rows), out  # aligned, "queued (held)" too
    by_name = {row.split()[1]: row[column:] for row in rows}
    assert by_name["paused"] == "saved at epoch 3/10 step 30/100"
    assert by_name["held"] == "resumes at epoch 3/10 step 30/100" and "queued (held)" in out
    assert by_name["cancelled"].startswith("cancelled at epoch 3/10 step 30/100; files kept")
    assert by_name["exited"].startswith("its process has exited")
    status_column = lines[header].index("STATUS")
    assert {row.split()[1]: row[status_column:].split("  ")[0] for row in rows}["exited"] == "exited"
    data = json.loads(animad(config, "status", "--json").stdout)
    shown = {j["name"]: j["shown"] for j in data["jobs"]}
    assert all(s["eta_seconds"] is None and not s["live"] for s in shown.values()), shown


def test_a_chained_job_says_what_it_waits_for():
    waiting = {"phase": "waiting", "waiting_for": "outfit-1", "waiting": "waiting for job outfit-1 to finish"}
    row = {"id": 2, "status": Status.QUEUED, "held": 0, "progress": waiting, "phase": "train", "error": None}
    assert progress_figures(row)["line"] == "waiting for job outfit-1 to finish"


def test_run_once_waits_for_a_folder_still_settling(config):
    """`animad run --once` (exit when idle) must not exit while a dropped folder is still settling."""
    set_settle(config, 600)
    inbox = load_daemon_config(config).dir("inbox")
    service = ServiceInProcess(config, NOON)
    try:
        service.tick()
        assert not service.service.has_work()  # an empty inbox and queue: --once may exit
        make_dataset(inbox / "late", job=tiny_job())
        service.wait(lambda: service.service.inbox.pending, what="the folder to be seen settling")
        assert service.service.has_work()
    finally:
        service.close()


def test_a_batch_split_after_running_out_of_memory_is_shown():
    step = {"phase": "training", "epoch": 1, "max_epochs": 3, "step": 4, "total_steps": 30, "loss": 0.5,
            "s_per_it": 1.0, "eta_seconds": 26.0, "micro_batch": 2}
    line = progress_figures(live(step), 0.0)["line"]
    assert "2 image(s) per forward after running out of GPU memory" in line, line
    assert "per forward" not in progress_figures(live({**step, "micro_batch": None}), 0.0)["line"]


def test_with_parallel_jobs_each_running_job_shows_its_gpu(config):
    """One job per GPU: a GPU column (aligned) saying which GPU each running job has; --json has it too.
    A one-slot daemon has no such column (nothing to choose)."""
    import os

    queue = Queue(load_daemon_config(config).dir("state") / "animad.sqlite")
    live = {"phase": "training", "epoch": 1, "max_epochs": 4, "step": 3, "total_steps": 12, "end_epoch": 4,
            "end_step": 12, "loss": 0.5, "s_per_it": 1.5, "eta_seconds": 20.0, "pid": os.getpid()}
    for name, status, slot in [("first", Status.RUNNING, 0), ("second", Status.SELECTING, 1),
                               ("waiting", Status.QUEUED, None)]:
        job = queue.add(name, f"/nowhere/{name}")
        queue.update(job, status=status, progress=live if slot is not None else None)
        if slot is not None:
            queue.claim(job, status, os.getpid(), slot=slot, gpu=str(slot))
    out = animad(config, "status").stdout
    assert "GPU" not in out  # one slot: the column would say nothing
    data = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**data, "gpus": [0, 1], "parallel_jobs": True}))
    out = animad(config, "status").stdout
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ID"))
    rows = {line.split()[1]: line for line in lines[header + 1:header + 4]}
    gpu, created = lines[header].index("GPU"), lines[header].index("CREATED")
    assert rows["first"][gpu:created].strip() == "gpu 0" and rows["second"][gpu:created].strip() == "gpu 1", out
    assert rows["waiting"][gpu:created].strip() == ""
    assert all(row[created - 1] == " " and row[created] != " " for row in rows.values()), out  # aligned
    shown = {j["name"]: j["shown"]["gpu"] for j in json.loads(animad(config, "status", "--json").stdout)["jobs"]}
    assert shown == {"first": "gpu 0", "second": "gpu 1", "waiting": None}


def test_status_names_a_lokr_or_loha_job_and_lora_goes_without_saying(config, tmp_path):
    daemon = load_daemon_config(config)
    queue = Queue(daemon.dir("state") / "animad.sqlite")
    training = {"phase": "training", "epoch": 3, "max_epochs": 10, "step": 30, "total_steps": 100, "end_epoch": 10,
                "end_step": 100, "loss": 0.4, "pid": 1}
    for name, network in [("plain", {"dim": 16}), ("kron", {"type": "lokr", "dim": 100000, "factor": 8}),
                          ("hada", {"type": "loha", "dim": 8})]:
        job_dir = tmp_path / "jobs" / name
        job_dir.mkdir(parents=True)
        (job_dir / "job.resolved.yaml").write_text(yaml.safe_dump({"name": name, "network": network}))
        row = queue.add(name, f"/nowhere/{name}")
        queue.update(row, status=Status.PAUSED, progress=training, job_dir=str(job_dir))
    data = json.loads(animad(config, "status", "--json").stdout)
    shown = {j["name"]: j["shown"] for j in data["jobs"]}
    assert {name: s["network"] for name, s in shown.items()} == {"plain": "LoRA", "kron": "LoKr", "hada": "LoHa"}
    assert shown["kron"]["line"].startswith("LoKr \u00b7 saved at epoch 3/10")
    assert shown["plain"]["line"].startswith("saved at epoch 3/10")
    out = animad(config, "status").stdout
    assert "LoHa \u00b7 saved at epoch 3/10" in out and "LoRA" not in out
