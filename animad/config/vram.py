"""precision.vram: auto - the plan: the fastest set of memory savings the memory model says fits.

A pure function of the bytes available and the job's sizes over anima/memory.py's model of the DiT,
so it is tested without a GPU. It resolves an `auto` setting before training (as batch_size: auto is
resolved in config/job.py), and two layers ask it: the dataset report (intake/: what `animad check`
says a job will do on a card) and train/vram.py (what a job does on its device). It lives here, the
lowest layer both may import, not beside the memory model it asks: the ladder is a policy of ours,
not a fact about Anima.
"""

from __future__ import annotations

import dataclasses

from animad.anima.memory import MemoryEstimate, GB, checkpointed_blocks, default_config, training_memory

FIT_SHARE = 0.95  # use at most this share of what is free: other processes and the driver move too


@dataclasses.dataclass(frozen=True)
class VramPlan:
    checkpoint_every: int  # 0 none, 1 all, k every k-th block
    text_encoder_on_gpu: bool  # False: in CPU memory between uses (only matters when it runs in the loop)
    swapped_blocks: int
    estimate: MemoryEstimate
    budget: int | None  # bytes the plan was fitted to; None when nothing was picked (CPU, vram: off)
    fits: bool = True

    def describe(self, depth: int) -> str:
        if self.checkpoint_every == 0:
            saving = "no gradient checkpointing"
        elif self.checkpoint_every == 1:
            saving = "gradient checkpointing on every block"
        else:
            saving = (f"gradient checkpointing on every {ordinal(self.checkpoint_every)} block "
                      f"({checkpointed_blocks(depth, self.checkpoint_every)} of {depth})")
        parts = [saving]
        if not self.text_encoder_on_gpu:
            parts.append("text encoder in CPU memory between uses")
        if self.swapped_blocks:
            parts.append(f"{self.swapped_blocks} of {depth} DiT blocks swapped to CPU memory")
        return ", ".join(parts)

    def line(self, depth: int) -> str:
        """The one log line saying what was chosen and why."""
        chosen = self.describe(depth)
        need = f"{self.estimate.total / GB:.1f} GB by the memory model"
        if self.budget is None:
            return f"vram: {chosen} (as configured)"
        have = f"{self.budget / GB:.1f} GB available"
        if not self.fits:
            return (f"vram: {chosen}, the most this can save, still needs {need} of {have}: it may run out "
                    "of memory; lower data.batch_size or data.resolution")
        return f"vram: {chosen} ({need}, {have})"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def candidates(depth: int, text_encoder_movable: bool):
    """(checkpoint_every, text_encoder_on_gpu, swapped_blocks) from the fastest to the most frugal."""
    yield 0, True, 0
    seen = set()
    for every in range(depth, 1, -1):  # every k-th: 1 block checkpointed, then 2, 3, ...
        count = checkpointed_blocks(depth, every)
        if count not in seen and count < depth:
            seen.add(count)
            yield every, True, 0
    yield 1, True, 0
    if text_encoder_movable:
        yield 1, False, 0
    for swapped in range(1, depth - 1):
        yield 1, not text_encoder_movable, swapped


def pick(budget: int, *, width: int, height: int, batch: int, rank: int, optimizer: str, text_encoder_live: bool,
         text_encoder_trains: bool = False, config=None, kind: str = "lora", factor: int = -1) -> VramPlan:
    """The fastest plan whose estimate fits FIT_SHARE of `budget` bytes (or the most frugal one, marked
    as not fitting). text_encoder_live: the text encoder runs in the loop (else it is unloaded anyway)."""
    c = config or default_config()
    movable = text_encoder_live and not text_encoder_trains
    plan = None
    for every, te_on_gpu, swapped in candidates(c.depth, movable):
        estimate = training_memory(width, height, batch, checkpoint_every=every, rank=rank,
                                   optimizer=optimizer, text_encoder_on_gpu=text_encoder_live and te_on_gpu,
                                   swapped_blocks=swapped, config=c, kind=kind, factor=factor)
        plan = VramPlan(every, te_on_gpu, swapped, estimate, budget, estimate.total <= FIT_SHARE * budget)
        if plan.fits:
            return plan
    return plan
