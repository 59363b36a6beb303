"""The production step's host syncs and Dynamo graphs, counted on the tiny model (issue 12).

One run of bench/step_counts.py (the same counting `python bench/train_bench.py --counts` prints):
two aspect buckets, an eval pass each epoch, gradient checkpointing, accumulation over two
micro-batches, the default optimizer and torch.compile with a counting Dynamo backend.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from step_counts import OpCounter, step_counts  # noqa: E402

from animad.train.networks.lora_maxnorm import apply_max_norm  # noqa: E402

@pytest.fixture(scope="module")
def counts(tmp_path_factory, tiny_models):
    return step_counts(tmp_path_factory.mktemp("counts"), tiny_models)


def test_no_host_sync_in_a_micro_batch(counts):
    # The text encoder (captions shuffle by default, so Qwen3 runs in the micro-batch), the DiT, the
    # LoRA, the loss and the backward (checkpoint recompute included), compiled and eager.
    assert counts["micro_batches"] >= 4, counts
    assert counts["text_encoder_syncs_per_micro_batch"] == 0, counts
    assert counts["syncs_per_micro_batch"] == 0 and counts["eager_syncs_per_micro_batch"] == 0, counts


def test_at_most_one_sync_per_optimizer_step_with_the_default_optimizer(counts):
    # The one read is the step's loss (and its finite check), taken before the optimizer runs.
    assert counts["syncs_per_optimizer_step"] <= 1, counts


def test_one_graph_per_block_across_buckets_and_eval_without_fallback(counts):
    assert counts["eval_calls"] > 0 and counts["block_calls"] > 0, counts
    assert counts["graphs_per_block"] == 1, counts
    assert counts["graph_breaks"] == 0 and counts["recompile_fallbacks"] == 0, counts
    # Shared by every block and both buckets: block 0 (its input needs no grad: nothing before it
    # trains), the other blocks, and the no-grad eval.
    assert counts["graphs_compiled"] <= 3, counts


def test_the_counter_sees_syncs_and_the_loss_read():
    x = torch.ones(3, requires_grad=True)
    with OpCounter() as counter:
        with counter.counting("a"):
            (x * 2).sum().backward()
        with counter.counting("b"):
            float(x.detach().sum())
            bool(x.detach().sum() > 0)
    assert counter.syncs["a"] == 0 and counter.ops["a"] > 2
    assert counter.syncs["b"] == 2


def naive_max_norm(up, down, scale, limit):
    """sd-scripts' apply_max_norm_regularization for one module, written out the slow way."""
    delta = scale * up @ down
    norm = delta.norm().clamp(min=limit / 2)
    ratio = norm.clamp(max=limit) / norm
    return up * ratio.sqrt(), down * ratio.sqrt(), bool(ratio != 1), float(delta.norm() * ratio)


def test_max_norm_matches_the_per_module_formula():
    from animad.train.networks.lora import LoRAModule

    torch.manual_seed(0)
    modules = [LoRAModule(torch.nn.Linear(16, 12), 4, 2.0), LoRAModule(torch.nn.Linear(16, 12), 4, 4.0),
               LoRAModule(torch.nn.Linear(8, 16), 2, 1.0)]
    for m in modules:
        torch.nn.init.normal_(m.lora_up.weight)
    expected = [naive_max_norm(m.lora_up.weight.detach().clone(), m.lora_down.weight.detach().clone(), m.scale, 1.5)
                for m in modules]
    figures = apply_max_norm(modules, 1.5).tolist()
    for m, (up, down, _, _) in zip(modules, expected):
        assert torch.allclose(m.lora_up.weight, up, atol=1e-6) and torch.allclose(m.lora_down.weight, down, atol=1e-6)
    assert figures[0] == sum(e[2] for e in expected)
    assert figures[1] == pytest.approx(sum(e[3] for e in expected) / 3, rel=1e-5)
    assert figures[2] == pytest.approx(max(e[3] for e in expected), rel=1e-5)


def test_the_full_benchmark_path_runs_on_the_cpu(tmp_path):
    """bench/train_bench.py --full on the tiny model: the production step, compiled, printing valid JSON
    (the GPU run itself cannot happen here)."""
    import json
    import os
    import subprocess

    bench = Path(__file__).resolve().parent.parent / "bench" / "train_bench.py"
    result = subprocess.run([sys.executable, str(bench), "--full", "--device", "cpu", "--tiny", "--batch", "2",
                             "--steps", "1", "--warmup", "1", "--compile", "--no-previews"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    runs = report["runs"]
    assert [(r["batch"], r["checkpointing"], r["vram"]) for r in runs] == [(2, True, "off"), (2, False, "off"),
                                                                           (2, True, "auto")]
    assert all(r["images_per_s"] > 0 and r["compile"] and r["optimizer"] == "prodigy" for r in runs), runs
