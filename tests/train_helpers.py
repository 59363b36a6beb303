"""Training a tiny job in this process: a checked job folder (prepare), a real run (train), and a run
that must finish with one finite record per epoch (run_job). Shared by the training test modules."""

from __future__ import annotations

import math

import torch

from animad.config.daemon import load_daemon_config
from animad.demo.synthetic import make_dataset, tiny_job
from animad.intake.check import check_folder
from animad.layout import JobPaths, read_epochs_log


def prepare(tmp_path, daemon_config, job: dict, name="ds", **dataset_kwargs) -> tuple[JobPaths, object]:
    from animad.intake.jobfiles import write_job_files

    folder = make_dataset(tmp_path / name, job=job, **dataset_kwargs)
    daemon = load_daemon_config(daemon_config)
    result = check_folder(folder, daemon)
    assert result.ok, result.report()
    paths = JobPaths(tmp_path / "runs" / name)
    write_job_files(paths, result, dataset_dir=folder)
    return paths, daemon


def train(paths, daemon, stop=lambda: False):
    from animad.train.run import train_job

    progress = []
    status = train_job(paths, daemon=daemon, should_stop=stop, on_progress=progress.append)
    return status, progress


def run_job(tmp_path, daemon_config, epochs=2, **overrides):
    job = tiny_job(epochs=epochs, selection={"stop_at_floor": False}, **overrides)
    paths, daemon = prepare(tmp_path, daemon_config, job)
    status, _ = train(paths, daemon)
    assert status == "finished"
    records = read_epochs_log(paths.epochs_log)
    assert len(records) == epochs and all(math.isfinite(r["loss"]) and math.isfinite(r["eval_loss"])
                                          for r in records)
    return paths, records


def optimizer_state_dtypes(state: dict) -> set:
    """Every tensor dtype in a saved optimizer state (bitsandbytes nests its buffers one level down)."""
    found, todo = set(), [state["optimizer"]["state"]]
    while todo:
        item = todo.pop()
        if torch.is_tensor(item):
            found.add(item.dtype)
        elif isinstance(item, dict):
            todo.extend(item.values())
    return found
