"""Aspect-ratio buckets and image loading: every image trains at a size close to its own shape."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


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


def load_image(path: Path, size: tuple[int, int], want_alpha: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resize to cover `size`, centre-crop; return pixels (3, H, W) in [-1, 1] and alpha (1, H, W) in [0, 1]."""
    width, height = size
    with Image.open(path) as image:
        image.load()
        alpha = None
        if want_alpha and (image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info):
            alpha = image.convert("RGBA").getchannel("A")
        rgb = image.convert("RGB")
    scale = max(width / rgb.width, height / rgb.height)
    new_size = (max(width, round(rgb.width * scale)), max(height, round(rgb.height * scale)))
    left, top = (new_size[0] - width) // 2, (new_size[1] - height) // 2
    box = (left, top, left + width, top + height)
    rgb = rgb.resize(new_size, Image.Resampling.LANCZOS).crop(box)
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    mask = None
    if alpha is not None:
        alpha = alpha.resize(new_size, Image.Resampling.BILINEAR).crop(box)
        mask = torch.from_numpy(np.asarray(alpha, dtype=np.float32) / 255.0)[None]
    return pixels, mask
