"""Image loading for training: resized to its bucket (see intake/buckets.py), transparency resolved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

# train/ reads the bucket rule from here; it lives in intake/ because `animad check` reports it.
from animad.intake.buckets import TRANSPARENT_BACKGROUND, bucket_for, target_area  # noqa: F401


def has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def flatten(image: Image.Image) -> Image.Image:
    """RGB with transparent parts composited onto TRANSPARENT_BACKGROUND (see intake/buckets.py for why
    white). A plain convert("RGB") would keep the colour transparent pixels store: black, in most exports."""
    if not has_transparency(image):
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, TRANSPARENT_BACKGROUND + (255,))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def load_image(path: Path, size: tuple[int, int], want_alpha: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resize to cover `size`, centre-crop; return pixels (3, H, W) in [-1, 1] and alpha (1, H, W) in [0, 1].

    With want_alpha (alpha_mask on), the alpha is the loss mask and the colours are kept as stored:
    masked pixels do not train. Without it, transparency is composited onto TRANSPARENT_BACKGROUND.
    """
    width, height = size
    with Image.open(path) as image:
        image.load()
        alpha = None
        if want_alpha and has_transparency(image):
            alpha = image.convert("RGBA").getchannel("A")
        rgb = image.convert("RGB") if want_alpha else flatten(image)
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
