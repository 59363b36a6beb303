"""The stable evaluation loss: fixed images, fixed sigmas, fixed noise, no augmentation.

The raw epoch average is noisy because every step draws random sigmas; this curve is not, so the
floor detector can trust it. Per-sigma values are kept because high-noise sigmas dominate a plain
mean, and a user (or a later detector) may want to look at the low-noise end alone.
"""

from __future__ import annotations

import dataclasses

import torch

from animad.train.flow import eval_sigmas, flow_loss, noisy

# The eval set costs about this fraction of an epoch: one eval forward is ~1/3 of a training sample
# (forward + backward), ~1/4 with gradient checkpointing.
EVAL_BUDGET = 0.10


@dataclasses.dataclass
class EvalSet:
    items: list[int]
    sigmas: list[float]
    noise: list[torch.Tensor]  # one (S, 16, h, w) tensor per item, drawn once from a fixed seed


def choose_eval_items(dataset, requested: int | None, sigma_count: int, samples_per_epoch: int) -> list[int]:
    """Spread the eval images over subsets; by default size the set to ~10% of an epoch's compute."""
    if requested is None:
        requested = max(1, round(EVAL_BUDGET * 3 * samples_per_epoch / sigma_count))
    count = min(requested, len(dataset.items))
    # Deterministic and content-based, so the set does not depend on file listing order.
    by_subset: dict[int, list[int]] = {}
    for index in sorted(range(len(dataset.items)), key=lambda i: dataset.items[i].sha256):
        by_subset.setdefault(dataset.items[index].subset, []).append(index)
    chosen = []
    while len(chosen) < count:
        for members in by_subset.values():
            if members and len(chosen) < count:
                chosen.append(members.pop(0))
    return sorted(chosen)


def build_eval_set(dataset, latents, eval_config, timesteps, seed: int, samples_per_epoch: int) -> EvalSet:
    items = choose_eval_items(dataset, eval_config.images, eval_config.sigmas, samples_per_epoch)
    sigmas = eval_sigmas(eval_config.sigmas, timesteps)
    generator = torch.Generator().manual_seed(seed + 7919)
    noise = [torch.randn((len(sigmas),) + tuple(latents[i].latents.shape), generator=generator) for i in items]
    return EvalSet(items=items, sigmas=sigmas, noise=noise)


@torch.no_grad()
def evaluate(eval_set: EvalSet, dataset, latents, texts, model_step) -> tuple[float, dict[str, float]]:
    """Mean loss and per-sigma losses. model_step(x_t, sigma, captions) returns the velocity."""
    per_sigma = None
    sigma = torch.tensor(eval_set.sigmas)
    for index, noise in zip(eval_set.items, eval_set.noise):
        x0 = latents[index].latents[None].expand(len(eval_set.sigmas), -1, -1, -1)
        caption = dataset.items[index].caption
        prediction = model_step(noisy(x0, noise, sigma), sigma, [caption] * len(eval_set.sigmas))
        # Summed where the prediction is: moving each one to the host would wait for the GPU per image.
        loss = flow_loss(prediction, x0.to(prediction.device), noise.to(prediction.device))
        per_sigma = loss if per_sigma is None else per_sigma + loss
    per_sigma = per_sigma.cpu() / len(eval_set.items)  # the eval's one host read
    by_sigma = {f"{s:.3f}": float(v) for s, v in zip(eval_set.sigmas, per_sigma)}
    return float(per_sigma.mean()), by_sigma
