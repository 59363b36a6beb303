"""Prodigy's step time on the CPU: animad's foreach Prodigy (train/prodigy.py) against prodigyopt 1.1.2,
on the parameter tensors of a full-size Anima network (the shapes of its 280 wrapped DiT linears).

    python bench/prodigy_step.py [--kinds lora,lokr-full] [--steps 5]

lora: rank 16, 560 tensors, 22.9M values. lokr-full: factor -1 with full matrices (dim 100000, the
way sd-scripts configs ask for "full"), 560 tensors, 1.6M values; lokr-full-8: the same at factor 8,
27.5M values. Random gradients; the median of `steps` steps after
one warm-up step (the first step allocates the state), the two optimizers' steps interleaved so a busy
machine slows both alike. Prints one JSON object with seconds per step.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from animad import network_shapes  # noqa: E402
from animad.anima.dit import ANIMA_2B  # noqa: E402
from animad.anima.memory import block_linear_shapes  # noqa: E402
from animad.train.prodigy import Prodigy  # noqa: E402

SETTINGS = {"lora": ("lora", 16, -1), "lokr-full": ("lokr", 100000, -1), "lokr-full-8": ("lokr", 100000, 8),
            "lokr-16": ("lokr", 16, -1), "loha-16": ("loha", 16, -1)}


def parameters(kind: str, dim: int, factor: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    params = []
    for _ in range(ANIMA_2B.depth):
        for out, inp in block_linear_shapes(ANIMA_2B):
            for shape in network_shapes.shapes(kind, out, inp, dim, factor).values():
                params.append(torch.nn.Parameter(torch.randn(shape, generator=generator) * 0.01))
    return params


def make(optimizer_class, params):
    with contextlib.redirect_stdout(io.StringIO()):  # prodigyopt prints its settings
        return optimizer_class(params, lr=1.0, betas=(0.9, 0.99), weight_decay=0.1, use_bias_correction=True,
                               safeguard_warmup=True)


def step_times(optimizers: dict, grads: list[torch.Tensor], steps: int) -> dict:
    """Median seconds per step of each optimizer, their steps interleaved (a busy machine slows each
    alike); one untimed step first, which makes the state."""
    times = {name: [] for name in optimizers}
    for index in range(steps + 1):
        for name, (optimizer, params) in optimizers.items():
            for p, g in zip(params, grads):
                p.grad = g.clone()
            t0 = time.perf_counter()
            optimizer.step()
            if index:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="lora,lokr-full,lokr-full-8")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    from prodigyopt import Prodigy as Reference

    out = {"threads": torch.get_num_threads(), "seconds_per_step": {}}
    for name in args.kinds.split(","):
        kind, dim, factor = SETTINGS[name]
        ours, theirs = parameters(kind, dim, factor), parameters(kind, dim, factor)
        generator = torch.Generator().manual_seed(1)
        grads = [torch.randn(p.shape, generator=generator) * 1e-3 for p in ours]
        seconds = step_times({"animad": (make(Prodigy, ours), ours), "prodigyopt": (make(Reference, theirs), theirs)},
                             grads, args.steps)
        entry = {"tensors": len(ours), "values": sum(p.numel() for p in ours),
                 **{k: round(v, 4) for k, v in seconds.items()}}
        entry["ratio"] = round(seconds["animad"] / seconds["prodigyopt"], 3)
        out["seconds_per_step"][name] = entry
        print(name, entry, file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
