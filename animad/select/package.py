"""Write the review package the user wakes up to: outbox/<name>/.

What it holds: the shortlisted LoRA files (copied from the job's work folder, never moved, renamed
`<name>-e0023-lowest.safetensors`), `previews/<row>-p<prompt>-s<seed>.png` (prompts counted from 1,
as on the page), `contact_sheet.png`, `loss_curve.png`, `comfyui-workflow.json`, `summary.json` and
`index.html`. Each preview carries the ComfyUI graph that made it; in the package copy the graph
loads the package's LoRA file name, so a PNG dragged into ComfyUI finds the file the user copied.

Re-runs: the package is assembled in a hidden sibling folder (`.<name>.partial-<pid>-*`) and renamed into
place at the end, so nobody ever sees half a package. An existing `<name>/` (an earlier run of the
same job, perhaps with the user's notes in it) is first renamed, whole and untouched, to
`<name>.previous-<YYYYmmdd-HHMMSS>`; nothing the user put there is deleted or overwritten. Its name
is recorded in the new summary.json (`previous_package`). Deleting old packages is left to the user.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image, PngImagePlugin

from animad.anima import comfyui
from animad.anima.comfyui import has_text_encoder_part
from animad.anima.lora_names import read_lora_file
from animad.config.job import load_resolved
from animad.config.problems import ConfigError
from animad.errors import UserError
from animad.fsutil import fsync_dir
from animad.layout import JobPaths, read_epochs_log, safe_name
from animad.select.page import render_page
from animad.select.plot import loss_plot
from animad.select.sheet import contact_sheet
from animad.train.optim import default_lr

STALE_PARTIAL_SECONDS = 3600  # an old-style staging folder (no writer pid in its name) this old is a leftover
WORKFLOW_FILE = "comfyui-workflow.json"
DATASET_REPORT = "dataset-report.json"  # intake's dataset report, in the job folder


@dataclasses.dataclass
class PreviewCell:
    row: str  # "baseline" or "e0012" (epoch), maybe with a strength suffix "e0012@0.8"
    prompt_index: int  # 0-based index into Review.prompts
    image: Path  # a PNG already rendered


@dataclasses.dataclass
class Review:
    job_name: str  # user-supplied: may contain anything, escaped everywhere
    trigger: str | None
    analysis: dict  # FloorAnalysis.to_dict()
    curve_source: str  # "eval" (stable eval loss) or "epoch_average"
    train_losses: dict[int, float]  # epoch -> epoch-average train loss
    lora_files: dict[int, Path]  # epoch -> the epoch's .safetensors in the job's work folder
    prompts: list[str]
    seeds: list[int]  # one per prompt
    rows: list[str]  # row order, baseline first
    row_labels: dict[str, str]
    cells: list[PreviewCell]
    warnings: list[dict]  # {"file", "where", "message", "fix", "severity"}
    settings: dict
    stopped_reason: str
    extra: dict = dataclasses.field(default_factory=dict)


def package_folder(outbox) -> Path:
    """Given the folder a caller asked for (outbox/<name>), return the one actually written.

    A '..' may lead a relative path ("../outbox/cat"), but one after a real folder means a job name
    was glued onto the outbox ("outbox/../../evil"): everything from there on is taken as the name
    and sanitised, so the package lands inside that outbox ("outbox/evil").
    """
    parts = Path(outbox).parts
    seen_folder = False
    for index, part in enumerate(parts):
        if part == ".." and seen_folder:
            root, name = Path(*parts[:index]), "/".join(parts[index:])
            break
        seen_folder = seen_folder or part != ".."
    else:
        path = Path(outbox)
        root, name = path.parent, path.name
    return root / safe_name(name, fallback="review")


def pick_file_name(name: str, epoch: int, kind: str) -> str:
    return f"{name}-e{epoch:04d}-{safe_name(kind, fallback='pick')}.safetensors"


def preview_file_name(row: str, prompt_index: int, seed) -> str:
    return f"{safe_name(row, fallback='row')}-p{prompt_index + 1}-s{safe_name(seed, fallback='0')}.png"


def seed_for(seeds: list[int], prompt_index: int):
    if not seeds:
        return None
    return seeds[prompt_index] if prompt_index < len(seeds) else seeds[-1]


def json_safe(value):
    """NaN and infinity are not JSON: write them as null (the floor analysis may contain them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def copy_shortlist(review: Review, name: str, staging: Path) -> list[dict]:
    """Copy each pick's epoch file into the package under a descriptive name; the source stays."""
    shortlist = []
    for pick in review.analysis.get("picks") or []:
        epoch = int(pick["epoch"])
        source = review.lora_files.get(epoch)
        entry = {**pick, "file": None, "source": str(source) if source else None, "bytes": None}
        if source is not None and Path(source).is_file():
            entry["file"] = pick_file_name(name, epoch, pick.get("kind") or "pick")
            shutil.copy2(source, staging / entry["file"])
            entry["bytes"] = (staging / entry["file"]).stat().st_size
        shortlist.append(entry)
    return shortlist


def preview_recipe(texts: dict[str, str]) -> comfyui.Recipe | None:
    """The ComfyUI recipe a preview's `prompt` chunk holds; None for a PNG without one."""
    try:
        return comfyui.read_recipe(json.loads(texts["prompt"]))
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


def copy_preview(source: Path, target: Path, renames: dict[str, str]) -> dict[str, str]:
    """Copy one preview; if its graph loads an epoch file the package renamed, name the package's file.

    Only the text chunks change (the pixels are decoded and written back losslessly). Returns the chunks.
    """
    texts = comfyui.read_png_chunks(source)
    recipe = preview_recipe(texts)
    if recipe is None or recipe.lora_name not in renames:
        shutil.copy2(source, target)
        return texts
    texts = comfyui.renamed_lora(texts, renames[recipe.lora_name])
    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        info.add_text(key, value)
    with Image.open(source) as image:
        image.save(target, format="PNG", pnginfo=info, compress_level=4)
    return texts


def copy_previews(review: Review, staging: Path, renames: dict[str, str] | None = None
                  ) -> tuple[list[dict], list[dict], dict, dict]:
    """Copy every rendered preview into previews/; returns (table, missing, {(row, prompt): path},
    {(row, prompt): text chunks}). renames: epoch file name -> the package's name for it."""
    table, missing, placed, chunks = [], [], {}, {}
    for cell in review.cells:
        seed = seed_for(review.seeds, cell.prompt_index)
        entry = {"row": cell.row, "row_label": review.row_labels.get(cell.row, cell.row),
                 "prompt": cell.prompt_index + 1, "seed": seed, "file": None}
        if not Path(cell.image).is_file():
            missing.append({**entry, "source": str(cell.image)})
            continue
        entry["file"] = f"previews/{preview_file_name(cell.row, cell.prompt_index, seed)}"
        chunks[(cell.row, cell.prompt_index)] = copy_preview(Path(cell.image), staging / entry["file"], renames or {})
        placed[(cell.row, cell.prompt_index)] = staging / entry["file"]
        table.append(entry)
    return table, missing, placed, chunks


def workflow_for_package(review: Review, shortlist: list[dict], chunks: dict) -> dict | None:
    """The one comfyui-workflow.json: the workflow of the lowest pick's first preview at strength 1.

    Without previews, the template's workflow with the lowest pick's file and the first prompt and seed.
    """
    lowest = next((e["file"] for e in shortlist if e.get("kind") == "lowest" and e.get("file")), None)
    lowest = lowest or next((e["file"] for e in shortlist if e.get("file")), None)
    ranked = []
    for (row, index), texts in chunks.items():
        recipe = preview_recipe(texts)
        if recipe is None or "workflow" not in texts:
            continue
        rank = (recipe.lora_name != lowest, recipe.lora_name is None, recipe.lora_strength != 1.0, index)
        ranked.append((rank, texts["workflow"]))
    if ranked:
        return json.loads(min(ranked, key=lambda pair: pair[0])[1])
    if lowest is None or not review.prompts:
        return None
    settings = review.settings or {}
    recipe = comfyui.Recipe(
        prompt=review.prompts[0], seed=int(seed_for(review.seeds, 0) or 0), lora_name=lowest,
        negative_prompt=settings.get("negative_prompt", comfyui.NEGATIVE_PROMPT),
        steps=int(settings.get("steps", comfyui.STEPS)), cfg=float(settings.get("cfg", comfyui.CFG)),
        width=int(settings.get("width", comfyui.WIDTH)), height=int(settings.get("height", comfyui.HEIGHT)),
        **settings.get("model_names", {}))
    return comfyui.ui_workflow(recipe)


def training_facts(job_folder) -> dict:
    """What the run trained with and how long it took, from the job folder ({} when it cannot be read).

    The settings come from job.resolved.yaml (what the loop read), the counts and the time from
    epochs.jsonl: the sum of each epoch's own seconds (its steps over every launch, and its eval),
    so caching, pauses and previews are not in it.
    """
    if not job_folder:
        return {}
    paths = JobPaths(Path(job_folder))
    try:
        config = load_resolved(paths.resolved)
        records = read_epochs_log(paths.epochs_log)
    except (ConfigError, UserError, OSError):
        return {}
    net, opt, data = config.network, config.optimizer, config.data
    resolution = data.resolution if isinstance(data.resolution, int) else "x".join(map(str, data.resolution))
    return {
        "network": net.type, "factor": net.factor,
        "dim": net.dim, "alpha": net.alpha if net.alpha is not None else net.dim, "init_from": net.init_from or None,
        "optimizer": opt.type, "lr": default_lr(opt), "resolution": resolution, "batch_size": data.batch_size,
        "grad_accum": data.grad_accum, "epochs_trained": len(records), "max_epochs": config.schedule.max_epochs,
        "steps": records[-1]["step"] if records else 0,
        "seconds": sum(float(r["seconds"] or 0.0) for r in records),
        "started": records[0]["time"] if records else None, "ended": records[-1]["time"] if records else None,
        "description": config.description or None,
    }


def dataset_report(job_folder) -> dict | None:
    """The dataset report intake wrote into the job folder, or None (no report, or not one we can show)."""
    if not job_folder:
        return None
    try:
        report = json.loads((Path(job_folder) / DATASET_REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict):
        return None
    findings = [f for f in report.get("findings") or [] if isinstance(f, dict)]
    summary = report.get("summary") if isinstance(report.get("summary"), dict) else {}
    return {"findings": findings, "summary": summary}


def previous_name(folder: Path) -> Path | None:
    """Where an existing package folder goes aside: <name>.previous-<time> (a free name), or None if none exists."""
    if not folder.exists() and not folder.is_symlink():
        return None
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for count in itertools.count(1):
        target = folder.with_name(f"{folder.name}.previous-{stamp}" + (f"-{count}" if count > 1 else ""))
        if not target.exists() and not target.is_symlink():
            return target
    return None  # unreachable


def remove_stale_partials(folder: Path) -> None:
    """Remove our own staging folders left behind by a killed write of this package (.<name>.partial-*).

    A staging folder is named after its writer's process (`.<name>.partial-<pid>-<random>`): one whose
    writer is gone is a leftover (LoRA copies and all) and goes at the next write, a retry's included;
    one whose writer still runs is left to it (for a day: no write takes that long). A folder named any other way is not ours, except
    mkdtemp's own `.<name>.partial-<8 characters>` of earlier versions, removed once an hour old.
    """
    prefix = f".{folder.name}.partial-"
    for entry in folder.parent.iterdir():
        try:
            if not entry.name.startswith(prefix) or entry.is_symlink() or not entry.is_dir():
                continue
            suffix = entry.name[len(prefix):]
            writer = STAGING_NAME.fullmatch(suffix)
            if writer is not None:  # a live pid a day later is another process that got the number
                stale = (not writer_running(int(writer.group(1)))
                         or time.time() - entry.stat().st_mtime > STALE_PARTIAL_SECONDS * 24)
            else:
                stale = (OLD_STAGING_NAME.fullmatch(suffix) is not None
                         and time.time() - entry.stat().st_mtime > STALE_PARTIAL_SECONDS)
            if stale:
                shutil.rmtree(entry)
        except OSError:
            pass


STAGING_NAME = re.compile(r"(\d+)-[a-z0-9_]{8}")  # <writer pid>-<mkdtemp's random part>
OLD_STAGING_NAME = re.compile(r"[a-z0-9_]{8}")  # mkdtemp's random part alone (before the pid was in the name)


def writer_running(pid: int) -> bool:
    """Whether the process that made a staging folder still runs (this one: yes, another thread writes)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: not ours to judge
    try:  # exited but not yet reaped: not writing anything
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def listed_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def write_review_package(outbox: Path, review: Review) -> Path:
    """Given outbox/<name> and a Review, write the package there and return its folder.

    The folder is sanitised first (see package_folder); an earlier package in it is kept as
    <name>.previous-<time>. Missing preview images or epoch files are recorded, not fatal.
    """
    folder = package_folder(outbox)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(folder)
        # Named after this process, so that a later write can tell a killed writer's leftover.
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-{os.getpid()}-", dir=folder.parent))
    except OSError as error:
        # The outbox is the user's folder: one line saying which and what to do, not a traceback.
        raise UserError(f"outbox {folder.parent}: cannot write the review package there "
                        f"({error.strerror or error}) -> make it writable (chmod u+w \"{folder.parent}\") or set "
                        "'outbox:' in animad.yaml to a writable folder") from None
    os.chmod(staging, 0o755)  # mkdtemp makes it private; the package is meant to be opened and shared
    try:
        summary = build_package(staging, folder.name, review)
        previous = previous_name(folder)
        summary["previous_package"] = previous.name if previous else None
        write_summary_and_page(staging, summary)
        if previous is not None:
            os.rename(folder, previous)  # the earlier package, user files and all, is kept whole
        try:
            os.rename(staging, folder)
        except OSError:
            if previous is not None:
                os.rename(previous, folder)  # put it back rather than leave no package at all
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(folder.parent)
    return folder


def build_package(staging: Path, package_name: str, review: Review) -> dict:
    """Copy the files and draw the images into staging; return the summary (not yet written)."""
    (staging / "previews").mkdir()
    name = safe_name(review.job_name)
    shortlist = copy_shortlist(review, name, staging)
    renames = {Path(e["source"]).name: e["file"] for e in shortlist if e.get("source") and e.get("file")}
    previews, missing, placed, chunks = copy_previews(review, staging, renames)
    workflow = workflow_for_package(review, shortlist, chunks)
    if workflow is not None:
        (staging / WORKFLOW_FILE).write_text(json.dumps(workflow, indent=2), encoding="utf-8")

    sheet, sheet_size = None, None
    if placed:
        sheet = "contact_sheet.png"
        kinds = [k.get("short") if isinstance(k, dict) else None for k in review.extra.get("prompt_kinds") or []]
        sheet_size = contact_sheet(review.rows, review.row_labels, review.prompts, placed, staging / sheet,
                                   seeds=review.seeds, title=review.job_name, kinds=kinds or None)
    plot = "loss_curve.png"
    title = "stable eval loss" if review.curve_source == "eval" else "epoch-average train loss"
    # The faint train curve only adds something when the main curve is the separate eval loss.
    train = review.train_losses if review.curve_source == "eval" else None
    plot_size = loss_plot(review.analysis, staging / plot, train, title)

    summary = {
        **review.extra,  # anything extra first, so it can never replace the fields below
        "job": review.job_name,
        "package": package_name,
        "trigger": review.trigger,
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "stopped_reason": review.stopped_reason,
        "epochs_trained": review.extra.get("epochs_trained", len(review.analysis.get("epochs") or [])),
        "curve_source": review.curve_source,
        "shortlist": shortlist,
        "prompts": review.prompts,
        "seeds": review.seeds,
        "rows": review.rows,
        "row_labels": review.row_labels,
        "previews": previews,
        "missing_previews": missing,
        "contact_sheet": sheet,
        "comfyui_workflow": WORKFLOW_FILE if workflow is not None else None,
        "contact_sheet_size": list(sheet_size) if sheet_size else None,
        "loss_plot": plot,
        "loss_plot_size": list(plot_size),
        "settings": review.settings,
        "warnings": review.warnings,
        "analysis": review.analysis,
        # Which epoch to render first, why, and the order of the rest (select/try_first.py's rule).
        "try_first": (review.analysis or {}).get("try_first"),
        "training": review.extra.get("training") or training_facts(review.extra.get("job_folder")),
        "dataset_report": dataset_report(review.extra.get("job_folder")),
        "previous_package": None,
    }
    return json_safe(summary)


def write_summary_and_page(staging: Path, summary: dict) -> None:
    (staging / "index.html").write_text(render_page(summary), encoding="utf-8")
    # Every file the package itself wrote: anything else found in the folder later is the user's.
    summary["files"] = sorted(listed_files(staging) + ["summary.json"])
    (staging / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")


def comfyui_loader(lora_file: Path) -> str:
    """The ComfyUI node that loads the whole LoRA: LoraLoader when it also patches the text encoder
    (LoraLoaderModelOnly would silently drop that half), LoraLoaderModelOnly otherwise."""
    # read_lora_file gives our names for ComfyUI/PEFT-style files too, which the anima/ check reads.
    return "LoraLoader" if has_text_encoder_part(read_lora_file(lora_file)) else "LoraLoaderModelOnly"
