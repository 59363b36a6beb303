"""Entry point for training one job folder (used by the daemon's child process and `animad train`)."""

from __future__ import annotations

import logging
from typing import Callable

from animad.config.daemon import Daemon
from animad.config.job import load_resolved
from animad.errors import disk_full_is_user_error
from animad.intake.jobfiles import load_job_dataset
from animad.intake.models import job_model_files
from animad.layout import JobPaths
from animad.train.launch import launch
from animad.train.loop import run_training

log = logging.getLogger("animad.train")


def train_job(paths: JobPaths, *, daemon: Daemon, should_stop: Callable[[], bool],
              on_progress: Callable[[dict], None], gpus: int | None = None, recover: str | None = None) -> str:
    """Train (or resume) the job in paths.root; returns "finished" or "paused".

    gpus (default: how many animad.yaml's gpus gives one job; 1 with parallel_jobs, whose daemon pins
    each job to its own GPU) > 1 trains on that many GPUs, one process each.
    Raises UserError for problems the user can fix; anything else is a crash.
    """
    config = load_resolved(paths.resolved)
    files = job_model_files(paths, config, daemon)
    dataset = load_job_dataset(paths, config)
    arguments = {"paths": paths, "config": config, "files": files, "dataset": dataset,
                 "cache_dir": daemon.dir("cache")}
    world = gpus or daemon.job_world()
    # recover: the command that resumes this job where it came from (the daemon's: animad retry N).
    again = f"run `{recover}`" if recover else "run the job again"
    then = f"Every file saved so far is intact: free some space and {again}; it resumes from its last state."
    with disk_full_is_user_error(paths.root, then):
        if world > 1:
            return launch(world, arguments, should_stop, on_progress)
        return run_training(**arguments, should_stop=should_stop, on_progress=on_progress)
