"""SIGKILL mid-epoch, twice, then resume: the final LoRA equals an uninterrupted run's, epochs stay 1..N."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from animad.layout import EpochRecord, read_epochs_log
from animad.demo.synthetic import make_dataset, tiny_job
from daemon_helpers import HANG_SECONDS

EPOCHS = 5
# Bit-identical is expected on the same machine and thread count (every step reseeds its own RNG);
# the tolerance only allows for a different BLAS summation order, never for a lost or repeated step.
TOLERANCE = 1e-6


def run_train(config, dataset, out, env=None):
    return subprocess.Popen([sys.executable, "-m", "animad", "--config", str(config), "train", str(dataset),
                             "--out", str(out), "--no-select"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})


def wait_for_epochs(out, count, process, timeout=HANG_SECONDS):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(read_epochs_log(out / "epochs.jsonl")) >= count:
            return
        if process.poll() is not None:
            raise AssertionError(process.stdout.read().decode()[-3000:])
        time.sleep(0.02)
    raise AssertionError(f"no epoch {count} within {timeout}s")


def wait_for_mid_epoch_state(out, epoch, process, timeout=HANG_SECONDS):
    """Until the resume state on disk is one saved partway through `epoch` (saves are atomic renames)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = torch.load(out / "state" / "resume.pt", weights_only=False)
        except (OSError, RuntimeError, EOFError):
            state = None
        if state and state["epoch"] == epoch and state["batch_index"] > 0:
            return
        if process.poll() is not None:
            raise AssertionError(process.stdout.read().decode()[-3000:])
        time.sleep(0.02)
    raise AssertionError(f"no mid-epoch state in epoch {epoch} within {timeout}s")


# Each network kind with its random parts on: dropout (a LoRA's only), rank_dropout, module_dropout.
NETWORKS = {"lora": {"dim": 4, "dropout": 0.1, "rank_dropout": 0.1},
            "lokr": {"type": "lokr", "dim": 2, "rank_dropout": 0.1, "module_dropout": 0.1},
            "loha": {"type": "loha", "dim": 2, "rank_dropout": 0.1, "module_dropout": 0.1}}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(NETWORKS))
def test_sigkill_mid_epoch_twice_then_resume_matches_uninterrupted(tmp_path, daemon_config, kind):
    job = tiny_job(epochs=EPOCHS, precision={"save": "fp32"}, selection={"stop_at_floor": False},
                   data={"batch_size": 1, "repeats": 4}, network=NETWORKS[kind],
                   schedule={"max_epochs": EPOCHS, "state_every_minutes": 0.002})
    dataset = make_dataset(tmp_path / "ds", job=job)

    reference = tmp_path / "reference"
    process = run_train(daemon_config, dataset, reference)
    assert process.wait(timeout=HANG_SECONDS) == 0, process.stdout.read().decode()[-3000:]

    resumed = tmp_path / "resumed"
    mid_epoch_states = []
    for kill_after in (1, 3):
        process = run_train(daemon_config, dataset, resumed)
        wait_for_epochs(resumed, kill_after, process)
        wait_for_mid_epoch_state(resumed, kill_after + 1, process)  # a state saved inside the next epoch
        process.send_signal(signal.SIGKILL)
        process.wait()
        state = torch.load(resumed / "state" / "resume.pt", weights_only=False)
        mid_epoch_states.append((state["epoch"], state["batch_index"]))
    process = run_train(daemon_config, dataset, resumed)
    output = process.communicate(timeout=HANG_SECONDS)[0].decode()
    assert process.returncode == 0, output[-3000:]
    assert "resuming at epoch" in (resumed / "train.log").read_text()
    assert any(batch > 0 for _, batch in mid_epoch_states), mid_epoch_states  # we really resumed mid-epoch

    records = read_epochs_log(resumed / "epochs.jsonl")
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    reference_records = read_epochs_log(reference / "epochs.jsonl")
    assert [r["step"] for r in records] == [r["step"] for r in reference_records]
    names = sorted(p.name for p in (resumed / "epochs").iterdir())
    assert names == [f"ds-e{e:04d}.safetensors" for e in range(1, EPOCHS + 1)]
    for epoch in (2, EPOCHS):
        a = load_file(str(reference / "epochs" / f"ds-e{epoch:04d}.safetensors"))
        b = load_file(str(resumed / "epochs" / f"ds-e{epoch:04d}.safetensors"))
        assert a.keys() == b.keys()
        worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
        assert worst <= TOLERANCE, f"epoch {epoch}: max |diff| {worst}"
    for ours, theirs in zip(records, reference_records):
        assert abs(ours["eval_loss"] - theirs["eval_loss"]) <= 1e-6


def test_resume_cuts_a_torn_last_line_so_the_next_record_stands_alone(tmp_path):
    from animad.train.tracking import Tracker

    path = tmp_path / "epochs.jsonl"
    path.write_text(json.dumps({"epoch": 1, "loss": 0.5}) + "\n" + '{"epoch": 2, "lo')  # killed mid-write
    tracker = Tracker(tmp_path / "tb", path, resume_step=4, resume_epoch=1)
    tracker.epoch(EpochRecord(epoch=2, loss=0.4))
    tracker.close()
    assert [r["epoch"] for r in read_epochs_log(path)] == [1, 2]
    assert [r["epoch"] for r in tracker.records] == [1, 2]  # what the loop asks the floor about
