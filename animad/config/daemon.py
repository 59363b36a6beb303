"""animad.yaml: the daemon's own config (dirs, model sets, tokenizers, windows, settle time).

Relative paths are resolved against the folder that holds animad.yaml. The config is found at
--config, $ANIMAD_CONFIG, ./animad.yaml or ~/.config/animad/animad.yaml, in that order.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path

from animad.config.problems import ConfigError, Problems
from animad.config.schema import option, parse, section, template
from animad.config.window import parse_windows
from animad.config.yamlio import load_yaml_file
from animad.fsutil import safe_is_file


@dataclasses.dataclass
class DirsConfig:
    inbox: str = option("inbox", "Drop dataset folders here. inbox, beside this file, so one folder holds all "
                                 "of animad's data.")
    outbox: str = option("outbox", "Review packages appear here. outbox, beside this file and the inbox.")
    state: str = option("state", "Queue database, frozen jobs, logs and per-job work folders. state, beside this "
                                 "file; it needs room for every epoch file (~46 MB each at dim 16).")
    cache: str = option("cache", "Latent and text-embedding cache. cache, beside this file and shared by all jobs, "
                                 "so a dataset dropped again with the same model skips the VAE.")


@dataclasses.dataclass
class ModelSet:
    dit: str = option("", "Anima DiT .safetensors (ComfyUI models/diffusion_models/). Empty here: each set names "
                          "its own files.")
    text_encoder: str = option("", "qwen_3_06b_base.safetensors (ComfyUI models/text_encoders/). Empty here: each "
                                   "set names its own files.")
    vae: str = option("", "qwen_image_vae.safetensors (ComfyUI models/vae/). Empty here: each set names its own "
                          "files.")


@dataclasses.dataclass
class DashboardConfig:
    port: int = option(8677, "The port `animad run` serves the dashboard on. 8677: beside ai-toolkit's 8675, free on "
                             "most machines. 0 turns the dashboard off.", min=0, max=65535)
    bind: str = option("127.0.0.1", "The address it listens on. 127.0.0.1: only this machine can open it. 0.0.0.0 "
                                    "lets a phone on your network in; then every page asks for the token in "
                                    "<state>/dashboard.token, and the names it is reached by go under hosts.")
    hosts: list[str] = option([], "More names the page may be opened by (the Host header), besides 127.0.0.1 and "
                                  "localhost (and, with bind 0.0.0.0, this machine's name): any other is refused, "
                                  "against DNS rebinding. Empty: only those.", example=["192.168.1.20", "mybox.local"])


@dataclasses.dataclass
class DaemonConfig:
    dirs: DirsConfig = section(DirsConfig, "Folders (relative to this file).")
    default_model: str = option("anima-base-1.0", "The model set used when job.yaml names none. anima-base-1.0, the "
                                                  "base model the guides train on.")
    models: dict[str, ModelSet] = option(
        {"anima-base-1.0": ModelSet(
            dit="~/ComfyUI/models/diffusion_models/anima-base-v1.0.safetensors",
            text_encoder="~/ComfyUI/models/text_encoders/qwen_3_06b_base.safetensors",
            vae="~/ComfyUI/models/vae/qwen_image_vae.safetensors")},
        "Named model sets. A job picks one with 'base_model: NAME'. The default points where ComfyUI keeps the "
        "files, since our users sample there; nothing is ever downloaded.")
    tokenizers: list[str] = option(
        [], "Extra folders to search for the Qwen3 (vocab.json + merges.txt, or tokenizer.json) and T5 "
            "(spiece.model or tokenizer.json) tokenizers, before ComfyUI, sd-scripts and the HF cache. "
            "Empty: those three places usually have them already.",
        example=["~/ComfyUI/comfy/text_encoders"])
    comfyui: str | None = option(None, "A ComfyUI install to find tokenizers in. null: guessed from the model paths "
                                       "(they usually sit inside it).", example="~/ComfyUI")
    sd_scripts: str | None = option(None, "An sd-scripts checkout to find tokenizers in (configs/qwen3_06b, "
                                          "configs/t5_old). null: not searched.", example="~/sd-scripts")
    windows: list[str] = option(["22:00-07:00"], "When training may run, local time: 'HH:MM-HH:MM' (may cross "
                                                 "midnight), optionally with days ('mon-fri 22:00-07:00', "
                                                 "'sat,sun 09:00-18:00'), or 'always'. 22:00-07:00: our users "
                                                 "train overnight, while the GPU is free.")
    settle_seconds: float = option(30.0, "A dropped folder is taken after this many quiet seconds. 30 (the spec's "
                                         "default): longer than the pauses of a slow copy between files; a folder "
                                         "moved in whole is taken at once anyway.", min=0)
    poll_seconds: float = option(0.0, "Use a polling watcher with this interval (0 = inotify, with a polling "
                                      "fallback). 0: inotify costs no CPU when idle; set 5 for an inbox on WSL's "
                                      "/mnt/c, which sends no events.", min=0)
    gpus: int | list[int] = option(
        1, "The GPUs jobs train on: a count (the first N GPUs) or a list of GPU indices ([0, 1]). With "
           "parallel_jobs off, one job trains on all of them, data parallel, one process per GPU (each step "
           "takes batch_size x grad_accum x gpus images); without CUDA, that many CPU processes. 1: our users "
           "have one home GPU.", example=[0, 1])
    parallel_jobs: bool = option(
        False, "With more than one GPU in gpus: run one queued job per GPU at once (each pinned to its GPU with "
               "CUDA_VISIBLE_DEVICES, so it trains single-GPU) instead of one job on all of them. At LoRA's "
               "small batches (<= 4) a data-parallel step waits on a gradient sync every step, so a queue of "
               "jobs should finish sooner one per GPU. Off: one job at a time, as on a one-GPU machine.")
    stop_grace_seconds: float = option(120.0, "How long a job may take to save its state when told to stop. 120: "
                                              "many times a 1024² step (5-9 s reported on an RTX 5070 Ti) plus the "
                                              "state write, and inside the systemd unit's TimeoutStopSec=300.", min=1)
    keep_epochs: str = option("all", "Retention of epoch files after a job is done: 'all' or 'shortlist'. all: you "
                                     "may want an epoch beside the picks, and a deleted file cannot come back.",
                              choices=("all", "shortlist"))
    inhibit_sleep: bool = option(True, "Hold a systemd-inhibit sleep lock while a job trains (if available). On: a "
                                       "machine that sleeps at night would lose the night's training.")
    dashboard: DashboardConfig = section(DashboardConfig, "The dashboard `animad run` serves: the queue, live curves, "
                                                          "the review packages and the job actions, in a browser.")
    comfyui_loras: str | None = option(None, "ComfyUI's models/loras folder: 'keep this epoch' (the dashboard, or "
                                             "animad keep JOB EPOCH) copies the epoch there too, never over a file. "
                                             "null: only into outbox/<name>/kept/.", example="~/ComfyUI/models/loras")
    tensorboard_port: int = option(6006, "Port for 'animad tensorboard JOB' (always bound to 127.0.0.1). 6006, "
                                         "TensorBoard's own default.", min=1024, max=65535)


def find_config_path(explicit: str | None = None) -> Path | None:
    candidates = [explicit, os.environ.get("ANIMAD_CONFIG"), "animad.yaml",
                  str(Path.home() / ".config" / "animad" / "animad.yaml")]
    for candidate in candidates:
        if candidate and safe_is_file(Path(candidate).expanduser()):  # another user's ~ is not ours
            return Path(candidate).expanduser().resolve()
    if explicit:
        return Path(explicit).expanduser().resolve()
    return None


def resolve_path(base: Path, value: str | None) -> Path | None:
    if not value:
        return None
    path = Path(os.path.expandvars(value)).expanduser()
    return path if path.is_absolute() else (base / path)


@dataclasses.dataclass
class Daemon:
    """A validated daemon config plus the folder its relative paths are resolved against.

    `slots` is what each job slot sets CUDA_VISIBLE_DEVICES to (None: left as it is). parallel_jobs: one
    slot per GPU, pinned to it. Otherwise one slot: a listed set of GPUs is made the visible one (the
    job's ranks then use exactly those), a count leaves the environment alone. Once the slots are
    known, `config.gpus` is the number of GPUs ONE job trains on (1 with parallel_jobs), the meaning
    it always had for the code that sizes a job (its ranks, the steps `animad check` counts).
    """

    config: DaemonConfig
    base: Path
    path: Path | None
    slots: list[str | None] | None = None

    def __post_init__(self):
        if self.slots is not None:
            return
        gpus = self.config.gpus
        ids = [str(g) for g in gpus] if isinstance(gpus, list) else None
        if self.config.parallel_jobs:
            self.slots = ids if ids is not None else [str(i) for i in range(gpus)]
            world = 1
        else:
            self.slots = [",".join(ids)] if ids is not None else [None]
            world = len(ids) if ids is not None else gpus
        self.config = dataclasses.replace(self.config, gpus=world)  # a copy: the caller's config is not changed

    def dir(self, name: str) -> Path:
        return resolve_path(self.base, getattr(self.config.dirs, name))

    def model_set(self, name: str | None) -> dict[str, Path] | None:
        entry = self.config.models.get(name or self.config.default_model)
        if entry is None:
            return None
        return {k: resolve_path(self.base, getattr(entry, k)) for k in ("dit", "text_encoder", "vae")}

    def slot_devices(self) -> list[str | None]:
        return list(self.slots)

    def job_world(self) -> int:
        """How many processes (GPUs) one job trains on: 1 per job with parallel_jobs, else all of gpus."""
        return self.config.gpus

    def tokenizer_dirs(self) -> list[Path]:
        return [resolve_path(self.base, d) for d in self.config.tokenizers]


def load_daemon_config(path: Path | None) -> Daemon:
    """Load and validate animad.yaml; without one, defaults apply relative to the current folder.

    Raises ConfigError listing every problem.
    """
    problems = Problems()
    if path is None:
        return Daemon(DaemonConfig(), Path.cwd(), None)
    data = load_yaml_file(path, problems)
    config = parse(DaemonConfig, data, path, problems) if data is not None else None
    if config is not None:
        check_daemon_logic(config, path, problems)
    if problems or config is None:
        raise ConfigError(problems, f"Daemon config {path}")
    return Daemon(config, Path(path).parent, Path(path))


def check_daemon_logic(config: DaemonConfig, path, problems: Problems) -> None:
    try:
        parse_windows(config.windows)
    except ValueError as error:
        problems.error(path, "windows", str(error), "use e.g. '22:00-07:00', 'mon-fri 22:00-07:00' or 'always'")
    check_gpus(config, path, problems)
    try:
        ipaddress.ip_address(config.dashboard.bind)
    except ValueError:
        problems.error(path, "dashboard.bind", f"'{config.dashboard.bind}' is not an IP address",
                       "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface, token on every page)")
    if config.default_model not in config.models:
        problems.error(path, "default_model", f"'{config.default_model}' is not a model set under 'models'",
                       f"use one of: {', '.join(config.models) or '(none defined)'}")


def check_gpus(config: DaemonConfig, path, problems: Problems) -> None:
    gpus = config.gpus
    if isinstance(gpus, int) and not 1 <= gpus <= 16:
        problems.error(path, "gpus", f"{gpus} GPUs: a count is 1 to 16",
                       "write a count such as 1 or 2, or a list of GPU indices such as [0, 1]")
    if isinstance(gpus, list):
        if not gpus:
            problems.error(path, "gpus", "an empty list names no GPU", "list GPU indices such as [0, 1], or write 1")
        bad = [g for g in gpus if not 0 <= g <= 63]
        if bad:
            problems.error(path, "gpus", f"{bad[0]} is not a GPU index (0 to 63)",
                           "list indices as nvidia-smi numbers them, such as [0, 1]")
        repeated = sorted({g for g in gpus if gpus.count(g) > 1})
        if repeated:
            problems.error(path, "gpus", f"GPU {repeated[0]} is listed twice",
                           "list each GPU once (two jobs on one GPU would share its memory and run out of it)")


def init_text() -> str:
    header = (
        "# animad daemon config. Every key is optional; these are the defaults.\n"
        "# Relative paths are relative to this file. Start the daemon with: animad run\n\n"
    )
    return header + template(DaemonConfig) + "\n"
