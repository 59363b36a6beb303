"""After training: find the floor, shortlist, render previews and write the review package."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from animad.config.daemon import Daemon
from animad.config.job import load_resolved
from animad.errors import disk_full_is_user_error
from animad.intake.jobfiles import load_job_dataset
from animad.intake.models import job_model_files
from animad.layout import JobPaths, read_epochs_log
from animad.select.package import PreviewCell, Review, write_review_package
from animad.select.previews import default_prompts, preview_rows, render_previews
from animad.select.shortlist import analyze_curve
from animad.train.floor import CURVE_SOURCES, epoch_curve

log = logging.getLogger("animad.select")


def select_job(paths: JobPaths, *, daemon: Daemon, outbox: Path, **options) -> Path:
    """Floor analysis + previews + review package into outbox (= <outbox dir>/<name>/); returns that dir."""
    then = f"The epoch files are intact: free some space and run `animad select {paths.root}`."
    with disk_full_is_user_error(outbox, then):
        return _select_job(paths, daemon=daemon, outbox=outbox, **options)


def _select_job(paths: JobPaths, *, daemon: Daemon, outbox: Path, prompts=None, seeds=None, steps=None, size=None,
                previews=True, should_stop=None) -> Path:
    config = load_resolved(paths.resolved)
    records = read_epochs_log(paths.epochs_log)
    epochs, losses, key = epoch_curve(records)
    sel = config.selection
    analysis = analyze_curve(epochs, losses, patience=sel.patience, shortlist_size=sel.shortlist_size,
                             min_epoch=sel.min_epoch)
    epoch_files = {e: paths.epoch_file(config.name, e) for e in analysis.shortlist
                   if paths.epoch_file(config.name, e).is_file()}
    dataset = load_job_dataset(paths, config)
    pv = config.previews
    prompts = list(prompts or pv.prompts or default_prompts([i.caption for i in dataset.items], config.trigger))
    seeds = list(seeds or pv.seeds or [1000 + i for i in range(len(prompts))])
    if len(seeds) == 1 and len(prompts) > 1:
        seeds = seeds * len(prompts)
    seeds = (seeds + [1000 + i for i in range(len(prompts))])[: len(prompts)]
    settings = {"steps": steps or pv.steps, "cfg": pv.cfg, "flow_shift": pv.flow_shift, "sampler": pv.sampler,
                "width": size or pv.width, "height": size or pv.height, "negative_prompt": pv.negative_prompt,
                "strengths": list(pv.strengths)}
    cells = []
    rows = preview_rows(sorted(epoch_files), settings["strengths"])
    if previews:
        files = job_model_files(paths, config, daemon)
        images = render_previews(config, files, epoch_files, paths.selection, prompts, seeds, settings,
                                 should_stop=should_stop)
        if should_stop and should_stop():
            return Path(outbox)  # stopped mid-render: the next run renders the rest (finished images are kept)
        cells = [PreviewCell(row, index, path) for (row, index), path in images.items() if path.is_file()]
    pick_kind = {p.epoch: p.kind for p in analysis.picks}
    row_labels = {"baseline": "no LoRA"}
    for row in rows[1:]:
        strength = "" if len(settings["strengths"]) == 1 else f" @ {row.strength:g}"
        row_labels[row.key] = f"epoch {row.epoch} ({pick_kind.get(row.epoch, 'pick')}){strength}"
    try:
        warnings = [p for p in json.loads(paths.report.read_text()) if p.get("severity") == "warning"]
    except (OSError, ValueError):
        warnings = []
    finished = paths.root / "finished.txt"
    stopped = finished.read_text().strip() if finished.is_file() else "training did not finish"
    review = Review(
        job_name=config.name, trigger=config.trigger, analysis=analysis.to_dict(), curve_source=CURVE_SOURCES[key],
        train_losses={r["epoch"]: r["loss"] for r in records}, lora_files=epoch_files, prompts=prompts,
        seeds=seeds, rows=[r.key for r in rows] if cells else [], row_labels=row_labels, cells=cells,
        warnings=warnings, settings=settings, stopped_reason=stopped,
        extra={"job_folder": str(paths.root), "epochs_trained": len(records)})
    package = write_review_package(Path(outbox), review)
    apply_retention(paths, config, daemon, set(analysis.shortlist))
    log.info("review package written to %s", package)
    return package


def apply_retention(paths: JobPaths, config, daemon: Daemon, keep: set[int]) -> None:
    """keep_epochs: shortlist removes the other epoch files (ours, in the job folder) once the package exists."""
    if daemon.config.keep_epochs != "shortlist":
        return
    for record in read_epochs_log(paths.epochs_log):
        if record["epoch"] not in keep:
            paths.epoch_file(config.name, record["epoch"]).unlink(missing_ok=True)
