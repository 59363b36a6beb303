"""Validate a dataset folder before anything is queued: yaml, schema, images, captions, models, disk.

`check_folder` never raises for bad user input; it returns every problem it found, so the report
names all of them at once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from animad.anima.facts import latent_bytes
from animad.anima.files import ModelFiles
from animad.config.daemon import Daemon, resolve_path
from animad.config.job import JobConfig, load_job_file
from animad.config.problems import Problems
from animad.errors import ModelFileError
from animad.fsutil import free_bytes, human_bytes
from animad.intake.dataset import Dataset, links_outside, scan_dataset
from animad.intake.models import resolve_model_files
from animad.safe_text import safe


@dataclasses.dataclass
class CheckResult:
    folder: Path
    config: JobConfig | None
    problems: Problems
    dataset: Dataset | None
    files: ModelFiles | None

    @property
    def ok(self) -> bool:
        return not self.problems.errors and self.config is not None

    def report(self) -> str:
        title = f"animad check {safe(self.folder)}"  # the folder name is the user's: printed escaped
        if self.ok:
            lines = [f"{title}: OK ({len(self.dataset.items)} images in {len(self.dataset.subsets)} subset(s), "
                     f"{self.dataset.samples_per_epoch()} samples per epoch)"]
            if self.problems.warnings:
                lines.append(self.problems.render("Warnings (training will go ahead)"))
            return "\n".join(lines) + "\n"
        return self.problems.render(title)


def job_name(folder: Path, config: JobConfig | None) -> str:
    return (config.name if config and config.name else Path(folder).name).strip() or "lora"


def check_folder(folder: Path, daemon: Daemon, *, work_dir: Path | None = None) -> CheckResult:
    """Check everything a job needs; work_dir is where its epochs will be written (for the disk check)."""
    folder = Path(folder)
    problems = Problems()
    job_file = folder / "job.yaml"
    # A job.yaml linked outside the folder is never opened (the scan below reports the link), so
    # nothing from the file it points at can be echoed into the report.
    config = None if links_outside(job_file, folder) else load_job_file(job_file, problems)
    if config is None:
        # The yaml is unusable; still check the images so the user gets every problem in one report.
        scan_dataset(folder, JobConfig(), problems)
        return CheckResult(folder, None, relative_to_folder(problems, folder), None, None)
    name = job_name(folder, config)
    if any(c in name for c in "/\\\0") or name in (".", ".."):
        problems.error(job_file, "name", f"'{name}' cannot be used as a file name",
                       "use letters, digits, '-' and '_'")
    dataset = scan_dataset(folder, config, problems)
    files = resolve_model_files(config, daemon, folder, problems, job_file)
    if config.network.init_from:
        init = resolve_path(folder, config.network.init_from)
        if not init.is_file():
            problems.error(job_file, "network.init_from", f"LoRA file not found: {init}",
                           "put the .safetensors next to job.yaml or give an absolute path")
        else:
            check_init_lora(init, config, dataset, job_file, problems)
    # A DiT whose header is broken was reported by check_models; the disk estimate reads the same
    # header, so it runs only on good files (else it would raise and hide the whole report).
    if files is not None and check_models(files, config, job_file, problems) and dataset.items:
        check_disk(files, config, dataset, work_dir or daemon.dir("state"), job_file, problems)
    return CheckResult(folder, config, relative_to_folder(problems, folder), dataset, files)


def relative_to_folder(problems: Problems, folder: Path) -> Problems:
    """Name files inside the dataset folder relative to it (job.yaml, 10_a/x.png), like the images are."""
    prefix = str(folder).rstrip("/") + "/"
    for index, problem in enumerate(problems.items):
        if problem.file.startswith(prefix):
            problems.items[index] = dataclasses.replace(problem, file=problem.file[len(prefix):])
    return problems


def check_models(files: ModelFiles, config: JobConfig, job_file, problems: Problems) -> bool:
    """Read the three headers (no weights) so a wrong or truncated file is caught before queueing.

    False when a header is unusable (recorded in problems).
    """
    # Here, not at the top: checking shapes needs torch, and the daemon (so `animad status`) imports this module.
    from animad.anima.load import check_compatible, dit_layout, read_header, text_encoder_layout

    try:
        _, _, _, dit_config, adapter_config = dit_layout(files.dit)
        _, _, qwen_config = text_encoder_layout(files.text_encoder)
        read_header(files.vae, "vae")
        check_compatible(dit_config, adapter_config, qwen_config, None, files)
    except ModelFileError as error:
        problems.error(job_file, "model files", str(error), "fix the path in job.yaml or animad.yaml")
        return False
    blocks = config.network.blocks or []
    bad = [b for b in blocks if b >= dit_config.depth]
    if bad:
        problems.error(job_file, "network.blocks", f"block(s) {bad} do not exist; the DiT has {dit_config.depth}",
                       f"use indices 0..{dit_config.depth - 1}")
    return True


def text_encoder_runs(config: JobConfig, dataset: Dataset) -> bool:
    """Whether training keeps the text encoder loaded: the same rule as train/loop.py's live_text
    (captions that change every step, a text-encoder LoRA, or no caption cache)."""
    dynamic = any(s.shuffle_captions or s.tag_dropout > 0 for s in dataset.subsets)
    return dynamic or config.network.train_text_encoder or not config.precision.cache_text


def check_init_lora(init: Path, config: JobConfig, dataset: Dataset, job_file, problems: Problems) -> None:
    """A continued LoRA with text-encoder modules needs the text encoder loaded; without it training
    would stop with a traceback after caching, hours into the night."""
    from animad.anima.lora_names import PREFIXES, TEXT_ENCODER, read_lora_file  # needs torch; see check_models

    try:
        names = read_lora_file(init)
    except (OSError, ValueError) as error:
        problems.error(job_file, "network.init_from", f"cannot read the LoRA file {init}: {error}",
                       "give a .safetensors LoRA written by animad, sd-scripts or ComfyUI")
        return
    text_prefix = PREFIXES[TEXT_ENCODER] + "_"
    modules = {k.split(".", 1)[0] for k in names if k.startswith(text_prefix)}
    if modules and not text_encoder_runs(config, dataset):
        problems.error(job_file, "network.init_from", f"{init.name} has {len(modules)} text-encoder module(s), "
                       "but this job does not load the text encoder (captions are cached, nothing trains it)",
                       "set network.train_text_encoder: true to continue them, or start from a LoRA "
                       "without text-encoder modules")


def estimate_lora_bytes(files: ModelFiles, config: JobConfig) -> int:
    """Size of one saved epoch file, from the DiT header's shapes (no weights read)."""
    from animad.anima.lora_names import lora_parameter_count  # needs torch; see check_models

    bytes_per = 4 if config.precision.save == "fp32" else 2
    return lora_parameter_count(files.dit, config.network) * bytes_per


def check_disk(files: ModelFiles, config: JobConfig, dataset: Dataset, work_dir: Path, job_file,
               problems: Problems) -> None:
    epoch_bytes = estimate_lora_bytes(files, config)
    # Resume state: fp32 LoRA + up to 4 optimizer buffers per parameter (Prodigy), written via a temp copy.
    state_bytes = epoch_bytes * (4 if config.precision.save != "fp32" else 2) * 5 * 2
    # Each image's latent at the training resolution, twice (a flipped copy), with 2x slack for buckets.
    resolution = config.data.resolution
    width, height = resolution if isinstance(resolution, list) else (resolution, resolution)
    cache_bytes = len(dataset.items) * 2 * latent_bytes(width, height) * 2
    epochs = config.schedule.max_epochs
    need_min = state_bytes + cache_bytes + epoch_bytes * min(epochs, 20)
    need_all = state_bytes + cache_bytes + epoch_bytes * epochs
    free = free_bytes(work_dir)
    if free < need_min:
        problems.error(str(work_dir), "disk space", f"{human_bytes(free)} free; the run needs at least "
                       f"{human_bytes(need_min)} ({human_bytes(epoch_bytes)} per epoch file)",
                       "free some space, or lower network.dim / schedule.max_epochs")
    elif free < need_all:
        problems.warning(str(work_dir), "disk space", f"{human_bytes(free)} free; all {epochs} epochs would need "
                         f"{human_bytes(need_all)}", "fine if the floor stops training early; otherwise free space")
