"""Training, caching and preview speed, and the step's host syncs and graphs. Prints JSON.

    python bench/train_bench.py                 # tiny model on the CPU (what CI machines can run)
    python bench/train_bench.py --counts        # syncs, ops and Dynamo graphs of the production step (CPU)
    python bench/train_bench.py --full          # full-size Anima 2B at 1024^2 on a GPU
    python bench/train_bench.py --full --device cpu --tiny --steps 2   # the --full path on the tiny model

--full runs the production step itself (train/loop.py's train_step: the default optimizer, the loop's
one host read per step, its compile when asked), on a DiT built on the meta device and materialised
straight in bf16 as the loader does (never an fp32 copy: the old bench's fp32 build peaked at ~11.7
GB and made every configuration "run out of memory" on a 12 GB card). Configurations: batch 1 and 4
at 1024^2, checkpointing on and off (precision.vram: off, so each is what it says), plus the defaults
with vram: auto (what a user's job picks). Captions are cached (the text encoder is not in the loop:
its 0.6B-parameter forward over ~30 tokens is <1% of a step).

MFU counts the useful FLOPs of a LoRA step: the forward plus the input-gradient backward (linears
2x forward, attention core 3x forward), ~40 TFLOP per 1024^2 image (docs/anima_arch.md 8.1), against
the dense bf16 peak (FP32 accumulate, no sparsity) of the card in PEAK_TFLOPS.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from animad.config.job import JobConfig  # noqa: E402
from animad.anima.dit import ANIMA_2B, AnimaDiT, DiTConfig  # noqa: E402
from animad.anima.pipeline import Anima  # noqa: E402

TINY = DiTConfig(dim=64, depth=2, head_dim=32, context_dim=64, adaln_lora_dim=16)

# Dense bf16 tensor peak with FP32 accumulate (no 2:4 sparsity), TFLOP/s, and where each number is from.
# Matched against torch.cuda.get_device_name(); longer names first ("H100 PCIe" before "H100").
# "computed": SMs x boost clock x 512 FLOP/clk/SM, the GeForce FP32-accumulate rate that reproduces the
# whitepaper figures above it (3090: 82 x 1.695 GHz x 512 = 71.2; 4090: 128 x 2.52 x 512 = 165.2).
PEAK_TFLOPS = [
    ("H100 PCIe", 756.0, "NVIDIA H100 datasheet (1,513 with sparsity)"),
    ("H100 NVL", 835.0, "NVIDIA H100 datasheet (1,671 with sparsity)"),
    ("H100", 989.0, "NVIDIA H100 SXM5 datasheet (1,979 with sparsity)"),
    ("H200 NVL", 835.0, "NVIDIA H200 datasheet (1,671 with sparsity)"),
    ("H200", 989.0, "NVIDIA H200 SXM datasheet (1,979 with sparsity)"),
    ("A100", 312.0, "NVIDIA A100 datasheet (624 with sparsity)"),
    ("L40S", 362.0, "NVIDIA L40S datasheet: 362.05 (733 with sparsity)"),
    ("L40", 181.0, "NVIDIA L40 datasheet: 181.05 (362.1 with sparsity)"),
    ("RTX 6000 Ada", 364.0, "NVIDIA RTX 6000 Ada datasheet: 1,457 FP8 sparse / 4"),
    ("A6000", 155.0, "NVIDIA RTX A6000 datasheet: 309.7 with sparsity / 2"),
    ("5090", 209.5, "NVIDIA RTX Blackwell GPU whitepaper (419 with sparsity)"),
    ("5080", 112.6, "computed: 84 SMs x 2.617 GHz"),
    ("5070 Ti", 87.9, "computed: 70 SMs x 2.452 GHz"),
    ("5060 Ti", 47.4, "computed: 36 SMs x 2.572 GHz"),
    ("4090", 165.2, "NVIDIA Ada GPU architecture whitepaper (330.3 with sparsity; 330 is FP16 accumulate)"),
    ("4080", 97.5, "computed: 76 SMs x 2.505 GHz"),
    ("4070 Ti", 80.2, "computed: 60 SMs x 2.61 GHz"),
    ("4070", 58.3, "computed: 46 SMs x 2.475 GHz"),
    ("4060 Ti", 44.1, "computed: 34 SMs x 2.535 GHz"),
    ("4060", 30.2, "computed: 24 SMs x 2.46 GHz"),
    ("3090 Ti", 80.0, "NVIDIA Ampere GA102 whitepaper figure for the 3090 scaled by clock/SMs: 84 x 1.86 GHz"),
    ("3090", 71.0, "NVIDIA Ampere GA102 GPU architecture whitepaper: 71 (142 with sparsity)"),
    ("3080", 59.5, "computed: 68 SMs x 1.71 GHz"),
    ("3070", 40.6, "computed: 46 SMs x 1.725 GHz"),
    ("3060", 25.5, "computed: 28 SMs x 1.777 GHz"),
]


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


def peak_tflops(name: str) -> tuple[float, str] | None:
    return next(((peak, source) for key, peak, source in PEAK_TFLOPS if key in name), None)


def materialise(module: torch.nn.Module, device, dtype, seed: int) -> torch.nn.Module:
    """A module built on the meta device, given storage on `device` in `dtype` and random weights in place.

    As the loader does (meta, then the file's tensors in the training dtype): no fp32 copy ever exists.
    """
    module = module.to(dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.ndim == 1:
                param.fill_(1.0)  # norms at 1 (the DiT has no biases; the adapter's few start at 1 too)
            else:
                param.normal_(0.0, param.shape[1] ** -0.5, generator=generator)
        for name, buffer in module.named_buffers():
            if buffer.is_floating_point():
                buffer.zero_()
    return module


def random_anima(config: DiTConfig, device, dtype) -> Anima:
    """The face over a random-weight DiT + LLM adapter of the real layout, built in memory."""
    from accelerate import init_empty_weights
    from diffusers.models.condition_embedders.condition_embedder_anima import AnimaTextConditioner

    with torch.device("meta"):
        dit = AnimaDiT(config)
    full = config == ANIMA_2B
    with init_empty_weights(include_buffers=False):  # the adapter's RoPE buffer is computed, not loaded
        adapter = AnimaTextConditioner(source_dim=1024 if full else 32, target_dim=config.context_dim,
                                       model_dim=config.context_dim, num_layers=6 if full else 2,
                                       num_attention_heads=16 if full else 2, target_vocab_size=32128)
    anima = Anima(None, device, dtype)  # no files: the models are set directly
    anima.dit = materialise(dit, device, dtype, 0)
    anima.adapter = materialise(adapter, device, dtype, 1)
    return anima


def job_for(batch: int, side: int, checkpointing: bool, compile_on: bool, vram: str, mixed: str) -> JobConfig:
    job = JobConfig()
    return dataclasses.replace(
        job, device="auto",
        data=dataclasses.replace(job.data, batch_size=batch, resolution=side, shuffle_captions=False),
        precision=dataclasses.replace(job.precision, mixed=mixed, gradient_checkpointing=checkpointing,
                                      compile=compile_on, vram=vram),
        selection=dataclasses.replace(job.selection, stop_at_floor=False))


def production_step(config: DiTConfig, device, side: int, batch: int, checkpointing: bool, steps: int, warmup: int,
                    compile_on: bool = False, vram: str = "off") -> dict:
    """Time train/loop.py's train_step (the step the loop runs) on `batch` images of side x side."""
    from animad.config.problems import Problems
    from animad.demo.synthetic import make_dataset
    from animad.intake.dataset import scan_dataset
    from animad.anima.text import TextEmbedding
    from animad.train import loop
    from animad.train.batches import epoch_plan, item_buckets
    from animad.train.caches import LatentEntry
    from animad.train.progress import Progress
    from animad.train.precision import resolve_precision
    from animad.train.ranks import SINGLE

    mixed = "bf16" if device.type == "cuda" else "fp32"
    job = job_for(batch, side, checkpointing, compile_on, vram, mixed)
    if device.type != "cuda":
        job = dataclasses.replace(job, device=device.type)
    precision = resolve_precision(job, device)
    dtype = precision.weight_dtype
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_dataset(Path(tmp) / "ds", count=batch, size=(side, side))
        dataset = scan_dataset(folder, job, Problems())
    buckets = item_buckets(dataset, job.data)
    generator = torch.Generator().manual_seed(0)
    latents = [LatentEntry(torch.randn((16, h // 8, w // 8), generator=generator), None, None) for w, h in buckets]
    qwen_dim = 1024 if config == ANIMA_2B else 32
    texts = {item.caption: TextEmbedding(torch.randn(24, qwen_dim, generator=generator),
                                         torch.randint(3, 32000, (28,), generator=generator))
             for item in dataset.items}
    anima = random_anima(config, device, dtype)
    sizes = loop.plan_sizes(job, dataset, buckets, 1)
    parts = loop.build_parts(None, job, anima, precision, sizes)  # no init_from: paths are not read
    caches = loop.Caches(buckets=buckets, latents=latents, texts=texts, live_text=False)
    run = loop.Run(paths=None, config=job, files=None, dataset=dataset, group=SINGLE, precision=precision,
                   anima=anima, hashes=None, fingerprint="", caches=caches, sizes=sizes, parts=parts, eval_set=None,
                   tracker=loop.NoTracker(), should_stop=lambda: False, on_progress=lambda _: None)
    progress = Progress()
    plan = epoch_plan(dataset, buckets, batch, job.seed, 1)
    parts.network.train()
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loop.train_step(run, progress, plan[:1])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    tokens = (side // 16) ** 2
    out = {"side": side, "batch": batch, "checkpointing": bool(anima.dit.gradient_checkpointing), "vram": vram,
           "compile": compile_on, "optimizer": job.optimizer.type, "step_s": round(step, 4),
           "images_per_s": round(batch / step, 3),
           "useful_gflop_per_step": round(batch * step_flops(config, tokens) / 1e9, 3)}
    if progress.micro_batch:
        out["micro_batch_after_oom"] = progress.micro_batch
    if device.type == "cuda":
        peak = peak_tflops(torch.cuda.get_device_name(device))
        if peak:
            out["mfu"] = round(batch * step_flops(config, tokens) / step / 1e12 / peak[0], 3)
        out["peak_vram_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        out["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    else:
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    del run, parts, anima, caches
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def default_plans(batches=(1, 4)) -> list[tuple[int, bool, str]]:
    """(batch, checkpointing, vram): each batch with checkpointing on and off as configured, then the
    largest batch with vram: auto (what the job's defaults pick on this card)."""
    return [(b, ckpt, "off") for b in batches for ckpt in (True, False)] + [(batches[-1], True, "auto")]


def parse_plans(text: str) -> list[tuple[int, bool, str]]:
    """--plans 4:on:off,4:on:auto -> [(4, True, "off"), (4, True, "auto")]."""
    plans = []
    for part in text.split(","):
        batch, ckpt, vram = part.split(":")
        plans.append((int(batch), ckpt == "on", vram))
    return plans


def configurations(config: DiTConfig, device, side: int, steps: int, warmup: int, compile_on: bool,
                   plans: list[tuple[int, bool, str]]) -> list[dict]:
    runs = []
    for batch, ckpt, vram in plans:
        try:
            runs.append(production_step(config, device, side, batch, ckpt, steps, warmup, compile_on, vram))
        except torch.OutOfMemoryError:  # (the loop halves the micro-batch first; at 1 image it gives up)
            runs.append({"side": side, "batch": batch, "checkpointing": ckpt, "vram": vram, "compile": compile_on,
                         "error": "out of memory at one image per micro-batch"})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return runs


def bench_vae_and_previews(device, dtype, side: int, full: bool) -> dict:
    from diffusers import AutoencoderKLQwenImage

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
    config = ANIMA_2B if full else TINY
    anima = random_anima(config, device, dtype)  # meta, then bf16: no fp32 copy of the 2B DiT
    anima.dit.eval()
    context = torch.randn(2, 512, config.context_dim, device=device, dtype=dtype)
    steps = 30

    def scope():  # what select/ wraps every DiT call in: autocast in the weights' dtype
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    noise = anima.preview_noise(0, side, side)
    with torch.no_grad():
        anima.sample(noise, context, 2, 4.0, scope=scope)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        latents = anima.sample(noise, context, steps, 4.0, scope=scope)  # KSampler euler, CFG 4: cond + uncond
        vae.decode(latents)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    per_image = time.perf_counter() - t
    del anima
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
    parser.add_argument("--full", action="store_true", help="the production step on full-size Anima 2B at 1024^2 "
                                                            "(a GPU; see --device/--tiny to run the path on a CPU)")
    parser.add_argument("--counts", action="store_true",
                        help="count host syncs, dispatched ops and Dynamo graphs of the production step on the "
                             "tiny model (CPU; one JSON line)")
    parser.add_argument("--optimizer", default=None, help="with --counts: count with this optimizer instead of "
                                                          "the default")
    parser.add_argument("--network", default=None, choices=("lora", "lokr", "loha"),
                        help="with --counts: count with this network.type instead of the default")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (compiling happens here)")
    parser.add_argument("--compile", action="store_true", help="--full: the loop's torch.compile of each block")
    parser.add_argument("--batch", type=int, action="append", help="--full: batch sizes (default 1 and 4)")
    parser.add_argument("--plans", default=None, help="--full: batch:checkpointing:vram list instead, e.g. "
                                                      "4:on:auto,1:off:off")
    parser.add_argument("--side", type=int, default=None, help="--full: image side (default 1024; 64 with --tiny)")
    parser.add_argument("--device", default=None, help="--full: cuda (default when there is one) or cpu")
    parser.add_argument("--tiny", action="store_true", help="--full on the tiny model (checks the path on a CPU)")
    parser.add_argument("--no-previews", action="store_true", help="--full: skip the VAE and preview timings")
    args = parser.parse_args()
    if args.counts:
        from step_counts import step_counts

        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(step_counts(Path(tmp), optimizer=args.optimizer, network=args.network)))
        return
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.full:
        if device.type != "cuda" and not args.tiny:
            raise SystemExit("--full needs a CUDA GPU (or --device cpu --tiny to check the path)")
        config = TINY if args.tiny else ANIMA_2B
        side = args.side or (64 if args.tiny else 1024)
        if device.type == "cuda":
            peak = peak_tflops(result["device"])
            result["peak_bf16_tflops"], result["peak_source"] = peak if peak else (None, "not in PEAK_TFLOPS: no MFU")
        plans = parse_plans(args.plans) if args.plans else default_plans(tuple(args.batch or (1, 4)))
        result["runs"] = configurations(config, device, side, args.steps or 10, 3 if args.warmup is None
                                        else args.warmup, args.compile, plans)
        result["forward_gflop_per_image"] = round(forward_flops(config, (side // 16) ** 2) / 1e9, 3)
        if not args.no_previews:
            result.update(bench_vae_and_previews(device, torch.bfloat16 if device.type == "cuda" else torch.float32,
                                                 side, full=not args.tiny))
        print(json.dumps(result))
        return
    steps = args.steps or 20
    result["tiny_step"] = configurations(TINY, torch.device("cpu"), 64, steps, 3, False, default_plans())
    result.update(bench_vae_and_previews(torch.device("cpu"), torch.float32, 256, full=False))
    result.update(bench_tiny_end_to_end())
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
