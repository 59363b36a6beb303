"""The GPU-only paths for real: run where a CUDA GPU is present (skipped on CI, which has none).

    python -m pytest -q tests/test_gpu.py       # on a machine with one or more NVIDIA GPUs

Each test trains the tiny model on CUDA through the same engine as the CPU tests: bf16 autocast
with flash attention, the 8-bit optimizer, torch.compile with inductor, and 2-GPU NCCL when two
GPUs are visible. The CPU tests cover the logic; these check the kernels and libraries exist and
agree with it. The speed figures are bench/train_bench.py --full's job.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from animad.layout import read_epochs_log
from animad.demo.synthetic import make_dataset, tiny_job

from train_helpers import optimizer_state_dtypes, run_job

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def falls(records) -> bool:
    return records[-1]["eval_loss"] < records[0]["eval_loss"]


def test_bf16_flash_attention_trains_on_the_gpu(tmp_path, daemon_config, caplog):
    paths, records = run_job(tmp_path, daemon_config, epochs=4, device="auto",
                             precision={"mixed": "bf16", "attention": "flash", "save": "bf16"},
                             data={"batch_size": 2, "repeats": 2})
    assert "flash needs a CUDA GPU" not in caplog.text
    assert falls(records), [r["eval_loss"] for r in records]
    lora = load_file(str(paths.epoch_file("ds", 4)))
    assert all(t.dtype == torch.bfloat16 and math.isfinite(t.float().abs().max().item()) for t in lora.values())


def test_adamw8bit_uses_bitsandbytes_on_the_gpu(tmp_path, daemon_config):
    paths, records = run_job(tmp_path, daemon_config, epochs=3, device="auto",
                             optimizer={"type": "adamw8bit", "lr": 3e-3}, network={"dim": 64},
                             data={"batch_size": 1, "repeats": 2})  # dim 64: tensors of >= 4096 values get 8-bit state
    state = torch.load(paths.resume_state, weights_only=False)
    assert torch.uint8 in optimizer_state_dtypes(state)  # really 8-bit optimizer state
    assert falls(records), [r["eval_loss"] for r in records]


def test_torch_compile_with_inductor_trains(tmp_path, daemon_config):
    _, records = run_job(tmp_path, daemon_config, epochs=3, device="auto",
                         precision={"compile": True, "mixed": "bf16"}, data={"batch_size": 1, "repeats": 2})
    assert falls(records), [r["eval_loss"] for r in records]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_with_nccl_match_one_gpu_with_double_accumulation(tmp_path, daemon_config):
    def job(accum):
        return tiny_job(epochs=2, precision={"save": "fp32", "mixed": "fp32"}, selection={"stop_at_floor": False},
                        data={"batch_size": 1, "repeats": 2, "grad_accum": accum})

    for name, accum, gpus in (("one", 2, "1"), ("two", 1, "2")):
        dataset = make_dataset(tmp_path / name, count=4, job=job(accum))
        result = subprocess.run([sys.executable, "-m", "animad", "--config", str(daemon_config), "train",
                                 str(dataset), "--out", str(tmp_path / f"run-{name}"), "--no-select", "--gpus", gpus],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    one = read_epochs_log(tmp_path / "run-one" / "epochs.jsonl")
    two = read_epochs_log(tmp_path / "run-two" / "epochs.jsonl")
    assert [r["step"] for r in one] == [r["step"] for r in two]
    a = load_file(str(tmp_path / "run-one" / "epochs" / "one-e0002.safetensors"))
    b = load_file(str(tmp_path / "run-two" / "epochs" / "two-e0002.safetensors"))
    # Two GPUs sum in another order than one (NCCL, TF32 kernels): close, not bit-identical.
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3


def test_the_step_has_no_sync_per_micro_batch_and_one_graph_per_block_on_the_gpu(tmp_path, tiny_models):
    """bench/step_counts.py on CUDA: the same counts as on the CPU, with the syncs now real device waits."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from step_counts import step_counts

    counts = step_counts(tmp_path, tiny_models)
    assert counts["syncs_per_micro_batch"] - counts["text_encoder_syncs_per_micro_batch"] == 0, counts
    assert counts["syncs_per_optimizer_step"] - counts["text_encoder_syncs_per_optimizer_step"] <= 1, counts
    assert counts["graphs_per_block"] == 1 and counts["recompile_fallbacks"] == 0, counts


def test_inductor_compiles_the_blocks_without_breaks_or_fallback(tmp_path, daemon_config, caplog):
    """The loop's compile with inductor over two aspect buckets and the eval: no graph break, no
    recompile-limit fallback, and a handful of graphs for all blocks (not one per bucket)."""
    import torch._dynamo

    from animad.config.daemon import load_daemon_config
    from animad.intake.check import check_folder
    from animad.intake.jobfiles import write_job_files
    from animad.layout import JobPaths

    from train_helpers import train

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from step_counts import two_bucket_dataset

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    job = tiny_job(epochs=2, selection={"stop_at_floor": False}, device="auto",
                   precision={"compile": True, "mixed": "bf16"},
                   data={"batch_size": 2, "max_bucket": 128, "min_bucket": 64})
    daemon = load_daemon_config(daemon_config)
    result = check_folder(two_bucket_dataset(tmp_path / "ds", job), daemon)
    assert result.ok, result.report()
    paths = JobPaths(tmp_path / "run")
    write_job_files(paths, result, dataset_dir=tmp_path / "ds")
    assert train(paths, daemon)[0] == "finished"
    counters = torch._dynamo.utils.counters
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert "hit config.recompile_limit" not in caplog.text
    # block 0 (input without grad), the other blocks, the no-grad eval; one more if a batch of 1 occurs
    assert counters["stats"]["unique_graphs"] <= 4, dict(counters["stats"])
