"""precision.vram: auto - pick the memory savings a job needs on this GPU, and no more.

Each saving costs time, so the picker walks from the cheapest down and stops at the first plan the
memory model (anima/memory.py) says fits:

1. no checkpointing (fastest),
2. checkpointing every k-th block, fewest checkpointed blocks first (each costs one more forward),
3. checkpointing every block (+45% compute),
4. the text encoder in CPU memory between uses, when it runs in the loop (shuffled captions) and does
   not train: its weights come over PCIe before each encode (a fraction of a second, against a step of
   seconds) and leave without a copy back. Caching its outputs per shuffled variant instead would keep
   one embedding per variant seen, an unbounded number with tag shuffling and dropout, so we move the
   model instead,
5. block swap: n DiT blocks' frozen weights in pinned CPU memory, prefetched on a side stream
   (anima/blockswap.py), fewest first, up to depth - 2 (sd-scripts' limit too).

The ladder itself (`pick`) is config/vram.py's, a pure function of the bytes available and the job's
sizes: it is tested without a GPU, and the dataset report (intake/) can say what a job will do on a
card. This module reads a job and a device. On the CPU there is nothing to pick: the job's own
precision.gradient_checkpointing applies.
"""

from __future__ import annotations

from animad.anima import memory
from animad.config.job import JobConfig
from animad.config.vram import VramPlan, pick


def job_size(data_config) -> tuple[int, int]:
    """The largest bucket's area as (width, height): buckets keep an image's area at or under it."""
    resolution = data_config.resolution
    if isinstance(resolution, int):
        return resolution, resolution
    return int(resolution[0]), int(resolution[1])


def configured(config: JobConfig, text_encoder_live: bool, model_config=None) -> VramPlan:
    """vram: off (or no GPU): exactly what precision.gradient_checkpointing says, everything on the device."""
    every = checkpoint_every(config.precision.gradient_checkpointing)
    width, height = job_size(config.data)
    estimate = memory.training_memory(width, height, config.data.batch_size, checkpoint_every=every,
                                      rank=config.network.dim, optimizer=config.optimizer.type,
                                      text_encoder_on_gpu=text_encoder_live, config=model_config,
                                      kind=config.network.type, factor=config.network.factor)
    return VramPlan(every, True, 0, estimate, None)


def checkpoint_every(value) -> int:
    """precision.gradient_checkpointing as a block interval: true 1, false 0, k every k-th block."""
    if isinstance(value, bool):
        return 1 if value else 0
    return max(0, int(value))


def plan_for_job(config: JobConfig, budget: int | None, text_encoder_live: bool, model_config=None) -> VramPlan:
    """What build_parts applies: the picker's plan for vram: auto on a GPU, else the configured one."""
    if budget is None or config.precision.vram == "off":
        return configured(config, text_encoder_live, model_config)
    width, height = job_size(config.data)
    return pick(budget, width=width, height=height, batch=config.data.batch_size, rank=config.network.dim,
                optimizer=config.optimizer.type, text_encoder_live=text_encoder_live,
                text_encoder_trains=config.network.train_text_encoder, config=model_config,
                kind=config.network.type, factor=config.network.factor)


def device_budget(device) -> int | None:
    """Bytes this job may use on a CUDA device: free now, plus what this process already holds (the
    model's estimate counts those parts too) and its CUDA context. None off CUDA."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) + memory.CUDA_CONTEXT
