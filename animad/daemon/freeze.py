"""Accept or reject a settled inbox folder, and freeze accepted ones into the daemon's job folder.

The move is crash-safe: the job row is written first (status `accepting`), then the dataset is
renamed into `<state>/jobs/<id>-<name>/dataset` (same file system: one atomic rename), or copied to
a hidden partial folder, verified file by file (size + sha256), renamed into place and only then
removed from the inbox (another file system). `finish_accepting` completes or redoes any of these
steps after a kill, so a folder is never lost and never half-queued.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from animad.config.daemon import Daemon
from animad.daemon.queue import Queue
from animad.daemon.states import Status
from animad.fsutil import file_sha256, write_atomic
from animad.layout import JobPaths, safe_name
from animad.intake.jobfiles import write_job_files
from animad.intake.check import check_folder, job_name

log = logging.getLogger("animad.inbox")


def job_folder(daemon: Daemon, job_id: int, name: str) -> Path:
    return daemon.dir("state") / "jobs" / f"{job_id}-{safe_name(name)}"


def outbox_folder(daemon: Daemon, queue: Queue, name: str) -> Path:
    """outbox/<name>, or <name>-2, -3 ... when a folder or another job already has that name."""
    outbox = daemon.dir("outbox")
    taken = queue.outbox_names_in_use()
    base = safe_name(name)
    candidate, n = base, 1
    while candidate in taken or (outbox / candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return outbox / candidate


def handle_folder(folder: Path, daemon: Daemon, queue: Queue) -> int | None:
    """Validate a settled folder; queue it (returns the job id) or leave ERRORS.txt beside it (None)."""
    result = check_folder(folder, daemon, work_dir=daemon.dir("state"))
    errors_file = folder / "ERRORS.txt"
    if not result.ok:
        write_atomic(errors_file, result.report().encode())
        log.warning("rejected %s: %d problem(s); see %s", folder.name, len(result.problems.errors), errors_file)
        return None
    errors_file.unlink(missing_ok=True)  # ours, from an earlier rejection
    name = job_name(folder, result.config)
    job_id = queue.add(name, str(folder), priority=getattr(result.config, "priority", 0))
    job_dir = job_folder(daemon, job_id, name)
    queue.update(job_id, job_dir=str(job_dir), outbox_dir=str(outbox_folder(daemon, queue, name)))
    move_dataset(folder, job_dir / "dataset")
    write_job_files(JobPaths(job_dir), result)
    queue.update(job_id, status=Status.QUEUED)
    log.info("queued job %d (%s): %d images", job_id, name, len(result.dataset.items))
    return job_id


def move_dataset(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
        return
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    partial = target.parent / ".dataset.partial"
    if partial.exists():
        shutil.rmtree(partial)
    shutil.copytree(source, partial, symlinks=True)
    verify_copy(source, partial)
    os.rename(partial, target)
    shutil.rmtree(source)  # only now, after a verified copy: the data lives on in the job folder


def verify_copy(source: Path, copy: Path) -> None:
    for root, _, files in os.walk(source):
        for name in files:
            original = Path(root) / name
            duplicate = copy / original.relative_to(source)
            if original.is_symlink():
                continue
            if (not duplicate.is_file() or duplicate.stat().st_size != original.stat().st_size
                    or file_sha256(duplicate) != file_sha256(original)):
                raise OSError(f"copy of {original} to {duplicate} does not match; the inbox folder is kept")


def finish_accepting(daemon: Daemon, queue: Queue) -> None:
    """After a crash: complete (or roll back) every job that was being accepted."""
    for row in queue.by_status(Status.ACCEPTING):
        source = Path(row["source"])
        job_dir = Path(row["job_dir"]) if row["job_dir"] else job_folder(daemon, row["id"], row["name"])
        dataset = job_dir / "dataset"
        partial = job_dir / ".dataset.partial"
        if partial.exists():
            shutil.rmtree(partial)  # an unverified copy of ours; the source is still in the inbox
        if dataset.is_dir():
            if source.is_dir():
                shutil.rmtree(source)  # the copy was verified before it was renamed into place
            result = check_folder(dataset, daemon, work_dir=daemon.dir("state"))
            if result.ok:
                write_job_files(JobPaths(job_dir), result)
                queue.update(row["id"], status=Status.QUEUED, job_dir=str(job_dir))
                continue
            queue.update(row["id"], status=Status.FAILED, error=result.report())
            continue
        # Nothing moved yet: forget the row; the folder is still in the inbox and will be taken again.
        queue.update(row["id"], status=Status.CANCELLED, error="accepting was interrupted; the inbox folder is "
                     "handled again as a new job")
