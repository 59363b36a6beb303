"""Validate a dataset folder before anything is queued: yaml, schema, images, captions, models, disk.

`check_folder` never raises for bad user input; it returns every problem it found, so the report
names all of them at once.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

from animad.anima.facts import latent_bytes
from animad.anima.files import ModelFiles
from animad.config.daemon import Daemon, resolve_path
from animad.config.job import JOB_PREFIX, JobConfig, load_job_file
from animad.config.problems import INBOX_ENDING, Problems
from animad.errors import ModelFileError
from animad.fsutil import free_bytes, human_bytes
from animad.intake.dataset import Dataset, links_outside, scan_dataset
from animad.intake.models import resolve_model_files
from animad.intake.report import DatasetReport, build_report
from animad.network_shapes import file_bytes, file_kind
from animad.safe_text import safe


@dataclasses.dataclass
class CheckResult:
    folder: Path
    config: JobConfig | None
    problems: Problems
    dataset: Dataset | None
    files: ModelFiles | None
    dataset_report: DatasetReport | None = None
    in_inbox: bool = False  # the daemon's inbox checks it again by itself; elsewhere the user reruns check

    @property
    def ok(self) -> bool:
        return not self.problems.errors and self.config is not None

    def report(self) -> str:
        title = f"animad check {safe(self.folder)}"  # the folder name is the user's: printed escaped
        details = [self.dataset_report.render()] if self.dataset_report else []
        if self.ok:
            lines = [f"{title}: OK ({len(self.dataset.items)} images in {len(self.dataset.subsets)} subset(s), "
                     f"{self.dataset.samples_per_epoch()} samples per epoch)", *details]
            if self.problems.warnings:
                lines.append(self.problems.render("Warnings (training will go ahead)"))
            return "\n".join(lines) + "\n"
        ending = INBOX_ENDING if self.in_inbox else \
            f"Fix the errors above, then run the check again: animad check {safe(self.folder)}"
        return "\n".join([self.problems.render(title, ending), *details])


def inside_inbox(folder: Path, daemon: Daemon) -> bool:
    try:
        folder.resolve().relative_to(daemon.dir("inbox").resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def job_name(folder: Path, config: JobConfig | None) -> str:
    return (config.name if config and config.name else Path(folder).name).strip() or "lora"


def check_folder(folder: Path, daemon: Daemon, *, work_dir: Path | None = None,
                 job_file: Path | None = None) -> CheckResult:
    """Check everything a job needs; work_dir is where its epochs will be written (for the disk check).
    job_file: the job file to read instead of job.yaml (animad import checks its draft before naming it
    job.yaml, so a watching daemon never takes a folder that cannot train)."""
    folder = Path(folder)
    problems = Problems()
    job_file = job_file or folder / "job.yaml"
    # A job.yaml linked outside the folder is never opened (the scan below reports the link), so
    # nothing from the file it points at can be echoed into the report.
    config = None if links_outside(job_file, folder) else load_job_file(job_file, problems)
    in_inbox = inside_inbox(folder, daemon)
    if config is None:
        # The yaml is unusable; still check the images so the user gets every problem in one report.
        scan_dataset(folder, JobConfig(), problems)
        return CheckResult(folder, None, relative_to_folder(problems, folder), None, None, in_inbox=in_inbox)
    name = job_name(folder, config)
    if any(c in name for c in "/\\\0") or name in (".", ".."):
        problems.error(job_file, "name", f"'{name}' cannot be used as a file name",
                       "use letters, digits, '-' and '_'")
    dataset = scan_dataset(folder, config, problems)
    gpu_bytes = check_device(config, job_file, problems)
    report = None
    if dataset.items:
        report = build_report(config, dataset, gpus=daemon.job_world(), gpu_bytes=gpu_bytes)
        report.add_warnings_to(problems)
    files = resolve_model_files(config, daemon, folder, problems, job_file)
    if daemon.path is None:
        suggest_init(problems)
    # job:<name> names a job in the queue, not a file: the daemon copies its LoRA in before training
    # (daemon/chain.py); check_job_logic has already checked the form.
    if config.network.init_from and not config.network.init_from.startswith(JOB_PREFIX):
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
    return CheckResult(folder, config, relative_to_folder(problems, folder), dataset, files, report, in_inbox)


def suggest_init(problems: Problems) -> None:
    """Without an animad.yaml the built-in model paths were tried; a missing file then most likely
    means the user never wrote one, so say how to (instead of only 'not found')."""
    fix = ("no animad.yaml was found (./animad.yaml, ~/.config/animad/animad.yaml or $ANIMAD_CONFIG), so the "
           "built-in paths were tried: run `animad init` and point its model set at your ComfyUI files, "
           "or pass --config")
    for index, problem in enumerate(problems.items):
        if problem.severity == "error" and problem.file == "animad.yaml" and problem.where.startswith("models."):
            problems.items[index] = dataclasses.replace(problem, fix=fix)


def check_device(config: JobConfig, job_file, problems: Problems) -> int | None:
    """`device: cuda` (or cuda:N) on a machine without that GPU would fail only once training starts:
    say so now. Returns the memory of the GPU training will use, if there is one (for the VRAM estimate)."""
    # Here, not at the top: the daemon (so `animad status`) imports this module. is_available() and
    # device_count() only ask the driver how many GPUs there are; no tensor is made, so no CUDA
    # context (and no GPU memory) is held by the daemon for them.
    import torch

    device = config.device
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = 0
    if device.startswith("cuda"):
        number = device.partition(":")[2]
        if number and not number.isdigit():
            problems.error(job_file, "device", f"'{device}' is not a device", "use auto, cuda, cuda:0 or cpu")
            return None
        index = int(number or 0)
        if not count:
            problems.error(job_file, "device", f"'{device}', but this machine has no CUDA GPU that torch can use "
                           "(torch.cuda.is_available() is False)", "use device: auto (the CPU here, the GPU on a "
                           "machine with one) or cpu; or fix the NVIDIA driver")
            return None
        if index >= count:
            problems.error(job_file, "device", f"'{device}', but this machine has {count} CUDA GPU(s): "
                           f"cuda:0 to cuda:{count - 1}", f"use one of cuda:0 to cuda:{count - 1}, or auto")
            return None
    if device == "cpu" or not count:
        return None
    return gpu_memory(index)


def gpu_memory(index: int) -> int | None:
    """Total memory of GPU `index`, read by nvidia-smi: asking torch would initialise CUDA in the
    daemon's own process, beside the job it is training. None without nvidia-smi (the estimate is then
    set against common cards). nvidia-smi counts in PCI order, CUDA fastest first: on a machine with
    mixed GPUs set CUDA_DEVICE_ORDER=PCI_BUS_ID (or CUDA_VISIBLE_DEVICES) so the two agree."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else None
    target = ids[index] if ids and index < len(ids) else str(index)
    try:
        out = subprocess.run(["nvidia-smi", f"--id={target}", "--query-gpu=memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
        return int(out.stdout.strip().splitlines()[0]) * 2 ** 20 if out.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


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
    kind = file_kind(names)
    if kind != config.network.type:
        what = f"is a {kind}" if kind else "holds no lora, lokr or loha module"
        problems.error(job_file, "network.init_from", f"{init.name} {what}, and this job trains a "
                       f"{config.network.type}: a network continues only as its own kind",
                       f"set network.type: {kind}, or start from zero" if kind else
                       "give a network file written by animad, sd-scripts or ComfyUI")
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
    from animad.anima.lora_names import target_shapes  # needs torch; see check_models

    net = config.network
    bytes_per = 4 if config.precision.save == "fp32" else 2
    return file_bytes(net.type, target_shapes(files.dit, net), net.dim, net.factor, bytes_per)


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
