"""Step time of each network kind on one full-width Anima block, on this machine's CPU, both forms of
issue 24 item 4: LoKr as the Kronecker bypass (x reshaped, two small matmuls) or merged into the
frozen weight (one matmul, a full-size weight gradient); LoHa merged (one matmul, the delta recomputed
in the backward) or as a bypass (x @ delta^T beside the base matmul).

    python bench/network_forms.py [--tokens 1024] [--repeats 3] [--dtypes fp32,bf16]

A block of the released DiT's width (dim 2048, MLP 8192, context 1024) runs forward and backward at
batch 1 with `tokens` image tokens and 512 text tokens, gradients into the network only (the base
frozen, as in training). bf16 is bf16 weights under CPU autocast, the network in fp32, as the loop
runs it. Prints one JSON object: median seconds per forward+backward for each (dtype, kind, form),
and each against LoRA at the same dim. The settings run interleaved, one step each per round, so a
busy machine slows them alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from animad.anima.dit import ANIMA_2B, Block, rope_3d  # noqa: E402
from animad.config.job import NetworkConfig  # noqa: E402
from animad.train.networks import kind_named, loha, lokr  # noqa: E402

SETTINGS = [  # (label, kind, dim, factor, module with FORM, form)
    ("lora dim 16", "lora", 16, -1, None, None),
    ("lokr dim 16 bypass", "lokr", 16, -1, lokr, "bypass"),
    ("lokr dim 16 merged", "lokr", 16, -1, lokr, "merged"),
    ("lokr full bypass", "lokr", 100000, -1, lokr, "bypass"),
    ("lokr full merged", "lokr", 100000, -1, lokr, "merged"),
    ("loha dim 16 merged", "loha", 16, -1, loha, "merged"),
    ("loha dim 16 bypass", "loha", 16, -1, loha, "bypass"),
]


def build(dtype: str, tokens: int, device: str):
    """A full-width block in the run's weight dtype, frozen, with its inputs (batch 1)."""
    torch.manual_seed(0)
    c = ANIMA_2B
    weight_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    block = Block(c).to(device, weight_dtype).requires_grad_(False)
    side = int(tokens ** 0.5)
    options = dict(dtype=weight_dtype, device=device)
    inputs = (torch.randn(1, side * side, c.dim, requires_grad=True, **options),
              torch.randn(1, 512, c.context_dim, **options), torch.randn(1, c.dim, **options),
              torch.randn(1, 3 * c.dim, **options), rope_3d(c, side, side, device))
    return block, inputs


def network_on(block, kind: str, dim: int, factor: int) -> list:
    """The kind's modules on the block's 10 attention/MLP linears, non-zero (so nothing is a no-op), detached."""
    config = NetworkConfig(type=kind, dim=dim, factor=factor)
    modules = []
    for name, linear in block.named_modules():
        if isinstance(linear, torch.nn.Linear) and "adaln" not in name:
            module = kind_named(kind).new_module(linear, config, dim, None).to(linear.weight.device)
            for p in module.parameters():
                torch.nn.init.normal_(p, std=0.01)
            modules.append(module)
    return modules


def step(block, inputs, modules, dtype: str, form_module, form) -> float:
    """One forward and backward with `modules` attached, gradients into the network only; seconds."""
    if form_module:
        form_module.FORM = form
    for module in modules:
        module.attach()
    params = [p for m in modules for p in m.parameters()]
    device = inputs[0].device
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
        out = block(*inputs)
    torch.autograd.grad(out.float().square().mean(), params)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    for module in modules:
        module.detach()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024, help="image tokens (1024 = a 512x512 image)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (bench/gpu_check.sh)")
    args = parser.parse_args()
    result = {"device": args.device, "tokens": args.tokens, "threads": torch.get_num_threads(), "seconds": {}, "vs_lora": {}}
    for dtype in args.dtypes.split(","):
        block, inputs = build(dtype, args.tokens, args.device)
        networks = {label: (network_on(block, kind, dim, factor), module, form)
                    for label, kind, dim, factor, module, form in SETTINGS}
        times = {label: [] for label in networks}
        defaults = {m: m.FORM for m in (lokr, loha)}
        try:
            for round_ in range(args.repeats + 1):  # round 0 warms up; settings interleaved in each round
                for label, (modules, form_module, form) in networks.items():
                    seconds = step(block, inputs, modules, dtype, form_module, form)
                    if round_:
                        times[label].append(seconds)
        finally:
            for module, form in defaults.items():
                module.FORM = form
        seconds = {label: round(statistics.median(values), 4) for label, values in times.items()}
        print(dtype, seconds, file=sys.stderr, flush=True)
        result["seconds"][dtype] = seconds
        result["vs_lora"][dtype] = {k: round(v / seconds["lora dim 16"], 3) for k, v in seconds.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
