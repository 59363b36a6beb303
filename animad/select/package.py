"""Write the review package the user wakes up to: outbox/<name>/.

The package is assembled in a hidden sibling folder and moved into place at the end, so a reader
never sees half of it. If the folder already exists (a re-run of `animad select`), the old one is
renamed to `<name>.previous-<time>`, never deleted, so anything the user added to it stays.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
from pathlib import Path

from animad.select.page import render_page
from animad.select.plot import loss_plot
from animad.select.sheet import contact_sheet


@dataclasses.dataclass
class PreviewCell:
    row: str
    prompt_index: int
    image: Path


@dataclasses.dataclass
class Review:
    job_name: str
    trigger: str | None
    analysis: dict
    curve_source: str
    train_losses: dict[int, float]
    lora_files: dict[int, Path]
    prompts: list[str]
    seeds: list[int]
    rows: list[str]
    row_labels: dict[str, str]
    cells: list[PreviewCell]
    warnings: list[dict]
    settings: dict
    stopped_reason: str
    extra: dict = dataclasses.field(default_factory=dict)


def safe_name(name: str) -> str:
    """A file-name-safe version of a user-given name: no separators, no '..', no control characters."""
    cleaned = re.sub(r"[\x00-\x1f\x7f/\\:*?\"<>|]+", "_", str(name)).strip(" .")
    cleaned = cleaned.replace("..", "_")
    return cleaned[:100] or "lora"


def write_review_package(outbox: Path, review: Review) -> Path:
    outbox = Path(outbox)
    outbox = outbox.parent / safe_name(outbox.name)
    outbox.parent.mkdir(parents=True, exist_ok=True)
    staging = outbox.parent / f".{outbox.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)  # our own leftover from this very process
    (staging / "previews").mkdir(parents=True)
    name = safe_name(review.job_name)

    kinds = {p["epoch"]: p["kind"] for p in review.analysis.get("picks", [])}
    shortlist = []
    for pick in review.analysis.get("picks", []):
        epoch = pick["epoch"]
        source = review.lora_files.get(epoch)
        file_name = None
        if source is not None and Path(source).is_file():
            file_name = f"{name}-e{epoch:04d}-{kinds.get(epoch, 'pick')}.safetensors"
            shutil.copy2(source, staging / file_name)
        shortlist.append({**pick, "file": file_name})

    cells: dict[tuple[str, int], Path] = {}
    previews = []
    for cell in review.cells:
        seed = review.seeds[cell.prompt_index] if cell.prompt_index < len(review.seeds) else 0
        target = f"previews/{safe_name(cell.row)}-p{cell.prompt_index + 1}-s{seed}.png"
        shutil.copy2(cell.image, staging / target)
        cells[(cell.row, cell.prompt_index)] = staging / target
        previews.append({"row": cell.row, "prompt": cell.prompt_index + 1, "seed": seed, "file": target})

    sheet = None
    if cells:
        sheet = "contact_sheet.png"
        contact_sheet(review.rows, review.row_labels, review.prompts, cells, staging / sheet)
    plot = "loss_curve.png"
    title = "stable eval loss" if review.curve_source == "eval" else "loss/epoch_average"
    loss_plot(review.analysis, staging / plot, review.train_losses, title)

    summary = {
        "job": review.job_name, "trigger": review.trigger, "stopped_reason": review.stopped_reason,
        "curve_source": review.curve_source, "analysis": review.analysis, "shortlist": shortlist,
        "prompts": review.prompts, "seeds": review.seeds, "rows": review.rows, "row_labels": review.row_labels,
        "previews": previews, "contact_sheet": sheet, "loss_plot": plot, "settings": review.settings,
        "warnings": review.warnings, "epochs_trained": review.extra.get("epochs_trained"),
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"), **review.extra,
    }
    (staging / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    (staging / "index.html").write_text(render_page(summary), encoding="utf-8")

    if outbox.exists():
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        os.replace(outbox, outbox.parent / f"{outbox.name}.previous-{stamp}")
    os.replace(staging, outbox)
    return outbox
