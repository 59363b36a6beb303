"""Chained runs (issue 10, item 4): network.init_from: job:<name> waits in the queue for that job, then
continues from its chosen epoch, copied into its own folder. Real SQLite rows and job folders; the
2-stage run goes through the real Service with real job children on the tiny model."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from animad.config.daemon import load_daemon_config
from animad.config.job import JobReference, parse_job_reference
from animad.daemon import chain
from animad.daemon.queue import Queue
from animad.daemon.states import Status
from animad.demo.synthetic import make_dataset, tiny_job
from animad.intake.check import check_folder
from animad.layout import JobPaths
from daemon_helpers import ServiceInProcess, configure, drop


# -- the form ------------------------------------------------------------------------------------

def test_job_reference_forms():
    assert parse_job_reference("old.safetensors") is None
    assert parse_job_reference("job:outfit-1") == JobReference("outfit-1")
    assert parse_job_reference("job:outfit-1@7") == JobReference("outfit-1", epoch=7)
    assert parse_job_reference("job:outfit-1@last") == JobReference("outfit-1", last=True)
    assert parse_job_reference("job:me@home@last") == JobReference("me@home", last=True)
    for bad in ("job:", "job:@3", "job:x@", "job:x@0", "job:x@seven", "job:me@home"):
        with pytest.raises(ValueError):
            parse_job_reference(bad)


def test_check_accepts_the_job_form_and_rejects_a_malformed_one(tmp_path, daemon_config):
    daemon = load_daemon_config(daemon_config)
    good = make_dataset(tmp_path / "good", count=2, job=tiny_job(network={"dim": 4, "init_from": "job:outfit-1@2"}))
    result = check_folder(good, daemon)
    assert result.ok, result.report()  # no file to find: the queue resolves it
    bad = make_dataset(tmp_path / "bad", count=2, job=tiny_job(network={"dim": 4, "init_from": "job:outfit-1@two"}))
    errors = [p for p in check_folder(bad, daemon).problems.errors if p.where == "network.init_from"]
    assert len(errors) == 1 and "epoch number" in errors[0].message and "job:<name>@<epoch>" in errors[0].fix


# -- waiting and failing in the queue (rows and job files only: nothing trains) --------------------

def job_row(queue: Queue, root: Path, name: str, init_from: str | None = None, status=Status.QUEUED) -> int:
    job_id = queue.add(name, str(root / "inbox" / name))
    job_dir = root / "jobs" / f"{job_id}-{name}"
    job_dir.mkdir(parents=True)
    (job_dir / "job.resolved.yaml").write_text(yaml.safe_dump({"name": name, "network": {"init_from": init_from}}))
    queue.update(job_id, status=status, job_dir=str(job_dir))
    return job_id


@pytest.fixture()
def queue(tmp_path):
    (tmp_path / "inbox").mkdir()
    return Queue(tmp_path / "state" / "animad.sqlite")


def test_a_waiting_job_is_passed_over_and_says_what_it_waits_for(tmp_path, queue):
    waiting = job_row(queue, tmp_path, "outfit-2", "job:outfit-1")  # accepted first: the lower id
    first = job_row(queue, tmp_path, "outfit-1")
    assert queue.next_runnable(True)["id"] == first
    progress = queue.get(waiting)["progress"]
    assert progress["phase"] == "waiting" and progress["waiting_for"] == "outfit-1"
    assert "waiting for outfit-1 (job 2, queued)" in progress["waiting"]
    queue.update(first, status=Status.RUNNING)
    assert queue.next_runnable(True) is None  # nothing else to run; the waiting job still waits
    queue.update(first, status=Status.PAUSED, held=1)
    chain.settle(queue)  # what the runner does while another job runs
    assert "it is held: `animad resume 2`" in queue.get(waiting)["progress"]["waiting"]
    assert queue.get(waiting)["status"] == Status.QUEUED


@pytest.mark.parametrize("status, words", [(Status.FAILED, "failed: out of disk"),
                                           (Status.CANCELLED, "was cancelled")])
def test_a_job_whose_named_job_failed_fails_with_what_to_do_and_the_queue_goes_on(tmp_path, queue, status, words):
    named = job_row(queue, tmp_path, "outfit-1", status=status)
    queue.update(named, error="out of disk\nmore detail")
    waiting = job_row(queue, tmp_path, "outfit-2", "job:outfit-1")
    other = job_row(queue, tmp_path, "unrelated")
    assert queue.next_runnable(True)["id"] == other
    row = queue.get(waiting)
    assert row["status"] == Status.FAILED
    assert f"job {named} (outfit-1), which this job continues, {words}" in row["error"]
    assert row["error"].startswith("network.init_from: ") and row["error"].endswith("job.resolved.yaml)")
    assert f"animad retry {waiting}" in row["error"]


def test_a_name_no_job_has_fails_once_the_inbox_has_nothing_left_to_accept(tmp_path, queue):
    waiting = job_row(queue, tmp_path, "outfit-2", "job:outfit-1")
    pending = make_dataset(tmp_path / "inbox" / "outfit-one", count=1, job=tiny_job())  # not accepted yet
    assert queue.next_runnable(True) is None
    assert "the inbox still has outfit-one to accept" in queue.get(waiting)["progress"]["waiting"]
    (pending / "ERRORS.txt").write_text("rejected\n")  # rejected: it will not become a job
    assert queue.next_runnable(True) is None
    row = queue.get(waiting)
    assert row["status"] == Status.FAILED and "no job named outfit-1 is in the queue" in row["error"]


def test_two_jobs_that_wait_for_each_other_fail_instead_of_waiting_for_ever(tmp_path, queue):
    a = job_row(queue, tmp_path, "a", "job:b")
    b = job_row(queue, tmp_path, "b", "job:a")
    other = job_row(queue, tmp_path, "c")
    assert queue.next_runnable(True)["id"] == other
    assert queue.get(a)["status"] == Status.FAILED and "leads back to this job" in queue.get(a)["error"]
    assert queue.get(b)["status"] == Status.FAILED  # its partner failed: nothing left to wait for


# -- a chained 2-stage run through the daemon ------------------------------------------------------

def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_chained_two_stage_run_continues_from_the_first_stages_chosen_epoch(tmp_path, daemon_config):
    configure(daemon_config)
    previews = {"prompts": ["@demo, red circle"], "prompts_mode": "replace", "steps": 2}
    first = tiny_job(epochs=2, selection={"stop_at_floor": False}, precision={"save": "fp32"}, previews=previews,
                     data={"batch_size": 1})
    # Stage 2 trains at learning rate 0 (AdamW without weight decay): its weights after an epoch are
    # exactly the weights it started from, which is what this test must see.
    second = tiny_job(epochs=1, selection={"stop_at_floor": False}, precision={"save": "fp32"},
                      previews=previews, data={"batch_size": 1}, optimizer={"type": "adamw", "lr": 0.0},
                      network={"dim": 4, "init_from": "job:outfit-1"})
    staging = tmp_path / "staging"
    stage_1 = make_dataset(staging / "outfit-1", count=2, job=first)
    stage_2 = make_dataset(staging / "outfit-2", count=2, seed=1, job=second)
    inbox = load_daemon_config(daemon_config).dir("inbox")
    service = ServiceInProcess(daemon_config, dt.datetime(2026, 3, 2, 23, 0))
    try:
        drop(stage_2, inbox)
        drop(stage_1, inbox)
        service.wait_status("outfit-1", Status.RUNNING, Status.SELECTING, Status.DONE)
        waiting = service.wait(lambda: (r := service.job("outfit-2")) and r["progress"]
                               and r["progress"].get("phase") == "waiting" and r, what="outfit-2 to wait")
        assert waiting["status"] == Status.QUEUED and waiting["progress"]["waiting_for"] == "outfit-1"
        done_1 = service.wait_status("outfit-1", Status.DONE, Status.FAILED)
        assert done_1["status"] == Status.DONE, done_1["error"]
        done_2 = service.wait_status("outfit-2", Status.DONE, Status.FAILED)
        assert done_2["status"] == Status.DONE, done_2["error"]
        assert done_2["started"] >= done_1["finished"]  # it first ran once stage 1 was selected
    finally:
        service.close()

    # The default pick: the lowest-loss epoch of stage 1's shortlist, as its review package shows it.
    package_1 = json.loads((Path(done_1["outbox_dir"]) / "summary.json").read_text())
    expected = min(package_1["shortlist"], key=lambda pick: (pick["loss"], pick["epoch"]))["epoch"]
    paths_1, paths_2 = JobPaths(Path(done_1["job_dir"])), JobPaths(Path(done_2["job_dir"]))
    record = json.loads(paths_2.init_record.read_text())
    assert record["job"] == "outfit-1" and record["epoch"] == expected
    assert record["why"] == "its shortlist's lowest-loss epoch"
    chosen = paths_1.epoch_file("outfit-1", expected)
    assert sha256(paths_2.init_lora) == sha256(chosen) == record["sha256"]  # a verified copy, in its own folder

    start, trained = load_file(str(chosen)), load_file(str(paths_2.epoch_file("outfit-2", 1)))
    assert start.keys() == trained.keys()
    for key in start:  # stage 2 began from exactly stage 1's chosen weights
        assert torch.equal(start[key], trained[key]), key
    # Each stage has its own complete review package.
    for row in (done_1, done_2):
        summary = json.loads((Path(row["outbox_dir"]) / "summary.json").read_text())
        assert (Path(row["outbox_dir"]) / "index.html").is_file() and summary["shortlist"]


def test_which_epoch_a_chain_continues_from(tmp_path):
    from animad.config.job import JobConfig, resolved_dict

    source = JobPaths(tmp_path / "1-outfit-1")
    source.epochs_dir.mkdir(parents=True)
    source.resolved.write_text(yaml.safe_dump(resolved_dict(JobConfig(name="outfit-1"), images=8)))
    losses = [1.0, 0.6, 0.4, 0.31, 0.30, 0.29, 0.33, 0.36, 0.40, 0.45]  # lowest at 6, rising after it
    source.epochs_log.write_text("".join(json.dumps({"epoch": e, "loss": v, "eval_loss": v}) + "\n"
                                         for e, v in enumerate(losses, start=1)))
    for epoch in range(1, len(losses) + 1):
        source.epoch_file("outfit-1", epoch).write_bytes(b"epoch %d" % epoch)
    assert chain.choose_epoch(source, JobReference("outfit-1"))[::2] == (6, "its shortlist's lowest-loss epoch")
    assert chain.choose_epoch(source, JobReference("outfit-1", last=True))[0] == 10
    assert chain.choose_epoch(source, JobReference("outfit-1", epoch=3))[:2] == (3, source.epoch_file("outfit-1", 3))
    source.epoch_file("outfit-1", 3).unlink()  # retention removed it
    with pytest.raises(Exception, match="no file for epoch 3 .*kept: 1, 2, 4"):
        chain.choose_epoch(source, JobReference("outfit-1", epoch=3))


def test_once_its_start_is_copied_a_chained_job_needs_nothing_outside_its_folder(tmp_path, queue):
    """A resume after the named job's folder, row or database is gone starts from the job's own copy."""
    waiting = job_row(queue, tmp_path, "outfit-2", "job:outfit-1")  # no job outfit-1 exists (any more)
    paths = JobPaths(Path(queue.get(waiting)["job_dir"]))
    paths.init_lora.write_bytes(b"the copied LoRA")
    paths.init_record.write_text("{}")
    assert queue.next_runnable(True)["id"] == waiting


def test_training_a_job_form_without_the_daemons_copy_says_what_to_do(tmp_path):
    from animad.config.job import NetworkConfig
    from animad.errors import UserError
    from animad.train.loop import read_init_lora

    with pytest.raises(UserError, match="init_from: job:outfit-1 names a job .* drop the folder into the inbox"):
        read_init_lora(JobPaths(tmp_path), NetworkConfig(init_from="job:outfit-1"))


def done_job(queue: Queue, root: Path, tensors: dict) -> JobPaths:
    """A finished job outfit-1 (row and folder) with one epoch, whose file holds `tensors`."""
    from safetensors.torch import save_file

    from animad.config.job import JobConfig, resolved_dict

    named = job_row(queue, root, "outfit-1", status=Status.DONE)
    source = JobPaths(Path(queue.get(named)["job_dir"]))
    source.resolved.write_text(yaml.safe_dump(resolved_dict(JobConfig(name="outfit-1"), images=2)))
    source.epochs_log.write_text(json.dumps({"epoch": 1, "loss": 0.5, "eval_loss": 0.5}) + "\n")
    source.epochs_dir.mkdir()
    save_file(tensors, str(source.epoch_file("outfit-1", 1)))
    return source


def queued_dependent(queue: Queue, root: Path, daemon_config: Path, **data) -> tuple[int, JobPaths]:
    """A checked job outfit-2 (real dataset, frozen job files) that continues job:outfit-1."""
    from animad.intake.jobfiles import write_job_files

    folder = make_dataset(root / "outfit-2", count=2, job=tiny_job(
        network={"dim": 4, "init_from": "job:outfit-1"}, data=data))
    result = check_folder(folder, load_daemon_config(daemon_config))
    assert result.ok, result.report()
    job_id = queue.add("outfit-2", str(folder))
    paths = JobPaths(root / "jobs" / f"{job_id}-outfit-2")
    write_job_files(paths, result, dataset_dir=folder)
    queue.update(job_id, status=Status.QUEUED, job_dir=str(paths.root))
    return job_id, paths


def test_a_continued_lora_with_text_encoder_modules_fails_before_training_when_the_encoder_is_not_loaded(
        tmp_path, queue, daemon_config):
    """The check `animad check` runs on an init_from file, run when a job: start is copied in."""
    from animad.anima.lora_names import PREFIXES, TEXT_ENCODER

    module = f"{PREFIXES[TEXT_ENCODER]}_layers_0_mlp_gate_proj"
    done_job(queue, tmp_path, {f"{module}.lora_down.weight": torch.zeros(4, 8),
                               f"{module}.lora_up.weight": torch.zeros(8, 4), f"{module}.alpha": torch.tensor(4.0)})
    waiting, paths = queued_dependent(queue, tmp_path, daemon_config, shuffle_captions=False)
    assert queue.next_runnable(True) is None
    row = queue.get(waiting)
    assert row["status"] == Status.FAILED and "text-encoder module" in row["error"], row["error"]
    assert "train_text_encoder: true" in row["error"] and not paths.init_lora.exists()


def test_a_start_that_cannot_be_copied_fails_that_job_and_the_queue_goes_on(tmp_path, queue, daemon_config):
    done_job(queue, tmp_path, {"x": torch.zeros(2)})
    waiting, paths = queued_dependent(queue, tmp_path, daemon_config)
    paths.init_lora.mkdir()  # something in the way that no retry of the copy gets past
    other = job_row(queue, tmp_path, "unrelated")
    assert queue.next_runnable(True)["id"] == other
    row = queue.get(waiting)
    assert row["status"] == Status.FAILED and "cannot copy job:outfit-1's LoRA" in row["error"], row["error"]
    assert f"animad retry {waiting}" in row["error"]
