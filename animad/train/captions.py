"""Caption augmentation: tag shuffling with kept leading tags, tag dropout and caption dropout."""

from __future__ import annotations

import random

from animad.intake.dataset import Subset, split_tags


def is_dynamic(subset: Subset) -> bool:
    """True when the text changes from step to step, so a fixed text-embedding cache cannot serve it."""
    return subset.shuffle_captions or subset.tag_dropout > 0


def augment_caption(caption: str, subset: Subset, rng: random.Random) -> str:
    if subset.caption_dropout and rng.random() < subset.caption_dropout:
        return ""  # encoded exactly like ComfyUI's empty prompt (see model/text.py)
    if not is_dynamic(subset):
        return caption
    tags = split_tags(caption)
    kept, rest = tags[: subset.keep_tokens], tags[subset.keep_tokens:]
    if subset.tag_dropout:
        rest = [t for t in rest if rng.random() >= subset.tag_dropout]
    if subset.shuffle_captions:
        rng.shuffle(rest)
    return ", ".join(kept + rest)
