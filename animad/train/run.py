"""Entry point for training one job folder (used by the daemon's child process and `animad train`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from animad.config.daemon import Daemon
from animad.config.job import load_resolved
from animad.config.problems import Problems
from animad.errors import UserError, disk_full_is_user_error
from animad.layout import JobPaths
from animad.model.files import ModelFiles
from animad.train.dataset import scan_dataset

log = logging.getLogger("animad.train")


def job_model_files(paths: JobPaths, config, daemon: Daemon) -> ModelFiles:
    """Model files recorded when the job was accepted; re-resolved if that record is missing or stale."""
    recorded = paths.read_meta().get("model_files")
    if recorded and all(Path(v).exists() for v in recorded.values()):
        return ModelFiles(**{k: Path(v) for k, v in recorded.items()})
    from animad.model.files import resolve_model_files

    problems = Problems()
    files = resolve_model_files(config, daemon, paths.dataset, problems, paths.resolved)
    if files is None:
        raise UserError(problems.render("Model files"))
    return files


def load_job_dataset(paths: JobPaths, config):
    problems = Problems()
    dataset = scan_dataset(paths.dataset, config, problems)
    if problems.errors:
        raise UserError(problems.render(f"Dataset {paths.dataset} changed since it was checked"))
    return dataset


def train_job(paths: JobPaths, *, daemon: Daemon, should_stop: Callable[[], bool],
              on_progress: Callable[[dict], None], gpus: int | None = None) -> str:
    """Train (or resume) the job in paths.root; returns "finished" or "paused".

    gpus (default: animad.yaml's gpus) > 1 trains on that many GPUs, one process each.
    Raises UserError for problems the user can fix; anything else is a crash.
    """
    from animad.train.loop import run_training

    config = load_resolved(paths.resolved)
    files = job_model_files(paths, config, daemon)
    dataset = load_job_dataset(paths, config)
    arguments = {"paths": paths, "config": config, "files": files, "dataset": dataset,
                 "cache_dir": daemon.dir("cache")}
    world = gpus or daemon.config.gpus
    then = "Every file saved so far is intact: free some space and run the job again; it resumes from its last state."
    with disk_full_is_user_error(paths.root, then):
        if world > 1:
            from animad.train.distributed import launch

            return launch(world, arguments, should_stop, on_progress)
        return run_training(**arguments, should_stop=should_stop, on_progress=on_progress)
