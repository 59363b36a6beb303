"""Write the files that define a job folder: resolved config, identity and validation report."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import yaml

from animad.config.job import SubsetConfig, resolved_dict
from animad.config.problems import Problems, write_json_atomic
from animad.errors import UserError
from animad.fsutil import write_atomic
from animad.layout import JobPaths
from animad.intake.check import CheckResult, job_name
from animad.intake.dataset import ROOT_KEY, Dataset, scan_dataset


def write_job_files(paths: JobPaths, result: CheckResult, dataset_dir: Path | None = None, *,
                    name: str | None = None, source: str | None = None) -> None:
    """Freeze a checked job: job.resolved.yaml (every default filled in, `auto` resolved against the
    checked dataset), job.json, report.json and dataset-report.json (the dataset report, for the page).

    dataset_dir is recorded when training reads the user's folder in place (`animad train DIR`);
    daemon jobs keep their frozen copy in <job>/dataset and leave it out.
    name and source: the job's, as its queue row records them. A daemon that completes an accept
    after a restart checks <job>/dataset, whose folder name is not the job's name.
    """
    config = result.config
    resolved = resolved_dict(config, len(result.dataset.items))  # `batch_size: auto` becomes a number here
    resolved["name"] = name or job_name(result.folder, config)
    resolved["data"]["subsets"] = caption_settings(resolved["data"]["subsets"], result.dataset)
    header = "# Resolved by animad: every default filled in. Training reads this file, not the inbox.\n"
    write_atomic(paths.resolved, (header + yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True)).encode())
    meta = {
        "name": resolved["name"],
        "source": source or str(result.folder),
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "model_files": result.files.as_dict() if result.files else None,
    }
    if dataset_dir is not None:
        meta["dataset"] = str(Path(dataset_dir).resolve())
    write_json_atomic(paths.meta, meta)
    write_json_atomic(paths.report, result.problems.to_json())
    if result.dataset_report is not None:
        write_json_atomic(paths.root / DATASET_REPORT, result.dataset_report.to_json())


DATASET_REPORT = "dataset-report.json"


def caption_settings(subsets: dict, dataset: Dataset) -> dict:
    """data.subsets with every subset's shuffle_captions and tag_dropout written out as intake decided
    them (natural-language captions turn both off): training and every resume then do exactly that,
    whatever a later animad's caption-style rule would say."""
    out = {name: dict(values) for name, values in subsets.items()}
    blank = dataclasses.asdict(SubsetConfig())
    for subset in dataset.subsets:
        if subset.name:
            # Under the full folder path, which the scan reads first, carrying over an entry the user
            # wrote for its last part (two folders a/x and b/x may caption differently).
            key, leaf = subset.name, subset.name.rsplit("/", 1)[-1]
            entry = dict(out.get(key) or out.get(leaf) or blank)
        else:
            key = "" if "" in out else ROOT_KEY
            entry = dict(out.get(key) or blank)
        entry["shuffle_captions"] = subset.shuffle_captions
        entry["tag_dropout"] = subset.tag_dropout
        out[key] = entry
    return out


def load_job_dataset(paths: JobPaths, config):
    problems = Problems()
    dataset = scan_dataset(paths.dataset, config, problems, caption_defaults=False)  # as frozen: see write_job_files
    if problems.errors:
        raise UserError(problems.render(f"Dataset {paths.dataset} changed since it was checked"))
    return dataset
