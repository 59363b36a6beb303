"""Write the files that define a job folder: resolved config, identity and validation report."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml

from animad.config.job import resolved_dict
from animad.config.problems import Problems, write_json_atomic
from animad.errors import UserError
from animad.fsutil import write_atomic
from animad.layout import JobPaths
from animad.intake.check import CheckResult, job_name
from animad.intake.dataset import scan_dataset


def write_job_files(paths: JobPaths, result: CheckResult, dataset_dir: Path | None = None) -> None:
    """Freeze a checked job: job.resolved.yaml (every default filled in, `auto` resolved against the
    checked dataset), job.json and report.json.

    dataset_dir is recorded when training reads the user's folder in place (`animad train DIR`);
    daemon jobs keep their frozen copy in <job>/dataset and leave it out.
    """
    config = result.config
    resolved = resolved_dict(config, len(result.dataset.items))  # `batch_size: auto` becomes a number here
    resolved["name"] = job_name(result.folder, config)
    header = "# Resolved by animad: every default filled in. Training reads this file, not the inbox.\n"
    write_atomic(paths.resolved, (header + yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True)).encode())
    meta = {
        "name": resolved["name"],
        "source": str(result.folder),
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "model_files": result.files.as_dict() if result.files else None,
    }
    if dataset_dir is not None:
        meta["dataset"] = str(Path(dataset_dir).resolve())
    write_json_atomic(paths.meta, meta)
    write_json_atomic(paths.report, result.problems.to_json())


def load_job_dataset(paths: JobPaths, config):
    problems = Problems()
    dataset = scan_dataset(paths.dataset, config, problems)
    if problems.errors:
        raise UserError(problems.render(f"Dataset {paths.dataset} changed since it was checked"))
    return dataset
