"""A review package's parts made by hand: a Review built the way select_job builds one, with a hostile
string in every user-controlled field. Shared by test_package and test_page_browser."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

from animad.select.package import PreviewCell, Review
from animad.select.shortlist import analyze_curve

from curve_families import make_curve

EVIL = "<script>alert(1)</script>"


def preview_colour(row_index: int, prompt_index: int) -> tuple[int, int, int]:
    return (40 * row_index % 256, 80 * prompt_index % 256, 120)


def build_review(tmp_path: Path, name: str = "cat", preview_size: tuple[int, int] = (64, 64)):
    """A Review the way select_job builds one: a real floor analysis, real epoch files, real PNGs."""
    epochs, losses, _, _ = make_curve("white", 0)
    analysis = analyze_curve(epochs, losses, patience=15, shortlist_size=4)
    assert analysis.shortlist, "the test curve must give a shortlist"
    loras = {}
    for epoch in analysis.shortlist:
        path = tmp_path / "work" / "epochs" / f"cat-e{epoch:04d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"lora_unet_blocks_0_mlp_layer1.lora_down.weight": torch.full((2, 4), float(epoch))}, str(path))
        loras[epoch] = path
    prompts = ["@cat, 1girl, smile, looking at viewer, upper body, cherry blossoms, outdoors", f"@cat, {EVIL}"]
    rows = ["baseline"] + [f"e{e:04d}" for e in analysis.shortlist]
    cells = []
    for row_index, row in enumerate(rows):
        for prompt_index in range(len(prompts)):
            image = tmp_path / "work" / "selection" / f"{row}-p{prompt_index}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", preview_size, preview_colour(row_index, prompt_index)).save(image)
            cells.append(PreviewCell(row, prompt_index, image))
    kinds = {p.epoch: p.kind for p in analysis.picks}
    labels = {"baseline": "no LoRA", **{f"e{e:04d}": f"epoch {e} ({kinds[e]})" for e in analysis.shortlist}}
    warnings = [{"file": f"img{EVIL}.png", "where": f"line 1 {EVIL}", "message": f"caption {EVIL} is odd",
                 "fix": f"rewrite {EVIL}", "severity": "warning"}]
    review = Review(
        job_name=name, trigger=f"@cat{EVIL}", analysis=analysis.to_dict(), curve_source="eval",
        train_losses={int(e): float(v) * 1.1 for e, v in zip(epochs, losses)}, lora_files=loras, prompts=prompts,
        seeds=[1000, 1001], rows=rows, row_labels=labels, cells=cells, warnings=warnings,
        settings={"steps": 30, "cfg": 4.0, "flow_shift": 3.0, "width": 1024, "height": 1024, "sampler": "euler",
                  "negative_prompt": f"worst quality {EVIL}", "strengths": [1.0]},
        stopped_reason="stopped at the confirmed floor (epoch 56 + patience 15)",
        extra={"epochs_trained": len(epochs), "job_folder": str(tmp_path / "work")})
    return review, analysis, loras
