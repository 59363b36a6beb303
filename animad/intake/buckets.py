"""Which size each image trains at: aspect-ratio buckets near the training area.

Here in intake, not train/, because `animad check` reports it (small images, steps per epoch)
before anything trains; train/ reads the same function, so the report and the run cannot differ.
"""

from __future__ import annotations

import math

# What transparent pixels become when alpha_mask is off (train/buckets.py composites them). White: the
# WD14/SmilingWolf taggers that wrote most captions composite on white before tagging (so a "white
# background" tag describes what trains), and booru sites and ComfyUI's previews show such art on white.
TRANSPARENT_BACKGROUND = (255, 255, 255)
TRANSPARENT_BACKGROUND_NAME = "white"


def target_area(resolution) -> int:
    if isinstance(resolution, list):
        return resolution[0] * resolution[1]
    return resolution * resolution


def bucket_for(width: int, height: int, data) -> tuple[int, int]:
    """(bucket_width, bucket_height) for an image, both multiples of the bucket step (and of 16)."""
    area = target_area(data.resolution)
    if not data.buckets:
        if isinstance(data.resolution, list):
            return data.resolution[0], data.resolution[1]
        return data.resolution, data.resolution
    if not data.upscale:
        area = min(area, width * height)  # small images train at their own size, not blown up
    step, low, high = data.bucket_step, data.min_bucket, data.max_bucket
    aspect = math.log(width / height)
    best, best_score = (low, low), None
    for bucket_width in range(low, high + 1, step):
        bucket_height = min(high, (area // bucket_width) // step * step)
        if bucket_height < low:
            continue
        score = (abs(math.log(bucket_width / bucket_height) - aspect), -bucket_width * bucket_height)
        if best_score is None or score < best_score:
            best, best_score = (bucket_width, bucket_height), score
    return best
