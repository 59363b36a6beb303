"""Training, caching and preview speed. Prints one JSON object.

    python bench/train_bench.py                 # tiny model on the CPU (what CI machines can run)
    python bench/train_bench.py --full          # full-size random-init Anima 2B at 1024^2 on a GPU

The full-size run measures the real train step (our DiT + LoRA rank 16 + AdamW + bf16 autocast) at
batch 1 and 4, with gradient checkpointing on and off, plus VAE caching and preview throughput.
MFU counts the useful FLOPs of a LoRA step: the forward plus the input-gradient backward
(linears 2x forward, attention core 3x forward), i.e. ~40 TFLOP per 1024^2 image (docs/anima_arch.md 8.1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from animad.config.job import JobConfig  # noqa: E402
from animad.anima.dit import ANIMA_2B, AnimaDiT, DiTConfig  # noqa: E402
from animad.anima.pipeline import Anima  # noqa: E402
from animad.train.flow import flow_loss, noisy, sample_sigmas  # noqa: E402
from animad.train.lora import build_network  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "4090": 165.0, "3090": 71.0, "L40": 181.0}


def step_flops(config: DiTConfig, tokens: int, context: int = 512) -> float:
    """Useful FLOPs of one LoRA training sample: forward + input-gradient backward."""
    d, c = config.dim, config.context_dim
    linear = (4 * 2 * tokens * d * d) + (2 * 2 * tokens * d * d) + (2 * 2 * context * c * d) + (
        2 * 2 * tokens * d * d * config.mlp_ratio)
    core = 2 * 2 * tokens * tokens * d + 2 * 2 * tokens * context * d
    return config.depth * (2 * linear + 3 * core)


def forward_flops(config: DiTConfig, tokens: int, context: int = 512) -> float:
    d, c = config.dim, config.context_dim
    linear = (6 * 2 * tokens * d * d) + (2 * 2 * context * c * d) + (2 * 2 * tokens * d * d * config.mlp_ratio)
    core = 2 * 2 * tokens * tokens * d + 2 * 2 * tokens * context * d
    return config.depth * (linear + core)


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def bench_step(config: DiTConfig, device, dtype, side: int, batch: int, checkpointing: bool, steps: int,
               warmup: int, attention: str = "auto", compile_blocks: bool = False) -> dict:
    from animad.train.precision import Precision

    torch.manual_seed(0)
    with torch.device(device):
        dit = AnimaDiT(config).to(dtype)
    from diffusers.models.condition_embedders.condition_embedder_anima import AnimaTextConditioner

    adapter = AnimaTextConditioner(source_dim=config.context_dim, target_dim=config.context_dim,
                                   model_dim=config.context_dim, num_layers=1, num_attention_heads=2,
                                   target_vocab_size=64).to(device, dtype)
    dit.requires_grad_(False)
    dit.gradient_checkpointing = checkpointing
    job = JobConfig()
    anima = Anima(None, device, dtype)  # the face over models built in memory: there are no files to load
    anima.dit, anima.adapter = dit, adapter
    network = build_network(anima, job.network)
    network.to(device=device, dtype=torch.float32)
    if compile_blocks:
        anima.compile_blocks("inductor")
    params = [p for p in network.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    precision = Precision(device, {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32"), attention)
    latent = side // 8
    x0 = torch.randn(batch, 16, latent, latent, device=device)
    context = torch.randn(batch, 512, config.context_dim, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        noise = torch.randn_like(x0)
        sigma = sample_sigmas(batch, job.timesteps, device)
        with precision.autocast(), precision.attention_context():
            prediction = dit(noisy(x0, noise, sigma), sigma, context)
        loss = flow_loss(prediction, x0, noise).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    tokens = (latent // 2) ** 2
    out = {"side": side, "batch": batch, "checkpointing": checkpointing, "compile": compile_blocks,
           "step_s": round(step, 4), "images_per_s": round(batch / step, 3),
           "useful_gflop_per_step": round(batch * step_flops(config, tokens) / 1e9, 3)}
    peak = peak_tflops(device)
    if peak:
        out["mfu"] = round(batch * step_flops(config, tokens) / step / 1e12 / peak, 3)
    if device.type == "cuda":
        out["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    else:
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    del dit, adapter, anima, network, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def bench_vae_and_previews(device, dtype, side: int, full: bool) -> dict:
    from diffusers import AutoencoderKLQwenImage

    from animad.anima import sampling
    from animad.anima.vae import VAE

    vae = VAE(AutoencoderKLQwenImage(base_dim=96 if full else 8).to(device, dtype).eval())
    images = torch.rand(1, 3, side, side, device=device) * 2 - 1
    vae.encode(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(3):
        vae.encode(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    encode = (time.perf_counter() - t) / 3
    config = ANIMA_2B if full else DiTConfig(dim=64, depth=2, head_dim=32, context_dim=64, adaln_lora_dim=16)
    with torch.device(device):
        dit = AnimaDiT(config).to(dtype).eval()
    context = torch.randn(2, 512, config.context_dim, device=device, dtype=dtype)
    steps = 30

    def velocity(x, sigma, both):  # what Anima.sample runs: cond and uncond as one batch of two
        flat = x[:, :, 0]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = dit(torch.cat([flat, flat]), torch.cat([sigma, sigma]), context)
        return out.float()[:, :, None].chunk(2)

    noise = sampling.initial_noise(0, side, side).to(device)
    sampling.sample_euler(velocity, noise, 2, 4.0)
    t = time.perf_counter()
    latents = sampling.sample_euler(velocity, noise, steps, 4.0)
    vae.decode(latents[:, :, 0])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    per_image = time.perf_counter() - t
    return {"cache_s_per_image": round(encode, 4), "preview_s_per_image": round(per_image, 3),
            "preview_images_per_min": round(60 / per_image, 2), "preview_steps": steps, "preview_side": side}


def bench_tiny_end_to_end() -> dict:
    """The real `run_training` on the tiny model set: wall time per step and the eval share."""
    import tempfile

    from animad.config.daemon import load_daemon_config
    from animad.layout import JobPaths, read_epochs_log
    from animad.anima.tiny import make_tiny_model_set
    from animad.demo.synthetic import make_dataset, tiny_job, write_daemon_config
    from animad.intake.jobfiles import write_job_files
    from animad.train.run import train_job
    from animad.intake.check import check_folder

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = make_tiny_model_set(tmp / "models")
        daemon = load_daemon_config(write_daemon_config(tmp / "animad.yaml", models))
        folder = make_dataset(tmp / "ds", count=16, job=tiny_job(epochs=4, selection={"stop_at_floor": False},
                                                                 data={"batch_size": 1, "repeats": 2}))
        result = check_folder(folder, daemon)
        paths = JobPaths(tmp / "run")
        write_job_files(paths, result, dataset_dir=folder)
        t = time.perf_counter()
        progress = []
        train_job(paths, daemon=daemon, should_stop=lambda: False, on_progress=progress.append)
        wall = time.perf_counter() - t
        records = read_epochs_log(paths.epochs_log)
        steps = records[-1]["step"]
        train_seconds = sum(r["seconds"] for r in records)
        eval_seconds = sum(r["eval_seconds"] for r in records)
        return {"tiny_e2e_wall_s": round(wall, 2), "tiny_steps": steps,
                "tiny_s_per_step": round((train_seconds - eval_seconds) / steps, 4),
                "eval_share_of_epoch": round(eval_seconds / train_seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="full-size Anima 2B at 1024^2 (needs a GPU)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile per block")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.full:
        if device.type != "cuda":
            raise SystemExit("--full needs a CUDA GPU")
        steps = args.steps or 10
        runs = []
        for batch in (1, 4):
            for ckpt in (True, False):
                try:
                    runs.append(bench_step(ANIMA_2B, device, torch.bfloat16, 1024, batch, ckpt, steps, 3))
                except torch.OutOfMemoryError:
                    runs.append({"batch": batch, "checkpointing": ckpt, "error": "out of memory"})
                    torch.cuda.empty_cache()
        if args.compile:
            runs.append(bench_step(ANIMA_2B, device, torch.bfloat16, 1024, 1, False, steps, 3, compile_blocks=True))
        result["full_1024"] = runs
        result["forward_tflop_1024"] = round(forward_flops(ANIMA_2B, 4096) / 1e12, 2)
        result.update(bench_vae_and_previews(device, torch.bfloat16, 1024, full=True))
    else:
        tiny = DiTConfig(dim=64, depth=2, head_dim=32, context_dim=64, adaln_lora_dim=16)
        steps = args.steps or 20
        result["tiny_step"] = [bench_step(tiny, device, torch.float32, 256, b, c, steps, 3)
                               for b in (1, 4) for c in (True, False)]
        result.update(bench_vae_and_previews(device, torch.float32, 256, full=False))
        result.update(bench_tiny_end_to_end())
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
