"""What the dashboard shows of one job beyond its status row: curves, step rate, log tail, settings, review.

Read from the job's own files (epochs.jsonl through its one reader, train.log, job.resolved.yaml) and,
once the job is done, from its review package's summary.json. Every read tolerates a file that is not
there yet or is being written: the page shows what exists.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path

from animad.daemon.actions import kept_epochs
from animad.errors import UserError
from animad.layout import JobPaths, read_epochs_log
from animad.progress_report import Report
from animad.safe_text import safe

LOG_LINES = 40
LOG_BYTES = 64 * 1024  # the tail is read from the end: a long run's log is never read whole
SETTINGS_BYTES = 64 * 1024


def job_view(row: dict, shown: dict) -> dict:
    paths = JobPaths(Path(row["job_dir"])) if row.get("job_dir") else None
    progress = Report.read(row.get("progress"))
    return {
        "id": row["id"],
        "name": row["name"],
        "curve": curve(paths),
        "end_epoch": progress.end_epoch,
        "floor": {"state": progress.floor, "cooling": bool(progress.cooling),
                  "cooldown_epochs_left": progress.cooldown_epochs_left},
        "rate": {"s_per_it": progress.s_per_it if shown.get("live") else None},
        "log": log_tail(paths.log) if paths else [],
        "settings": settings_text(paths.resolved) if paths else "",
        "epoch_files": epoch_files(paths) if paths else [],
        "review": review(row),
    }


def curve(paths: JobPaths | None) -> list[dict]:
    """Per epoch: the epoch-average train loss, the stable eval loss and whether it was a cooldown epoch."""
    if paths is None:
        return []
    try:
        records = read_epochs_log(paths.epochs_log)
    except UserError:
        return []  # a damaged log: `animad status` and the job's own run say so; the page shows no curve
    return [{"epoch": r["epoch"], "loss": r["loss"], "eval_loss": r["eval_loss"], "cooldown": r["cooldown"]}
            for r in records]


def log_tail(path: Path, lines: int = LOG_LINES) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - LOG_BYTES))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    kept = text.splitlines()[-lines:]
    # A library's raw output may hold terminal escapes; the page shows them as visible text.
    return [safe(line) for line in kept]


def settings_text(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(SETTINGS_BYTES)
    except OSError:
        return ""


def epoch_files(paths: JobPaths) -> list[int]:
    """The epochs whose LoRA file is in the job folder (what "keep this epoch" can copy)."""
    try:
        names = os.listdir(paths.epochs_dir)
    except OSError:
        return []
    epochs = set()
    for name in names:
        stem = name.removesuffix(".safetensors")
        if stem != name and len(stem) > 6 and stem[-6:-4] == "-e" and stem[-4:].isdigit():
            epochs.add(int(stem[-4:]))
    return sorted(epochs)


def review(row: dict) -> dict | None:
    """A finished job's package: its URL under /review/, the shortlist and the "try first" pick if it names one."""
    outbox = Path(row["outbox_dir"]) if row.get("outbox_dir") else None
    if outbox is None or not (outbox / "index.html").is_file():
        return None
    try:
        summary = json.loads((outbox / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = {}
    if not isinstance(summary, dict):
        summary = {}
    shortlist = [{"epoch": e.get("epoch"), "kind": e.get("kind"), "file": e.get("file"), "reason": e.get("reason")}
                 for e in summary.get("shortlist") or [] if isinstance(e, dict)]
    return {"url": f"/review/{urllib.parse.quote(outbox.name, safe='')}/", "shortlist": shortlist, "try_first": try_first(summary),
            "kept": kept_epochs(outbox)}


def try_first(summary: dict) -> dict | None:
    """The review's "try this first" pick, when the package names one (summary.json's try_first)."""
    pick = summary.get("try_first")
    if isinstance(pick, int) and not isinstance(pick, bool):
        return {"epoch": pick, "reason": None}
    if isinstance(pick, dict) and isinstance(pick.get("epoch"), int):
        return {"epoch": pick["epoch"], "reason": pick.get("reason") if isinstance(pick.get("reason"), str) else None,
                "file": pick.get("file") if isinstance(pick.get("file"), str) else None}
    return None
