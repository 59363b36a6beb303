"""A small generated dataset (coloured shapes with tag captions) for the demo and the tests."""

from __future__ import annotations

import random
from pathlib import Path

import yaml
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 180, 70), "yellow": (230, 200, 40)}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = {"white background": (245, 245, 245), "black background": (20, 20, 20)}


def draw_shape(size: tuple[int, int], shape: str, colour, background, rng: random.Random) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    r = min(width, height) * rng.uniform(0.25, 0.38)
    cx = width / 2 + rng.uniform(-0.1, 0.1) * width
    cy = height / 2 + rng.uniform(-0.1, 0.1) * height
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return image


def make_dataset(folder: Path, *, count: int = 8, size: tuple[int, int] = (64, 64), trigger: str = "@demo",
                 job: dict | None = None, subsets: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write images + captions (+ job.yaml) into folder; subsets maps a subfolder name to an image count."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    layout = subsets or {"": count}
    index = 0
    for sub, sub_count in layout.items():
        target = folder / sub if sub else folder
        target.mkdir(parents=True, exist_ok=True)
        for _ in range(sub_count):
            shape = SHAPES[index % len(SHAPES)]
            colour = list(COLOURS)[(index // len(SHAPES)) % len(COLOURS)]
            background = list(BACKGROUNDS)[index % 2]
            image = draw_shape(size, shape, COLOURS[colour], BACKGROUNDS[background], rng)
            stem = f"img{index:03d}"
            image.save(target / f"{stem}.png")
            (target / f"{stem}.txt").write_text(f"{trigger}, {colour} {shape}, {background}, simple\n")
            index += 1
    if job is not None:
        (folder / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    return folder


def tiny_job(epochs: int = 3, **overrides) -> dict:
    """A job.yaml for tiny models on the CPU: small images, a fast optimizer, short previews."""
    job = {
        "trigger": "@demo",
        "data": {"resolution": 64, "batch_size": 2, "min_bucket": 64, "max_bucket": 128, "bucket_step": 64},
        "schedule": {"max_epochs": epochs},
        "optimizer": {"type": "adamw", "lr": 3e-3, "weight_decay": 0.0},
        "network": {"dim": 4},
        "precision": {"mixed": "fp32"},
        "previews": {"width": 64, "height": 64, "steps": 6},
        "selection": {"patience": 4},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(job.get(key), dict):
            job[key].update(value)
        else:
            job[key] = value
    return job


def write_daemon_config(path: Path, models: dict, **extra) -> Path:
    """An animad.yaml whose default model set is the given files (e.g. a tiny set)."""
    config = {
        "default_model": "tiny",
        "models": {"tiny": {"dit": str(models["dit"]), "text_encoder": str(models["text_encoder"]),
                            "vae": str(models["vae"])}},
        "tokenizers": [str(models["tokenizers"])],
    }
    config.update(extra)
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
    return Path(path)
