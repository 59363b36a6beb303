"""A finished run trains on when its limit is raised, says what a lowered limit does, and an epoch
resumed at its very end is timed whole (its eval share is true).

Real runs of the tiny model through `animad train` (in process), 4 images in batches of 2: 2 steps an epoch.
"""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from safetensors import safe_open

from animad.cli.main import main
from animad.config.job import JobConfig
from animad.demo.synthetic import make_dataset, tiny_job
from animad.layout import JobPaths, read_epochs_log
from animad.train.ending import reopen_finished
from animad.train.progress import Progress

from train_helpers import prepare, train


def set_limit(folder, **schedule) -> None:
    job = yaml.safe_load((folder / "job.yaml").read_text())
    job["schedule"].update(schedule)
    (folder / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))


def train_cli(config, folder, out, capsys) -> tuple[str, str]:
    """`animad train DIR --out OUT --no-select`; returns (what it printed, the log lines it wrote this time)."""
    log = out / "train.log"
    before = log.read_text() if log.is_file() else ""
    assert main(["--config", str(config), "train", str(folder), "--out", str(out), "--no-select"]) == 0
    return capsys.readouterr().out, log.read_text()[len(before):]


def metadata(paths: JobPaths, epoch: int) -> dict:
    with safe_open(str(paths.epoch_file("ds", epoch)), "pt") as f:
        return f.metadata()


def test_raising_max_epochs_trains_on_with_true_counters_and_lowering_deletes_nothing(tmp_path, daemon_config,
                                                                                    capsys):
    folder = make_dataset(tmp_path / "ds", count=4, job=tiny_job(epochs=2, selection={"stop_at_floor": False}))
    out = tmp_path / "runs" / "ds"
    paths = JobPaths(out)
    train_cli(daemon_config, folder, out, capsys)
    assert [r["epoch"] for r in read_epochs_log(paths.epochs_log)] == [1, 2]

    set_limit(folder, max_epochs=3)
    printed, logged = train_cli(daemon_config, folder, out, capsys)
    assert "training had finished at epoch 2; its limit is now higher (max_epochs 3): training on from " \
           "epoch 3 (step 4) with the learning-rate schedule re-planned" in logged
    assert "cosine over 3 epochs" in logged
    assert "training finished" in printed
    records = read_epochs_log(paths.epochs_log)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["step"] for r in records] == [2, 4, 6]  # counters continue, never restart
    assert (out / "finished.txt").read_text() == "reached max_epochs 3\n"
    final = metadata(paths, 3)
    assert (final["ss_epoch"], final["ss_num_epochs"], final["ss_max_train_epochs"]) == ("3", "3", "3")
    assert final["ss_steps"] == final["ss_max_train_steps"] == "6"
    # The cosine re-planned over 3 epochs: the LR rises from ~0 (the end of the 2-epoch cosine) and
    # ends at 0 again at the new end.
    assert records[1]["lr"] == pytest.approx(0.0, abs=1e-12) and records[2]["lr"] == pytest.approx(0.0, abs=1e-12)

    # Run again unchanged: nothing to do, and the message says what would train on.
    _, logged = train_cli(daemon_config, folder, out, capsys)
    assert "training already finished at epoch 3 (reached max_epochs 3). To train on from its last state, raise " \
           "schedule.max_epochs above 3 in job.yaml" in logged

    # Lowered: nothing deleted, the records and files stay, and the message says so.
    set_limit(folder, max_epochs=2)
    _, logged = train_cli(daemon_config, folder, out, capsys)
    assert "max_epochs 2 is now below what was trained. Nothing is deleted" in logged
    assert "the review still weighs all 3 epochs" in logged
    assert [r["epoch"] for r in read_epochs_log(paths.epochs_log)] == [1, 2, 3]
    assert all(paths.epoch_file("ds", e).is_file() for e in (1, 2, 3))


def test_a_constant_run_extended_is_cooled_again_at_its_new_end(tmp_path, daemon_config, capsys):
    # stop_at_floor with a patience no 3-epoch run can meet: constant, cooled over the run's last epochs.
    job = tiny_job(epochs=2, selection={"stop_at_floor": True, "patience": 30}, schedule={"type": "constant"})
    folder = make_dataset(tmp_path / "ds", count=4, job=job)
    out = tmp_path / "runs" / "ds"
    train_cli(daemon_config, folder, out, capsys)
    first = read_epochs_log(JobPaths(out).epochs_log)
    assert first[-1]["lr"] == 0.0 and first[-1]["cooldown"]

    set_limit(folder, max_epochs=3)
    _, logged = train_cli(daemon_config, folder, out, capsys)
    assert "cooled to 0 at a confirmed floor or over the last epochs" in logged
    records = read_epochs_log(JobPaths(out).epochs_log)
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 2), (2, 4), (3, 6)]
    # Epoch 3 starts back at the constant LR and is cooled to 0 again: the run still ends annealed.
    assert records[2]["cooldown"] and records[2]["lr"] == 0.0
    assert metadata(JobPaths(out), 3)["ss_lr_scheduler"].startswith("constant, cooled linearly to 0 from epoch 3")


def finished_state(**progress) -> dict:
    return {**Progress(**progress).__dict__, "finished": True}


def test_a_run_stopped_at_its_floor_stays_finished_unless_stop_at_floor_is_turned_off(tmp_path):
    paths = JobPaths(tmp_path)
    state = finished_state(epoch=13, global_step=24, floor_confirmed=10, cooldown_after=10, cooldown_epochs=2,
                           cooldown_start_step=20, cooldown_steps=4)
    config = JobConfig()
    config.schedule.max_epochs = 40
    reopen, message = reopen_finished(paths, config, state)
    assert not reopen
    assert "stopped at the loss floor confirmed after epoch 10, so a higher max_epochs does not reopen it" in message
    assert "set selection.stop_at_floor: false in job.yaml" in message
    config.selection.stop_at_floor = False  # the user wants more than the floor: it trains on, cosine to 40
    reopen, message = reopen_finished(paths, config, state)
    assert reopen and "training on from epoch 13 (step 24)" in message and "cosine over 40 epochs" in message


def test_an_epoch_resumed_at_its_last_step_is_timed_whole(tmp_path, daemon_config, caplog):
    job = tiny_job(epochs=1, selection={"stop_at_floor": False})
    paths, daemon = prepare(tmp_path, daemon_config, job, count=4)
    steps = {"n": 0}

    def stop_at_the_epochs_last_step():
        steps["n"] += 1
        return steps["n"] == 2  # the 2nd of 2 steps: the state holds a fully trained, not yet evaluated epoch

    assert train(paths, daemon, stop=stop_at_the_epochs_last_step)[0] == "paused"
    saved = torch.load(paths.resume_state, weights_only=False)
    assert saved["batch_index"] == 2 and saved["epoch_seconds"] > 0  # both batches trained, none evaluated
    with caplog.at_level("INFO", logger="animad.train"):
        assert train(paths, daemon)[0] == "finished"
    record = read_epochs_log(paths.epochs_log)[0]
    assert record["seconds"] >= saved["epoch_seconds"] + record["eval_seconds"]
    share = re.findall(r"eval took (\d+)% of the epoch", caplog.text)
    assert share == [f"{100 * record['eval_seconds'] / record['seconds']:.0f}"]
