"""After training: find the floor, shortlist, render previews and write the review package (orchestration only:
the prompt set is select/prompts.py's, the preview rows select/previews.py's, the package select/package.py's,
epoch-file retention select/retention.py's and the schedule followed train/ending.py's).

What gets rendered is a list of rows (the no-LoRA baseline, then each shortlisted epoch at 1.0, and
the lowest-loss epoch also at 0.8: the guide's "try 0.8") times the prompts (select/prompts.py).
`animad select JOB --epoch N --strength S --prompt P` adds rows and prompts to the package that is
there: its prompts, seeds and hand-added rows are read back from its summary.json, and the images
already rendered with the same settings are reused, not rendered again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from animad.anima import comfyui
from animad.config.daemon import Daemon
from animad.config.job import load_resolved
from animad.errors import UserError, disk_full_is_user_error
from animad.intake.jobfiles import load_job_dataset
from animad.intake.models import job_model_files
from animad.layout import JobPaths, read_epochs_log
from animad.progress_report import Report
from animad.select.package import PreviewCell, Review, comfyui_loader, write_review_package
from animad.select.previews import (hand_rows, previous_selection, render_previews, review_rows, row_labels,
                                    with_hand_picks)
from animad.select.prompts import choose_prompts, combine_prompts, default_prompts
from animad.select.retention import apply_retention
from animad.select.shortlist import analyze_curve
from animad.train.ending import schedule_followed
from animad.train.floor import CURVE_SOURCES, cooldown_epochs, epoch_curve

log = logging.getLogger("animad.select")



def select_job(paths: JobPaths, *, daemon: Daemon, outbox: Path, recover: str | None = None, **options) -> Path:
    """Floor analysis + previews + review package into outbox (= <outbox dir>/<name>/); returns that dir.

    options: prompts (user prompts), prompts_mode ("add" to the defaults or "replace" them), seeds,
    steps, size, add_epochs / add_strengths (rows added to the existing package), previews, should_stop,
    on_progress (hears {"phase": "selecting"} first, then {"phase": "previews", "done", "total",
    "eta_seconds"} per image rendered: what `animad status` and `animad train` show).
    """
    # recover: the command that redoes this selection where it came from (the daemon's: animad retry N).
    then = f"The epoch files are intact: free some space and run `{recover or f'animad select {paths.root}'}`."
    with disk_full_is_user_error(outbox, then):
        return _select_job(paths, daemon=daemon, outbox=outbox, **options)


def _select_job(paths: JobPaths, *, daemon: Daemon, outbox: Path, prompts=None, prompts_mode=None, seeds=None,
                steps=None, size=None, add_epochs=(), add_strengths=(), previews=True, should_stop=None,
                on_progress=None) -> Path:
    on_progress = on_progress or (lambda progress: None)
    on_progress(Report(phase="selecting").sent())
    config = load_resolved(paths.resolved)
    records = read_epochs_log(paths.epochs_log)
    epochs, losses, key = epoch_curve(records)
    sel = config.selection
    analysis = analyze_curve(epochs, losses, patience=sel.patience, shortlist_size=sel.shortlist_size,
                             min_epoch=sel.min_epoch, cooldown_epochs=cooldown_epochs(records))
    pv = config.previews
    # previews.prompts_mode (job.yaml) says how the job's own prompts combine with the defaults.
    job_mode = pv.prompts_mode
    dataset = load_job_dataset(paths, config)
    defaults = default_prompts([i.caption for i in dataset.items], config.trigger)
    job_prompts = combine_prompts(defaults, list(pv.prompts), job_mode)
    job_seeds = list(pv.seeds)

    # Asking for rows or prompts builds on the package that is there; a bare `animad select` starts over.
    adding = bool(add_epochs or add_strengths or prompts)
    previous = previous_selection(outbox) if adding else {}
    prompt_set, prompt_seeds = choose_prompts(job_prompts, job_seeds, previous, prompts or [], seeds or [],
                                              prompts_mode or "add")

    added = previous.get("added_rows", []) + hand_rows(paths, config.name, add_epochs, add_strengths,
                                                       analysis.shortlist)
    rows = review_rows(analysis.shortlist, analysis.lowest_epoch, list(pv.strengths), added)
    epoch_files = {row.epoch: paths.epoch_file(config.name, row.epoch) for row in rows[1:]
                   if paths.epoch_file(config.name, row.epoch).is_file()}
    rows = [row for row in rows if row.epoch is None or row.epoch in epoch_files]
    analysis_dict = with_hand_picks(analysis.to_dict(), added)
    for pick in analysis_dict["picks"]:
        if pick["epoch"] in epoch_files:
            pick["loader"] = comfyui_loader(epoch_files[pick["epoch"]])

    texts = [p.text for p in prompt_set]
    settings = {"steps": steps or pv.steps, "cfg": pv.cfg, "flow_shift": pv.flow_shift, "sampler": pv.sampler,
                "width": size or pv.width, "height": size or pv.height, "negative_prompt": pv.negative_prompt}
    cells = []
    try:
        files = job_model_files(paths, config, daemon)
    except UserError:
        if previews:
            raise
        files = None  # no previews to render: the workflow file then keeps the template's names
    if previews:
        # The sampling settings alone go to the renderer: which rows are drawn is not a setting, so an
        # added row or strength leaves the images already rendered valid.
        images = render_previews(config, files, epoch_files, paths.selection, texts, prompt_seeds, settings, rows,
                                 should_stop=should_stop, on_image=preview_progress(on_progress))
        if should_stop and should_stop():
            return Path(outbox)  # stopped mid-render: the next run renders the rest (finished images are kept)
        cells = [PreviewCell(row=row, prompt_index=index, image=path) for (row, index), path in images.items()
                 if path.is_file()]
    try:
        warnings = [p for p in json.loads(paths.report.read_text()) if p.get("severity") == "warning"]
    except (OSError, ValueError):
        warnings = []
    ending = paths.read_ending()
    stopped = ending.sentence if ending else "training did not finish"
    shown_settings = {**settings, "strengths": sorted({row.strength for row in rows[1:]}, reverse=True),
                      "model_names": comfyui.loader_names(files) if files else {}}
    review = Review(
        job_name=config.name, trigger=config.trigger, analysis=analysis_dict, curve_source=CURVE_SOURCES[key],
        train_losses={r["epoch"]: r["loss"] for r in records}, lora_files=epoch_files, prompts=texts,
        seeds=prompt_seeds, rows=[r.key for r in rows] if cells else [], row_labels=row_labels(rows, analysis_dict),
        cells=cells, warnings=warnings, settings=shown_settings, stopped_reason=stopped,
        extra={"job_folder": str(paths.root), "epochs_trained": len(records),
               "prompt_kinds": [p.to_dict() for p in prompt_set],
               "preview_rows": [{"key": r.key, "epoch": r.epoch, "strength": r.strength} for r in rows],
               "added_rows": [{"key": r.key, "epoch": r.epoch, "strength": r.strength} for r in added],
               "schedule": schedule_followed(config, records, ending),
               # How training ended, as the record (the page and the dashboard read facts here, not the sentence).
               "ending": dataclasses.asdict(ending) if ending else None})
    package = write_review_package(Path(outbox), review)
    apply_retention(paths, config, daemon, set(analysis.shortlist) | set(epoch_files))
    log.info("review package written to %s", package)
    return package


def preview_progress(on_progress):
    """The renderer's (done, total) as progress events, with an ETA from the rate since rendering began."""
    began = []

    def on_image(done: int, total: int) -> None:
        if not began:
            began.append(time.monotonic())
        eta = (time.monotonic() - began[0]) / done * (total - done) if done else None
        on_progress(Report(phase="previews", done=done, total=total, eta_seconds=eta).sent())

    return on_image
