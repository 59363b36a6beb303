"""The job folders are the durable truth; the queue database can be rebuilt from them.

At start the daemon runs `PRAGMA quick_check` on its queue. A damaged file is moved aside (kept as
`animad.sqlite.corrupt-<time>`, never deleted) and a new one is made. Then every job folder with no
row (the database was damaged, emptied or deleted) is registered again with its last state read
from the folder:

- `finished.txt` and a review package newer than it in the job's outbox folder: done;
- `finished.txt` alone: queued to (re)run selection;
- a resume state: queued first, to resume where it stopped;
- a frozen dataset and config: queued from the start;
- an accept.json short of `done` (killed mid-accept): accepting, and finished or rolled back from its
  recorded phase right after, as if the database had never been lost;
- a dataset with no config (killed mid-accept before accept.json was kept): checked again and queued,
  or failed with the report.

- `cancelled.txt` (written by `animad cancel`, removed by `animad retry`): cancelled, as the user left it.

The row's name, source, creation time and outbox folder are the ones recorded when the job was accepted
(accept.json; job.json for older folders), never a folder's name inside the job: the rebuilt queue has
the same names and writes each review package where the first one went.

A failed job cannot be told from the disk; it comes back queued (it gets another try), and the log names it.
If the database cannot be put right without a person (the file cannot be moved aside, or a new one
cannot be made), the daemon logs one message saying what to do and exits with Exit.NEEDS_PERSON,
which the systemd unit does not restart.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import time
from pathlib import Path

from animad.config.daemon import Daemon
from animad.daemon.accept_record import DONE, AcceptRecord
from animad.daemon.freeze import folder_id, job_folder, outbox_folder
from animad.daemon.queue import CorruptDatabase, Queue
from animad.daemon.states import Phase, Status
from animad.fsutil import write_atomic
from animad.intake.check import check_folder
from animad.intake.jobfiles import write_job_files
from animad.layout import JobPaths, safe_name
from animad.outcomes import Exit

log = logging.getLogger("animad.daemon")


CANCELLED = "cancelled.txt"  # in the job folder: the user cancelled it (a rebuilt queue keeps it cancelled)


def mark_cancelled(row: dict) -> None:
    """Leave cancelled.txt in the row's job folder (if it has one that exists; never creates the folder)."""
    if not row.get("job_dir") or not os.path.isdir(row["job_dir"]):
        return
    text = (f"job {row['id']} was cancelled with `animad cancel` at {time.strftime('%Y-%m-%d %H:%M:%S')}; "
            f"`animad retry {row['id']}` continues it from its last saved state.\n")
    write_atomic(Path(row["job_dir"]) / CANCELLED, text.encode(), make_parents=False)


def clear_cancelled(job_dir: Path) -> None:
    (Path(job_dir) / CANCELLED).unlink(missing_ok=True)


def repair_database(queue: Queue) -> None:
    """quick_check the queue; move a damaged file aside and start a new one, or exit NEEDS_PERSON."""
    try:
        queue.check()
        return
    except CorruptDatabase as error:
        damage = error
    queue.disconnect()
    aside = queue.path.with_name(f"{queue.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        for suffix in ("", "-wal", "-shm"):  # the journal files belong to the damaged file, not the new one
            part = Path(f"{queue.path}{suffix}")
            if part.exists():
                os.rename(part, f"{aside}{suffix}")
        queue.check()
    except (OSError, sqlite3.Error, CorruptDatabase) as error:
        queue.disconnect()
        log.critical("%s; it could not be repaired automatically (%s). Move the damaged file out of %s by hand "
                     "(keep it), then start animad again: it rebuilds the queue from the job folders.",
                     damage, error, queue.path.parent)
        raise SystemExit(Exit.NEEDS_PERSON) from None
    log.error("%s: the queue database was damaged (%s); it is kept as %s and a new queue is rebuilt from the "
              "job folders", queue.path, damage.problem, aside)


def adopt_job_folders(daemon: Daemon, queue: Queue) -> list[int]:
    """Register every job folder that has no row; return their ids."""
    jobs = daemon.dir("state") / "jobs"
    if not jobs.is_dir():
        return []
    rows = queue.all()
    known_dirs = {r["job_dir"] for r in rows if r["job_dir"]}
    known_ids = {r["id"] for r in rows}
    known_dirs |= {str(job_folder(daemon, r["id"], r["name"])) for r in rows if not r["job_dir"]}
    adopted = []
    for folder in sorted(jobs.iterdir(), key=lambda p: (folder_id(p) or 0, p.name)):
        job_id = folder_id(folder)
        if job_id is None or not folder.is_dir() or str(folder) in known_dirs:
            continue
        fields = unfinished_accept(folder)
        if fields is None and not (folder / "dataset").is_dir():
            continue  # nothing was frozen here (a kill before the move): the dataset is still in the inbox
        fields = fields or folder_state(daemon, queue, folder)
        if job_id in known_ids:  # only an older, id-reusing database can get here: keep the folder, new id
            job_id = max(known_ids | {job_id}) + 1
        fields.setdefault("error", f"re-registered from its job folder {folder} after the queue database was lost")
        queue.insert(job_id, **fields, job_dir=str(folder))
        known_ids.add(job_id)
        adopted.append(job_id)
        log.warning("job %d (%s) had no row in %s: re-registered from %s as %s%s", job_id, fields["name"],
                    queue.path, folder, fields["status"], f" ({fields['phase']})" if fields["status"] ==
                    Status.QUEUED else "")
    return adopted


def folder_state(daemon: Daemon, queue: Queue, folder: Path) -> dict:
    """The row a job folder stands for, from what is on disk."""
    paths = JobPaths(folder)
    known = recorded_identity(folder)
    name = known["name"]
    fields = {"name": name, "source": known["source"], "priority": 0,
              **({"created": known["created"]} if known["created"] is not None else {})}
    if not paths.resolved.is_file():  # killed between the move and the job files: check it again
        result = check_folder(paths.root / "dataset", daemon, work_dir=daemon.dir("state"))
        if not result.ok:
            return {**fields, "status": Status.FAILED, "phase": Phase.TRAIN, "error": result.report()}
        write_job_files(paths, result, name=name, source=known["source"])  # the job's name, not "dataset"
    ended = paths.ended_at()  # when training ended (None: it has not)
    outbox = recorded_outbox(daemon, queue, known, ended is not None)
    if ended is not None:
        if package_written(outbox, ended):
            return {**fields, "status": Status.DONE, "phase": Phase.SELECT, "outbox_dir": str(outbox)}
    if (paths.root / CANCELLED).is_file():  # after done: a cancel that came too late to stop it changes nothing
        phase = Phase.SELECT if ended is not None else Phase.TRAIN
        return {**fields, "status": Status.CANCELLED, "phase": phase, "finished": time.time(),
                "outbox_dir": str(outbox),
                "error": f"cancelled (as {paths.root / CANCELLED} records); re-registered after the queue "
                         "database was lost"}
    if ended is not None:
        return {**fields, "status": Status.QUEUED, "phase": Phase.SELECT, "resume_first": 1,
                "outbox_dir": str(outbox)}
    resume = 1 if paths.resume_state.is_file() else 0
    return {**fields, "status": Status.QUEUED, "phase": Phase.TRAIN, "resume_first": resume,
            "outbox_dir": str(outbox)}


# -- the job's identity, as its folder records it (kept apart from the state above) -----------------

def unfinished_accept(folder: Path) -> dict | None:
    """The row of a job folder whose accept a kill cut (accept.json short of `done`): `accepting`, so
    that finish_accepting, which runs next, finishes or rolls back its recorded phase (a half-removed
    inbox folder is removed, not taken again), as if the database had never been lost. None otherwise."""
    record = AcceptRecord.read(folder)
    if record is None or record.phase == DONE:
        return None
    known = recorded_identity(folder)
    return {"name": known["name"], "source": known["source"], "priority": 0, "status": Status.ACCEPTING,
            "phase": Phase.TRAIN, "outbox_dir": known["outbox_dir"],
            **({"created": known["created"]} if known["created"] is not None else {})}


def recorded_identity(folder: Path) -> dict:
    """name, source, created (epoch seconds) and outbox_dir of a job folder, as recorded when it was
    accepted: accept.json (the queue row's own values), else job.json, else the folder's name.

    Never the name of a folder inside the job: <job>/dataset is checked again after a kill, and its
    folder name is not the job's.
    """
    record = AcceptRecord.read(folder)
    meta = JobPaths(folder).read_meta()
    name = (record and record.get("name")) or meta.get("name") or folder.name.split("-", 1)[1]
    created = record.get("created") if record else None
    if created is None and meta.get("created"):
        try:
            created = dt.datetime.fromisoformat(meta["created"]).timestamp()
        except (TypeError, ValueError):
            created = None
    return {"name": name, "source": (record and record.get("source")) or meta.get("source"),
            "created": created, "outbox_dir": record.get("outbox_dir") if record else None}


def recorded_outbox(daemon: Daemon, queue: Queue, known: dict, finished: bool) -> Path:
    """The job's review package folder: the one it was given when accepted (outbox/<name>-2 stays -2).
    A folder from before accept.json: outbox/<name> if it finished and a package is there (its own,
    most likely), else a free one."""
    if known["outbox_dir"]:
        return Path(known["outbox_dir"])
    outbox = daemon.dir("outbox") / safe_name(known["name"])
    if finished and (outbox / "index.html").is_file():
        return outbox
    return outbox_folder(daemon, queue, known["name"])


def package_written(outbox: Path, ended: float) -> bool:
    """Whether the review package in outbox was written after training ended (selection ran)."""
    index = Path(outbox) / "index.html"
    try:
        return index.stat().st_mtime >= ended
    except OSError:
        return False
