"""The order of an epoch: bucketed batches, a pure function of (seed, epoch).

Because the plan can be recomputed, a resumed run only needs to remember the epoch and the index of
the next batch, and it replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import random

from animad.train.buckets import bucket_for
from animad.intake.dataset import Dataset


@dataclasses.dataclass(frozen=True)
class Batch:
    size: tuple[int, int]  # (width, height) of the bucket
    items: tuple[int, ...]  # indices into Dataset.items


def item_buckets(dataset: Dataset, data) -> list[tuple[int, int]]:
    return [bucket_for(item.width, item.height, data) for item in dataset.items]


def epoch_plan(dataset: Dataset, buckets: list[tuple[int, int]], batch_size: int, seed: int,
               epoch: int) -> list[Batch]:
    rng = random.Random(f"{seed}:plan:{epoch}")
    groups: dict[tuple[int, int], list[int]] = {}
    for index, item in enumerate(dataset.items):
        groups.setdefault(buckets[index], []).extend([index] * dataset.subsets[item.subset].repeats)
    batches = []
    for size in sorted(groups):
        members = groups[size]
        rng.shuffle(members)
        batches += [Batch(size, tuple(members[i:i + batch_size])) for i in range(0, len(members), batch_size)]
    rng.shuffle(batches)
    return batches


def plan_length(dataset: Dataset, buckets: list[tuple[int, int]], batch_size: int) -> int:
    """Batches per epoch (the same for every epoch: shuffling never changes group sizes)."""
    return len(epoch_plan(dataset, buckets, batch_size, 0, 1))
