"""Fixed-seed previews on a tiny model: reproducible, different per epoch, and epoch switching is exact."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from animad.anima.comfyui import read_png_chunks, read_recipe
from animad.config.job import load_resolved
from animad.select.previews import render_previews
from animad.intake.models import job_model_files

SETTINGS = {"steps": 6, "cfg": 4.0, "flow_shift": 3.0, "sampler": "euler", "width": 64, "height": 48,
            "negative_prompt": "lowres", "strengths": [1.0]}
PROMPTS = ["@demo, red, circle", "@demo, blue, square, outdoors"]
SEEDS = [7, 8]


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(np.int16)


def changed(a, b) -> float:
    """Share of pixels that differ."""
    return float((np.abs(pixels(a) - pixels(b)).max(axis=2) > 0).mean())


def render(trained, out, epochs, seeds=SEEDS):
    paths, daemon = trained[0], trained[1]
    config = load_resolved(paths.resolved)
    files = job_model_files(paths, config, daemon)
    epoch_files = {e: paths.epoch_file("ds", e) for e in epochs}
    return render_previews(config, files, epoch_files, out, PROMPTS, seeds, SETTINGS)


def test_same_seed_same_images_and_epochs_differ(trained, tmp_path):
    first = render(trained, tmp_path / "first", [1, 6])
    second = render(trained, tmp_path / "second", [1, 6])
    assert sorted(first) == [(row, p) for row in ("baseline", "e0001", "e0006") for p in (0, 1)]
    for key, path in first.items():
        assert pixels(path).shape == (48, 64, 3)
        assert read_recipe(json.loads(read_png_chunks(path)["prompt"])).lora_name == (  # a ComfyUI recipe
            None if key[0] == "baseline" else f"ds-{key[0]}.safetensors")
        assert np.array_equal(pixels(path), pixels(second[key])), key  # a seed is the same picture
    for prompt in (0, 1):
        assert changed(first[("e0001", prompt)], first[("e0006", prompt)]) > 0.05  # epochs look different
        assert changed(first[("baseline", prompt)], first[("e0006", prompt)]) > 0.05  # the LoRA shows
    assert changed(first[("e0006", 0)], first[("e0006", 1)]) > 0.05  # prompts/seeds matter too


def test_switching_epochs_by_patching_equals_a_fresh_load(trained, tmp_path):
    # Epoch 6 rendered after epoch 1 was patched in must equal epoch 6 rendered on its own: the swap
    # leaves nothing of the previous epoch behind, and the baseline row really is the bare model.
    both = render(trained, tmp_path / "both", [1, 6])
    alone = render(trained, tmp_path / "alone", [6])
    no_lora = render(trained, tmp_path / "none", [])
    for prompt in (0, 1):
        assert np.array_equal(pixels(both[("e0006", prompt)]), pixels(alone[("e0006", prompt)]))
        assert np.array_equal(pixels(both[("baseline", prompt)]), pixels(no_lora[("baseline", prompt)]))


def test_a_different_seed_gives_a_different_image(trained, tmp_path):
    a = render(trained, tmp_path / "a", [6])
    b = render(trained, tmp_path / "b", [6], seeds=[70, 80])
    assert changed(a[("e0006", 0)], b[("e0006", 0)]) > 0.05
