"""Which model files a job uses: its job.yaml, the daemon's model sets, and the tokenizers beside them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from animad.anima.files import TOKENIZER_HELP, ModelFiles, find_tokenizers
from animad.config.daemon import Daemon, resolve_path
from animad.config.problems import Problems
from animad.errors import UserError
from animad.layout import JobPaths


def resolve_model_files(config, daemon, job_dir: Path, problems: Problems, job_file) -> ModelFiles | None:
    """Pick the DiT/text-encoder/VAE files for a job and find the tokenizers; record what is missing."""
    explicit = config.model_files
    named = daemon.model_set(config.base_model) if (config.base_model or not all(
        [explicit.dit, explicit.text_encoder, explicit.vae])) else None
    if config.base_model and named is None:
        known = ", ".join(daemon.config.models) or "(none)"
        problems.error(job_file, "base_model", f"no model set '{config.base_model}' in "
                       f"{daemon.path or 'animad.yaml'}", f"use one of: {known}, or give model_files")
        return None
    chosen = {}
    for key in ("dit", "text_encoder", "vae"):
        value = getattr(explicit, key)
        if value:
            chosen[key] = (resolve_path(job_dir, value), f"model_files.{key}", job_file)
        elif named and named.get(key):
            set_name = config.base_model or daemon.config.default_model
            chosen[key] = (named[key], f"models.{set_name}.{key}", daemon.path or "animad.yaml")
        else:
            problems.error(job_file, f"model_files.{key}", "no file given and no model set provides one",
                           f"set model_files.{key} or define a model set in animad.yaml (animad init)")
    missing = False
    for key, (path, where, file) in chosen.items():
        try:
            mode, readable = path.stat().st_mode, os.access(path, os.R_OK)
        except FileNotFoundError:
            mode, readable = None, False
        except OSError:  # a folder on the way may not be entered
            mode, readable = stat.S_IFREG, False
        if mode is None:
            missing = True
            problems.error(file, where, f"model file not found: {path}",
                           "download it from huggingface.co/circlestone-labs/Anima (split_files/) or fix the path")
        elif not stat.S_ISREG(mode):
            # Say what it is: "not found" for a folder that plainly exists sends the user looking in vain.
            missing = True
            what = "a folder" if stat.S_ISDIR(mode) else "a device, pipe or socket"
            problems.error(file, where, f"model path is {what}, not a .safetensors file: {path}",
                           "point it at the .safetensors file itself (e.g. the one inside that folder)")
        elif not readable:
            missing = True
            problems.error(file, where, f"model file is not readable (permission denied): {path}",
                           "let the user running animad read it (chmod/chown), or copy it somewhere readable")
    if len(chosen) < 3 or missing:
        return None
    c = daemon.config
    qwen, t5 = find_tokenizers(daemon.tokenizer_dirs(), [chosen["dit"][0], chosen["text_encoder"][0]],
                               resolve_path(daemon.base, c.comfyui), resolve_path(daemon.base, c.sd_scripts))
    if qwen is None or t5 is None:
        which = " and ".join(n for n, p in (("Qwen3", qwen), ("T5", t5)) if p is None)
        problems.error(daemon.path or "animad.yaml", "tokenizers", f"{which} tokenizer files not found",
                       TOKENIZER_HELP)
        return None
    return ModelFiles(chosen["dit"][0], chosen["text_encoder"][0], chosen["vae"][0], qwen, t5)


def job_model_files(paths: JobPaths, config, daemon: Daemon) -> ModelFiles:
    """Model files recorded when the job was accepted; re-resolved if that record is missing or stale."""
    recorded = paths.read_meta().get("model_files")
    if recorded and all(Path(v).exists() for v in recorded.values()):
        return ModelFiles(**{k: Path(v) for k, v in recorded.items()})
    problems = Problems()
    files = resolve_model_files(config, daemon, paths.dataset, problems, paths.resolved)
    if files is None:
        raise UserError(problems.render("Model files"))
    return files
