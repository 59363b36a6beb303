"""One job on several devices (here: 2 CPU processes over gloo, the same code path as NCCL on GPUs).

Two ranks with grad_accum 1 must train exactly what one process does with grad_accum 2: the same
batches, noise and dropout per plan index, and gradients summed over the same micro-batches. Only
rank 0 writes files. A stop request reaches every rank at the same step, and resuming continues.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from animad.layout import read_epochs_log
from animad.demo.synthetic import make_dataset, tiny_job
from daemon_helpers import HANG_SECONDS

pytestmark = pytest.mark.slow
EPOCHS = 4
TOLERANCE = 1e-6  # in practice bit-identical: a sum of two terms does not depend on the order


def job(accum: int) -> dict:
    return tiny_job(epochs=EPOCHS, precision={"save": "fp32"}, selection={"stop_at_floor": False},
                    data={"batch_size": 1, "repeats": 3, "grad_accum": accum},
                    network={"dim": 4, "dropout": 0.1, "rank_dropout": 0.1})


def train(config, dataset, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "animad", "--config", str(config), "train", str(dataset), "--out",
                             str(out), "--no-select", *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process, timeout=HANG_SECONDS) -> str:
    return process.communicate(timeout=timeout)[0].decode()


def max_diff(a_file, b_file) -> float:
    a, b = load_file(str(a_file)), load_file(str(b_file))
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_ranks_equal_one_process_with_double_accumulation_and_resume(tmp_path, daemon_config):
    single = make_dataset(tmp_path / "single", count=6, job=job(accum=2))
    double = make_dataset(tmp_path / "double", count=6, job=job(accum=1))
    reference = train(daemon_config, single, tmp_path / "ref")
    output = finish(reference)
    assert reference.returncode == 0, output[-3000:]

    # Two ranks, stopped with SIGINT mid-run (as Ctrl-C or the daemon's window close would) ...
    out = tmp_path / "ddp"
    process = train(daemon_config, double, out, "--gpus", "2")
    deadline = time.monotonic() + 120
    while len(read_epochs_log(out / "epochs.jsonl")) < 2:
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output = finish(process)
    assert process.returncode == 75, output[-3000:]  # paused, state saved
    assert "2 GPUs" in (out / "train.log").read_text()

    # ... resuming on one GPU is refused with a clear message, since the schedule depends on it ...
    wrong = train(daemon_config, double, out, "--gpus", "1")
    output = finish(wrong)
    assert wrong.returncode == 2 and "started on 2 GPU(s)" in output and "gpus: 2" in output, output[-2000:]

    # ... and resuming on two finishes with what the single process trained.
    process = train(daemon_config, double, out, "--gpus", "2")
    output = finish(process)
    assert process.returncode == 0, output[-3000:]
    records, reference_records = read_epochs_log(out / "epochs.jsonl"), read_epochs_log(tmp_path / "ref" /
                                                                                         "epochs.jsonl")
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    assert [r["step"] for r in records] == [r["step"] for r in reference_records]
    for ours, theirs in zip(records, reference_records):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-6)
        assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], abs=1e-6)
    for epoch in (1, EPOCHS):
        diff = max_diff(out / "epochs" / f"double-e{epoch:04d}.safetensors",
                        tmp_path / "ref" / "epochs" / f"single-e{epoch:04d}.safetensors")
        assert diff <= TOLERANCE, f"epoch {epoch}: max |diff| {diff}"
    # Only rank 0 wrote: one file per epoch, one log line per epoch, no stray temp files.
    assert sorted(p.name for p in (out / "epochs").iterdir()) == [f"double-e{e:04d}.safetensors"
                                                                  for e in range(1, EPOCHS + 1)]
    assert len((out / "epochs.jsonl").read_text().splitlines()) == EPOCHS
    assert not [p for p in out.rglob(".*.tmp-*")]


def test_asking_for_more_gpus_than_visible_is_a_clear_error(tmp_path, daemon_config, monkeypatch):
    from animad.errors import UserError
    from animad.train import ranks as distributed

    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(distributed.torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="gpus: 2, but only 1 CUDA GPU"):
        distributed.check_world(2)


def test_every_collective_runs_on_the_ranks_device(monkeypatch):
    """NCCL reduces only tensors on the rank's own GPU: a CPU tensor fails at step 1 with "No backend type
    associated with device type cpu", which the gloo runs above cannot show (gloo wants CPU tensors).

    Here the rank's device is `meta`, a device that is not the CPU and exists without a GPU, and every
    torch.distributed collective is replaced by a recorder of its tensor's device. Reading a reduced
    meta tensor back is impossible (it has no values), so sum() and any() stop there, after the
    collective was recorded. The code before the fix passed CPU tensors: this test fails on it."""
    import torch

    from animad.train import ranks as distributed

    seen = []

    def recorder(name):
        def collective(tensor, *args, **kwargs):
            seen.append((name, tensor.device))
        return collective

    for name in ("all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter"):
        monkeypatch.setattr(distributed.torch.distributed, name, recorder(name))
    device = torch.device("meta")
    group = distributed.Group(rank=1, world=2, device=device)
    params = [torch.nn.Parameter(torch.zeros(3, 4, device=device)), torch.nn.Parameter(torch.zeros(5, device=device))]
    params[0].grad = torch.ones(3, 4, device=device)  # the second has no gradient this step
    group.sum_grads(params)
    assert params[0].grad.device == device and params[1].grad.device == device
    assert group.sum_tensor([1.0, 0.0]).device == device
    for call in (lambda: group.sum([2.5, 1.0]), lambda: group.any(True)):
        with pytest.raises(NotImplementedError):  # reading a meta tensor's values
            call()
    assert [name for name, _ in seen] == ["all_reduce"] * 4
    assert all(where == device for _, where in seen), seen


def test_a_nccl_rank_reduces_on_its_own_gpu(monkeypatch):
    """join() gives each NCCL rank the device cuda:<rank> for its collectives, and gloo ranks the CPU."""
    import torch

    from animad.train import ranks as distributed

    backends = []
    monkeypatch.setattr(distributed.torch.distributed, "init_process_group",
                        lambda backend, **kwargs: backends.append(backend))
    monkeypatch.setattr(distributed.torch.cuda, "set_device", lambda rank: None)
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: True)
    assert distributed.join(1, 2, 12345).device == torch.device("cuda", 1)
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: False)
    assert distributed.join(1, 2, 12345).device == torch.device("cpu")
    assert backends == ["nccl", "gloo"]


def test_the_daemon_runs_a_two_rank_job_to_its_review_package(tmp_path, daemon_config):
    from pathlib import Path

    from daemon_helpers import DaemonProcess, configure, drop

    configure(daemon_config, gpus=2)
    daemon = DaemonProcess(daemon_config).start()
    try:
        drop(make_dataset(tmp_path / "staging" / "pair", count=4, job=tiny_job(epochs=2)), tmp_path / "inbox")
        done = daemon.wait_status("pair", "done", "failed")
        assert done["status"] == "done", done["error"]
        assert [r["epoch"] for r in read_epochs_log(Path(done["job_dir"]) / "epochs.jsonl")] == [1, 2]
        assert "2 GPUs" in (Path(done["job_dir"]) / "train.log").read_text()
        assert (Path(done["outbox_dir"]) / "index.html").is_file()
    finally:
        daemon.stop()
