"""After training: find the floor, shortlist, render previews and write the review package.

What gets rendered is a list of rows (the no-LoRA baseline, then each shortlisted epoch at 1.0, and
the lowest-loss epoch also at 0.8: the guide's "try 0.8") times the prompts (select/prompts.py).
`animad select JOB --epoch N --strength S --prompt P` adds rows and prompts to the package that is
there: its prompts, seeds and hand-added rows are read back from its summary.json, and the images
already rendered with the same settings are reused, not rendered again.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path

from animad.anima import comfyui
from animad.anima.comfyui import has_text_encoder_part
from animad.anima.lora_names import read_lora_file
from animad.config.daemon import Daemon
from animad.config.job import load_resolved
from animad.errors import UserError, disk_full_is_user_error
from animad.intake.jobfiles import load_job_dataset
from animad.intake.models import job_model_files
from animad.layout import JobPaths, read_epochs_log
from animad.select.package import PreviewCell, Review, package_folder, write_review_package
from animad.select.previews import Row, render_previews
from animad.select.prompts import USER, Prompt, combine_prompts, default_prompts
from animad.select.shortlist import analyze_curve
from animad.train.floor import CURVE_SOURCES, cooldown_epochs, epoch_curve
from animad.train.optim import schedule_kind

log = logging.getLogger("animad.select")

SOFTER = 0.8  # the guide: "try 0.8" when a LoRA overpowers the prompt; rendered for the lowest-loss epoch
FIRST_SEED = 1000


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
    on_progress({"phase": "selecting"})
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
    if previews:
        files = job_model_files(paths, config, daemon)
        # The sampling settings alone go to the renderer: which rows are drawn is not a setting, so an
        # added row or strength leaves the images already rendered valid.
        images = render_previews(config, files, epoch_files, paths.selection, texts, prompt_seeds, settings, rows,
                                 should_stop=should_stop, on_image=preview_progress(on_progress))
        if should_stop and should_stop():
            return Path(outbox)  # stopped mid-render: the next run renders the rest (finished images are kept)
        cells = [PreviewCell(row, index, path) for (row, index), path in images.items() if path.is_file()]
    try:
        warnings = [p for p in json.loads(paths.report.read_text()) if p.get("severity") == "warning"]
    except (OSError, ValueError):
        warnings = []
    finished = paths.root / "finished.txt"
    stopped = finished.read_text().strip() if finished.is_file() else "training did not finish"
    shown_settings = {**settings, "strengths": sorted({row.strength for row in rows[1:]}, reverse=True),
                      "model_names": model_names(paths, config, daemon)}
    review = Review(
        job_name=config.name, trigger=config.trigger, analysis=analysis_dict, curve_source=CURVE_SOURCES[key],
        train_losses={r["epoch"]: r["loss"] for r in records}, lora_files=epoch_files, prompts=texts,
        seeds=prompt_seeds, rows=[r.key for r in rows] if cells else [], row_labels=row_labels(rows, analysis_dict),
        cells=cells, warnings=warnings, settings=shown_settings, stopped_reason=stopped,
        extra={"job_folder": str(paths.root), "epochs_trained": len(records),
               "prompt_kinds": [p.to_dict() for p in prompt_set],
               "preview_rows": [{"key": r.key, "epoch": r.epoch, "strength": r.strength} for r in rows],
               "added_rows": [{"key": r.key, "epoch": r.epoch, "strength": r.strength} for r in added],
               "schedule": schedule_followed(config, records, stopped)})
    package = write_review_package(Path(outbox), review)
    apply_retention(paths, config, daemon, set(analysis.shortlist) | set(epoch_files))
    log.info("review package written to %s", package)
    return package


def model_names(paths, config, daemon) -> dict[str, str]:
    """The job's base model files as ComfyUI's loaders name them ({} when the files cannot be found now)."""
    try:
        files = job_model_files(paths, config, daemon)
    except UserError:
        return {}
    return {"unet_name": comfyui.file_name(files.dit, "unet_name"),
            "clip_name": comfyui.file_name(files.text_encoder, "clip_name"),
            "vae_name": comfyui.file_name(files.vae, "vae_name")}


def preview_progress(on_progress):
    """The renderer's (done, total) as progress events, with an ETA from the rate since rendering began."""
    began = []

    def on_image(done: int, total: int) -> None:
        if not began:
            began.append(time.monotonic())
        progress = {"phase": "previews", "done": done, "total": total}
        if done:
            progress["eta_seconds"] = (time.monotonic() - began[0]) / done * (total - done)
        on_progress(progress)

    return on_image


def choose_prompts(job_prompts: list[Prompt], job_seeds: list[int], previous: dict, given: list[str],
                   given_seeds: list[int], mode: str) -> tuple[list[Prompt], list[int]]:
    """(prompts, one seed each): the given prompts added to the package's ('add') or as the whole set
    ('replace'); with nothing given, the job's own set (and seeds, or the given ones)."""
    if mode not in ("add", "replace"):
        raise UserError(f"--prompts-mode must be add or replace (got {mode!r})")
    if given and mode == "replace":
        prompt_set = [Prompt(text, USER) for text in dict.fromkeys(given) if text.strip()]
        if not prompt_set:
            raise UserError("--prompts-mode replace: every --prompt given is empty; give at least one prompt")
        return prompt_set, fill_seeds(given_seeds, len(prompt_set))
    if previous or given:
        prompt_set = previous.get("prompts") or job_prompts
        seeds = fill_seeds(previous.get("seeds") or job_seeds, len(prompt_set))
        return add_prompts(prompt_set, seeds, given, given_seeds)
    return job_prompts, fill_seeds(given_seeds or job_seeds, len(job_prompts))


def row_key(epoch: int, strength: float) -> str:
    """e0012 at strength 1.0, e0012@0.8 otherwise: a row keeps its name whatever else is rendered."""
    return f"e{epoch:04d}" if strength == 1.0 else f"e{epoch:04d}@{strength:g}"


def review_rows(shortlist: list[int], lowest: int | None, strengths: list[float], added: list[Row]) -> list[Row]:
    """Baseline first, then (epoch, strength) rows by epoch, stronger first.

    Default strengths ([], the schema default): every pick at 1.0 and the lowest also at 0.8.
    Any other previews.strengths: every pick at each of them. Rows added by hand come on top.
    """
    wanted = {(epoch, s) for epoch in shortlist for s in (strengths or [1.0])}
    if not strengths and lowest is not None and lowest in shortlist:
        wanted.add((lowest, SOFTER))
    wanted |= {(row.epoch, row.strength) for row in added}
    ordered = sorted(wanted, key=lambda pair: (pair[0], -pair[1]))
    return [Row("baseline", None, 0.0)] + [Row(row_key(e, s), e, s) for e, s in ordered]


def hand_rows(paths: JobPaths, name: str, epochs, strengths, shortlist: list[int]) -> list[Row]:
    """The rows `--epoch N --strength S` ask for: each epoch at each strength (1.0 by default; every
    shortlisted epoch when only strengths are given). An epoch without its file is a UserError."""
    for strength in strengths:
        if not (isinstance(strength, (int, float)) and math.isfinite(strength) and strength >= 0):
            raise UserError(f"--strength must be a number of at least 0 (got {strength})")
    epochs = list(epochs) or list(shortlist)
    for epoch in epochs:
        if not paths.epoch_file(name, epoch).is_file():
            saved = sorted(int(p.stem.rsplit("-e", 1)[-1]) for p in paths.epochs_dir.glob(f"{name}-e*.safetensors")
                           if p.stem.rsplit("-e", 1)[-1].isdigit())
            have = ", ".join(map(str, saved)) or "none"
            raise UserError(f"--epoch {epoch}: {paths.epoch_file(name, epoch)} does not exist (epochs saved in "
                            f"{paths.epochs_dir}: {have}). Pick one of those; keep_epochs: shortlist removes the "
                            "others once a package is written.")
    return [Row(row_key(e, float(s)), e, float(s)) for e in epochs for s in (strengths or [1.0])]


def previous_selection(outbox: Path) -> dict:
    """What the existing package rendered: {"prompts": [Prompt], "seeds": [int], "added_rows": [Row]}.

    Read from its summary.json; no package (or an unreadable one) gives {} and the job's defaults.
    """
    summary_file = package_folder(outbox) / "summary.json"
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(summary, dict):
        return {}
    texts = [str(t) for t in summary.get("prompts") or []]
    kinds = summary.get("prompt_kinds") or []
    prompts = []
    for index, text in enumerate(texts):
        kind = kinds[index] if index < len(kinds) and isinstance(kinds[index], dict) else {}
        prompts.append(Prompt(text, str(kind.get("kind") or USER), str(kind.get("note") or "")))
    seeds = [int(s) for s in summary.get("seeds") or [] if isinstance(s, int)]
    added = [Row(row_key(int(r["epoch"]), float(r["strength"])), int(r["epoch"]), float(r["strength"]))
             for r in summary.get("added_rows") or []
             if isinstance(r, dict) and isinstance(r.get("epoch"), int) and isinstance(r.get("strength"), (int, float))]
    return {"prompts": prompts, "seeds": seeds if len(seeds) == len(prompts) else [], "added_rows": added}


def fill_seeds(seeds: list[int], count: int) -> list[int]:
    """One seed per prompt: the given ones (a single seed serves every prompt), then 1000 + index."""
    seeds = list(seeds)
    if len(seeds) == 1 and count > 1:
        seeds = seeds * count
    return (seeds + [FIRST_SEED + i for i in range(len(seeds), count)])[:count]


def add_prompts(prompt_set: list[Prompt], seeds: list[int], new: list[str], new_seeds: list[int]):
    """The set with the new user prompts appended (a text already there is not added twice)."""
    prompt_set, seeds = list(prompt_set), list(seeds)
    fresh = [text for text in dict.fromkeys(new) if text.strip() and text not in {p.text for p in prompt_set}]
    given = fill_seeds(new_seeds, len(fresh)) if new_seeds else []
    for index, text in enumerate(fresh):
        seeds.append(given[index] if given else FIRST_SEED + len(prompt_set))
        prompt_set.append(Prompt(text, USER))
    return prompt_set, seeds


def with_hand_picks(analysis: dict, added: list[Row]) -> dict:
    """Epochs added by hand join the shortlist (their files are copied into the package, the plot marks them)."""
    losses = dict(zip(analysis.get("epochs") or [], analysis.get("losses") or []))
    picks = list(analysis.get("picks") or [])
    for epoch in sorted({row.epoch for row in added} - set(analysis.get("shortlist") or [])):
        picks.append({"epoch": epoch, "loss": losses.get(epoch), "kind": "added",
                      "reason": f"added by hand (animad select --epoch {epoch})"})
    picks.sort(key=lambda pick: pick["epoch"])
    return {**analysis, "picks": picks, "shortlist": [pick["epoch"] for pick in picks]}


def row_labels(rows: list[Row], analysis: dict) -> dict[str, str]:
    kind = {pick["epoch"]: pick["kind"] for pick in analysis["picks"]}
    labels = {"baseline": "no LoRA"}
    for row in rows[1:]:
        strength = "" if row.strength == 1.0 else f" @ {row.strength:g}"
        labels[row.key] = f"epoch {row.epoch} ({kind.get(row.epoch, 'pick')}){strength}"
    return labels


def comfyui_loader(lora_file: Path) -> str:
    """The ComfyUI node that loads the whole LoRA: LoraLoader when it also patches the text encoder
    (LoraLoaderModelOnly would silently drop that half), LoraLoaderModelOnly otherwise."""
    # read_lora_file gives our names for ComfyUI/PEFT-style files too, which the anima/ check reads.
    return "LoraLoader" if has_text_encoder_part(read_lora_file(lora_file)) else "LoraLoaderModelOnly"


def schedule_followed(config, records: list[dict], stopped: str) -> dict:
    """The learning-rate schedule the run actually followed, in words and numbers, from its epoch
    records (cooldown epochs are marked "cooldown") and the reason it stopped (finished.txt).

    "cosine; floor confirmed at epoch 31, LR cooled to 0 over 6 epochs, stopped at 37 of max 200".
    """
    schedule = config.schedule
    trained = records[-1]["epoch"] if records else 0
    cooling = [r["epoch"] for r in records if r.get("cooldown")]
    confirmed = re.search(r"confirmed loss floor after epoch (\d+)", stopped)
    floor = int(confirmed.group(1)) if confirmed else None
    final = records[-1].get("lr") if records else None
    kind = schedule_kind(config.schedule, config.selection)  # what `auto` resolved to
    facts = {"type": kind, "max_epochs": schedule.max_epochs, "epochs_trained": trained,
             "floor_confirmed_at": floor, "cooldown_epochs": len(cooling), "final_lr": final,
             "stopped_reason": stopped}
    steps = []
    if floor is not None:
        steps.append(f"floor confirmed at epoch {floor}")
    if cooling:
        to = "to 0" if isinstance(final, (int, float)) and abs(final) < 1e-12 else \
            f"to {final:.3g}" if isinstance(final, (int, float)) else "down"
        # A constant schedule that found no floor cools down at its end: no floor to name then.
        steps.append(f"LR cooled {to} over {len(cooling)} epochs" if floor is not None
                     else f"no floor confirmed, LR cooled {to} over the last {len(cooling)} epochs")
    if not records:
        steps.append("no epoch trained")
    elif trained >= schedule.max_epochs:
        steps.append(f"ran all {schedule.max_epochs} epochs")
    else:
        steps.append(f"stopped at {trained} of max {schedule.max_epochs}")
    facts["text"] = f"{kind}; " + ", ".join(steps)
    return facts


def apply_retention(paths: JobPaths, config, daemon: Daemon, keep: set[int]) -> None:
    """keep_epochs: shortlist removes the other epoch files (ours, in the job folder) once the package exists."""
    if daemon.config.keep_epochs != "shortlist":
        return
    for record in read_epochs_log(paths.epochs_log):
        if record["epoch"] not in keep:
            paths.epoch_file(config.name, record["epoch"]).unlink(missing_ok=True)
