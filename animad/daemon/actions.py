"""What a person may do to a job: pause, resume, cancel, retry, keep an epoch; the rules and words, in one place.

`animad pause|resume|cancel|retry` and the dashboard's buttons both call these. Each takes the row
as the queue has it now, refuses what its status does not allow (UserError, saying why), records the
request in the row and returns what will happen, in a sentence. A running job is never touched
here: the row carries the request, and the daemon's loop acts on it at its next tick.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from pathlib import Path

from animad.config.daemon import Daemon, resolve_path
from animad.config.window import parse_windows
from animad.daemon.queue import Queue
from animad.daemon.rebuild import clear_cancelled, mark_cancelled
from animad.daemon.states import ACTIVE, FINAL, RUNNABLE, Request, Status
from animad.daemon.status import daemon_alive
from animad.daemon.window import is_open, local_now, next_open
from animad.errors import UserError
from animad.fsutil import file_sha256, fsync_dir
from animad.layout import JobPaths, safe_name
from animad.safe_text import safe


@dataclasses.dataclass
class Done:
    message: str  # what happens now, for the person who asked
    note: str | None = None  # something went half right (said on stderr by the CLI)


def job_folder_gone(row: dict) -> bool:
    return bool(row["job_dir"]) and not os.path.isdir(row["job_dir"])


def gone_message(row: dict) -> str:
    """What a job whose folder was deleted can still do (`animad retry` and the daemon say the same)."""
    return (f"its job folder {safe(row['job_dir'])} is gone (deleted while the job waited?), and its dataset "
            f"and saved state with it. To train it again, drop the dataset folder into the inbox (a new job); "
            f"`animad cancel {row['id']}` clears this one")


def find_job(queue: Queue, key: str) -> dict:
    """The one row a job id or name means; UserError when none or several do."""
    rows = queue.find(key)
    if not rows:
        raise UserError(f"no job '{safe(key)}'; see 'animad status'")
    if len(rows) > 1:
        ids = ", ".join(str(r["id"]) for r in rows)
        raise UserError(f"several jobs are named '{safe(key)}' (ids {ids}); give the id")
    return rows[0]


def pause(queue: Queue, row: dict) -> Done:
    if row["status"] in FINAL:
        raise UserError(f"job {row['id']} is {row['status']}; nothing to pause")
    if row["status"] in ACTIVE:
        queue.update(row["id"], held=1, request=Request.PAUSE)
        return Done(f"job {row['id']} will save its state at the next step and pause")
    queue.update(row["id"], held=1)
    return Done(f"job {row['id']} is held; 'animad resume {row['id']}' lets it run again")


def paused_jobs(queue: Queue) -> list[dict]:
    """What `animad resume` with no job releases: every held or paused job."""
    return [r for r in queue.by_status(*RUNNABLE) if r["held"] or r["status"] == Status.PAUSED]


def resume(daemon: Daemon, queue: Queue, row: dict, now: bool = False) -> Done:
    if row["status"] not in RUNNABLE:
        raise UserError(f"job {row['id']} is {row['status']}; only paused or queued jobs can be resumed")
    queue.update(row["id"], held=0, request=None, run_now=1 if now else row["run_now"])
    return Done(f"job {row['id']} ({safe(row['name'])}) {when_it_resumes(daemon, queue, row, now)}")


def when_it_resumes(daemon: Daemon, queue: Queue, row: dict, now: bool) -> str:
    """The truth about when a released job starts: now (within a tick), after the running job, or in the window."""
    if not daemon_alive(daemon):
        return "is released; it starts once the daemon runs (animad run)"
    windows = parse_windows(daemon.config.windows)
    if not (now or row["run_now"] or is_open(local_now(), windows)):
        opens = next_open(local_now(), windows)
        at = f" (opens {opens:%a %H:%M})" if opens else ""
        return f"resumes in the next window{at}; 'animad resume {row['id']} --now' starts it now"
    running = [r for r in queue.by_status(*ACTIVE) if r["id"] != row["id"]]
    if running and len(running) >= len(daemon.slot_devices()):  # every slot taken
        return f"is released; it starts when job {running[0]['id']} ({safe(running[0]['name'])}) is done"
    return "restarts now (the daemon starts it within a few seconds)"


def cancel(queue: Queue, row: dict) -> Done:
    if row["status"] in (Status.DONE, Status.CANCELLED):
        raise UserError(f"job {row['id']} is already {row['status']}")
    note = None
    # Recorded in the job folder too: a queue rebuilt from the job folders keeps it cancelled.
    try:
        mark_cancelled(row)
    except OSError as error:
        note = (f"could not record the cancel in its job folder ({safe(error)}); a queue rebuilt from the "
                "job folders would queue it again")
    if row["status"] in ACTIVE:
        queue.update(row["id"], request=Request.CANCEL)
        return Done(f"job {row['id']} will stop at the next step; its files are kept in {safe(row['job_dir'])}", note)
    queue.update(row["id"], status=Status.CANCELLED, finished=time.time())
    return Done(f"job {row['id']} cancelled; its files are kept in {safe(row['job_dir'])}", note)


def retry(queue: Queue, row: dict) -> Done:
    if row["status"] not in (Status.FAILED, Status.CANCELLED):
        raise UserError(f"job {row['id']} is {row['status']}; only failed or cancelled jobs can be retried")
    if not row["job_dir"]:
        raise UserError(f"job {row['id']} never got a job folder; drop the dataset folder into the inbox again")
    if job_folder_gone(row):
        raise UserError(f"job {row['id']} cannot be retried: {gone_message(row)}")
    if not (Path(row["job_dir"]) / "job.resolved.yaml").is_file():
        raise UserError(f"job {row['id']}: {safe(row['job_dir'])} has no job.resolved.yaml (its acceptance never "
                        "finished); drop the dataset folder into the inbox again")
    clear_cancelled(Path(row["job_dir"]))
    queue.update(row["id"], status=Status.QUEUED, held=0, request=None, error=None, outcome=None, resume_first=1)
    return Done(f"job {row['id']} queued again; it resumes from its last saved state ({row['phase']} phase)")


KEPT = "kept"  # outbox/<name>/kept/: the epochs a person chose to keep, under descriptive names


def epoch_source(row: dict, epoch: int) -> Path:
    """The job folder's file of one epoch; UserError naming the epochs that do have files."""
    if not row.get("job_dir"):
        raise UserError(f"job {row['id']} never got a job folder; it has no epoch files")
    folder = JobPaths(Path(row["job_dir"])).epochs_dir
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    except OSError:
        names = []
    wanted = [n for n in names if n.endswith(f"-e{epoch:04d}.safetensors")]
    if not wanted:
        have = ", ".join(n.removesuffix(".safetensors").rsplit("-e", 1)[-1].lstrip("0") for n in names) or "none"
        raise UserError(f"job {row['id']}: epoch {epoch} has no file in {safe(folder)} (epochs there: {have}; "
                        "keep_epochs: shortlist removes the others once the package is written)")
    return folder / wanted[0]


def keep_epoch(daemon: Daemon, row: dict, epoch: int) -> Done:
    """Copy one epoch's LoRA as `<name>-eNNNN.safetensors` into outbox/<name>/kept/ and comfyui_loras.

    Never over a file: a different file already holding the name gets the copy beside it as
    `<name>-eNNNN-2.safetensors`; the same bytes already there are left as they are.
    """
    if row.get("status") != Status.DONE or not row.get("outbox_dir"):
        raise UserError(f"job {row['id']} is {row.get('status')}; an epoch is kept from a finished job's review")
    source = epoch_source(row, epoch)
    name = f"{safe_name(row['name'])}-e{epoch:04d}"
    said = [copy_new(source, Path(row["outbox_dir"]) / KEPT, name)]
    note = None
    loras = resolve_path(daemon.base, daemon.config.comfyui_loras)
    if loras is not None:
        if loras.is_dir():
            said.append(copy_new(source, loras, name))
        else:
            note = (f"comfyui_loras: {safe(loras)} is not a folder, so the epoch was not copied there; point it at "
                    "ComfyUI's models/loras in animad.yaml")
    return Done(f"job {row['id']} epoch {epoch}: " + "; ".join(said), note)


def copy_new(source: Path, folder: Path, stem: str) -> str:
    """Copy source into folder as stem.safetensors (or stem-2, -3, ... beside a different file of that name)."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = file_sha256(source)
    partial = folder / f".{stem}.partial-{os.getpid()}-{threading.get_ident()}"
    try:
        shutil.copyfile(source, partial)
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        for n in range(1, 100):
            target = folder / (f"{stem}.safetensors" if n == 1 else f"{stem}-{n}.safetensors")
            if target.exists():
                if target.is_file() and target.stat().st_size == source.stat().st_size and file_sha256(target) == digest:
                    return f"already kept as {safe(target)}"
                continue
            try:
                os.link(partial, target)  # fails if the name was taken meanwhile: never over a file
            except FileExistsError:
                continue
            except OSError:  # a file system without hard links (some Windows mounts)
                if target.exists():
                    continue
                os.rename(partial, target)
            fsync_dir(folder)
            return f"kept as {safe(target)}"
        raise UserError(f"{safe(folder)}: {stem}.safetensors and 98 numbered copies already exist; nothing was written")
    finally:
        partial.unlink(missing_ok=True)


def kept_epochs(outbox: Path) -> list[str]:
    """The file names in outbox/<name>/kept/ (what the review has kept so far)."""
    try:
        return sorted(n for n in os.listdir(Path(outbox) / KEPT) if n.endswith(".safetensors"))
    except OSError:
        return []
