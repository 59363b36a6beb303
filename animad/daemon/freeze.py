"""Accept or reject a settled inbox folder, and freeze accepted ones into the daemon's job folder.

The move is crash-safe: the job row is written first (status `accepting`), then `<job>/accept.json`
(daemon/accept_record.py), which records each step durably before the next begins. The dataset is
renamed into `<state>/jobs/<id>-<name>/dataset` (same file system: one atomic rename), or (another
file system) a manifest of the inbox folder (paths, sizes, sha256, mtimes, inodes) is written into
the job folder, the folder is copied to a hidden partial folder, the copy is checked against the
manifest (`verified`), renamed into place, and the inbox folder is removed (`removing-inbox`) only if
it is still the very folder the manifest describes. `finish_accepting` reads the recorded phase
after a kill and finishes or rolls back exactly that step: a half-removed inbox folder of a verified
copy is removed, never taken as a new job; an unverified copy is dropped and the inbox folder taken
again. Job ids start above every job folder on disk, so a reset database never reuses a folder name.

A freeze cuts every tie to the inbox. A folder any process still holds a file of open for writing
(seen in /proc/*/fd where we may look) is not taken, and after the move the frozen folder must be
exactly what settled (same paths, sizes, mtimes and inodes); if it is not, it is put back into the
inbox and taken only after it settles again. A paused copier therefore never appends into a job.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from pathlib import Path

from animad.config.daemon import Daemon
from animad.daemon import kill_points
from animad.daemon.accept_record import ACCEPT, COPYING, DONE, FROZEN, REMOVING_INBOX, VERIFIED, AcceptRecord
from animad.daemon.queue import Queue
from animad.daemon.states import Status
from animad.fsutil import file_sha256, remove_stale_temp_files, write_atomic
from animad.layout import JobPaths, safe_name
from animad.intake.jobfiles import write_job_files
from animad.intake.check import check_folder, job_name

log = logging.getLogger("animad.inbox")


def job_folder(daemon: Daemon, job_id: int, name: str) -> Path:
    return daemon.dir("state") / "jobs" / f"{job_id}-{safe_name(name)}"


def folder_id(folder: Path) -> int | None:
    """The job id a job folder's name starts with (`<id>-<name>`), or None for anything else."""
    head = folder.name.split("-", 1)[0]
    return int(head) if head.isdigit() and "-" in folder.name else None


def highest_folder_id(daemon: Daemon) -> int:
    jobs = daemon.dir("state") / "jobs"
    ids = [folder_id(p) for p in jobs.iterdir()] if jobs.is_dir() else []
    return max([i for i in ids if i is not None], default=0)


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
    # What the folder held when it settled: the freeze must take exactly this (see writers_into).
    settled = folder_manifest(folder, hashes=False)
    refuse_if_written(folder)
    result = check_folder(folder, daemon, work_dir=daemon.dir("state"))
    errors_file = folder / "ERRORS.txt"
    if not result.ok:
        # make_parents=False: a folder removed while it was checked is not brought back as a ghost.
        write_atomic(errors_file, result.report().encode(), make_parents=False)
        log.warning("rejected %s: %d problem(s); see %s", folder.name, len(result.problems.errors), errors_file)
        return None
    # Checking a big folder takes a while: one written meanwhile is not taken (no row, no report).
    refuse_if_written(folder)
    if not matches_manifest(folder, settled, copy=False):
        raise FolderBusy(f"{folder} changed while it was checked; it stays in the inbox and is taken once it "
                         "has settled again")
    errors_file.unlink(missing_ok=True)  # ours, from an earlier rejection
    name = job_name(folder, result.config)
    # Ids start above every job folder on disk too: after a database reset a new job never lands in
    # (or is mistaken for) an old job's folder.
    job_id = queue.add(name, str(folder), priority=getattr(result.config, "priority", 0),
                       min_id=highest_folder_id(daemon) + 1)
    job_dir = job_folder(daemon, job_id, name)
    made = False
    try:
        if job_dir.exists():
            raise OSError(f"{job_dir} already exists; a job folder is never reused")
        queue.update(job_id, job_dir=str(job_dir), outbox_dir=str(outbox_folder(daemon, queue, name)))
        job_dir.mkdir(parents=True)  # fails if it appeared meanwhile: never into another job's folder
        made = True
        record = AcceptRecord.start(job_dir, queue.get(job_id))
        move_dataset(folder, job_dir / "dataset", settled, record)
        kill_points.reached("accept-frozen")
        write_job_files(JobPaths(job_dir), result, name=name, source=str(folder))
        record.advance(DONE)
    except BaseException as error:
        # Never leave the row `accepting`: either the inbox folder is untouched (cancelled; it is taken
        # again once fixed) or the dataset is safe in the job folder (failed, with where it is).
        if (job_dir / "dataset").is_dir():
            queue.update(job_id, status=Status.FAILED, error=f"accepting stopped after the dataset was frozen "
                         f"into {job_dir / 'dataset'} ({error}); fix the cause and restart the daemon")
        elif isinstance(error, FolderBusy):
            roll_back(queue, queue.get(job_id), job_dir if made else None,
                      f"{error}; this row is left behind (the folder becomes a new job when it is taken)")
        else:
            roll_back(queue, queue.get(job_id), job_dir if made else None,
                      f"could not accept {folder} ({error}); the inbox folder is kept as it was")
        raise
    queue.update(job_id, status=Status.QUEUED)
    log.info("queued job %d (%s): %d images", job_id, name, len(result.dataset.items))
    return job_id


def roll_back(queue: Queue, row: dict, job_dir: Path | None, why: str) -> None:
    """Undo an accept that froze nothing: the inbox folder is still the job, so the row is cancelled.

    The row then holds neither a job folder, an outbox folder nor a name (see queue.HOLDS_NAME): the
    same folder, taken again, is a new job that gets outbox/<name>, not <name>-2. Only our own files
    are removed from the job folder (job_dir: None when it is not ours to touch), and the folder only
    if that empties it.
    """
    if job_dir is not None:
        partial = job_dir / ".dataset.partial"
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial, ignore_errors=True)
        for ours in (ACCEPT, MANIFEST):
            with contextlib.suppress(OSError):
                (job_dir / ours).unlink(missing_ok=True)
        remove_stale_temp_files(job_dir)
        with contextlib.suppress(OSError):
            job_dir.rmdir()
    queue.update(row["id"], status=Status.CANCELLED, job_dir=None, outbox_dir=None, error=why)


MANIFEST = ".accept-manifest.json"  # in the job folder: what the inbox folder held when the copy began


def folder_manifest(source: Path, hashes: bool = True) -> dict:
    """Every file under source by relative path: size, mtime, inode and (with hashes) sha256."""
    files = {}
    for root, _, names in os.walk(source):
        for name in names:
            path = Path(root) / name
            if name == "ERRORS.txt" and Path(root) == Path(source):
                continue  # ours (an earlier rejection), removed on acceptance: not part of the dataset
            st = os.lstat(path)
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
            if hashes and not path.is_symlink():
                entry["sha256"] = file_sha256(path)
            files[str(path.relative_to(source))] = entry
    return {"source": str(source), "files": files}


def matches_manifest(folder: Path, manifest: dict, *, copy: bool) -> bool:
    """The copy (copy=True: same bytes) or the source itself (copy=False: same stat, untouched) of a manifest."""
    try:
        now = folder_manifest(folder, hashes=copy)
    except OSError:
        return False
    if set(now["files"]) != set(manifest["files"]):
        return False
    for rel, entry in manifest["files"].items():
        seen = now["files"][rel]
        if seen["size"] != entry["size"]:
            return False
        if copy and entry.get("sha256") != seen.get("sha256"):
            return False
        if not copy and (seen["mtime_ns"], seen["inode"]) != (entry["mtime_ns"], entry["inode"]):
            return False
    return True


class FolderBusy(OSError):
    """The folder is still being written; it stays in the inbox and is taken after it settles again."""


def writers_into(folder: Path) -> list[str]:
    """'pid N: path' for every file under folder that a process holds open for writing (/proc, where allowed)."""
    inside, found = str(Path(folder).resolve()) + os.sep, []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue  # another user's process, or gone
        for fd in fds:
            try:
                target = os.readlink(fd)
                if not target.startswith(inside):
                    continue
                flags = int((fd_dir.parent / "fdinfo" / fd.name).read_text().split("flags:")[1].split()[0], 8)
            except (OSError, IndexError, ValueError):
                continue
            if flags & (os.O_WRONLY | os.O_RDWR):
                found.append(f"pid {fd_dir.parent.name}: {target}")
    return found


def refuse_if_written(folder: Path) -> None:
    # A writer paused longer than settle_seconds looks settled, but its open handle would append into
    # the job's frozen copy after the move: such a folder is not taken until the handle is closed.
    writers = writers_into(folder)
    if writers:
        raise FolderBusy(f"{folder} is still open for writing ({'; '.join(writers[:3])}); the daemon looks "
                         "again after each settle and takes it once the program has closed it")


def move_dataset(source: Path, target: Path, settled: dict | None = None, record: AcceptRecord | None = None) -> None:
    """Freeze source into target; with settled (a stat manifest taken when it settled), only that very content.

    With record (the job's accept.json) every step is recorded before the next begins, and
    `finish_accepting` picks up from the step a kill interrupted.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if settled is not None:
        refuse_if_written(source)
    try:
        if kill_points.force_copy():
            raise OSError(errno.EXDEV, "copying as across file systems (ANIMAD_ACCEPT_COPY=1)")
        os.rename(source, target)  # atomic: the folder is either still in the inbox or in the job
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    else:
        if settled is not None and not matches_manifest(target, settled, copy=False):
            # Written between the settle and the move: put it back, as it is, for another settle.
            os.rename(target, source)
            raise FolderBusy(f"{source} changed after it settled; it stays in the inbox and is taken once "
                             "it has settled again")
        kill_points.reached("accept-placed")
        if record is not None:
            record.advance(FROZEN)
        return
    partial = target.parent / ".dataset.partial"
    if partial.exists():
        shutil.rmtree(partial)
    manifest_file = target.parent / MANIFEST
    manifest = folder_manifest(source)
    manifest["source_inode"] = os.stat(source).st_ino  # the very folder: a new one of the same name is not it
    if settled is not None and not same_files(manifest, settled):
        raise FolderBusy(f"{source} changed after it settled; it stays in the inbox and is taken once it has "
                         "settled again")
    write_atomic(manifest_file, json.dumps(manifest).encode())
    shutil.copytree(source, partial, symlinks=True, copy_function=copy_one)
    if not matches_manifest(partial, manifest, copy=True):
        raise OSError(f"the copy of {source} in {partial} does not match it; the inbox folder is kept")
    if record is not None:
        record.advance(VERIFIED)
    kill_points.reached("accept-verified")
    os.rename(partial, target)
    kill_points.reached("accept-placed")
    remove_verified_source(source, target, manifest, record)


def copy_one(source: str, target: str) -> None:
    shutil.copy2(source, target)
    kill_points.reached("accept-copy-file")


def same_files(a: dict, b: dict) -> bool:
    """The same paths with the same size, mtime and inode (hashes aside)."""
    keys = ("size", "mtime_ns", "inode")
    return ({rel: [e[k] for k in keys] for rel, e in a["files"].items()}
            == {rel: [e[k] for k in keys] for rel, e in b["files"].items()})


def remove_verified_source(source: Path, dataset: Path, manifest: dict, record: AcceptRecord | None = None) -> None:
    """Remove the inbox folder only if it is the very folder the verified copy was made of, untouched since."""
    if (manifest.get("source") != str(source) or not same_folder(source, manifest)
            or not matches_manifest(source, manifest, copy=False)):
        log.warning("%s changed while it was copied (or is a new folder of the same name); it is kept. The "
                    "copy taken before the change is in %s", source, dataset)
    elif not matches_manifest(dataset, manifest, copy=True):
        log.warning("%s does not match the manifest of %s; the inbox folder is kept", dataset, source)
    else:
        if record is not None:
            record.advance(REMOVING_INBOX)  # from here on, what is left of source is removed at a restart
        finish_off(source, record.get("job") if record is not None else None)
    if record is not None:
        record.advance(FROZEN)


def same_folder(source: Path, manifest: dict) -> bool:
    """Whether source is the folder the manifest was taken of (its inode; manifests before it: assumed)."""
    try:
        return manifest.get("source_inode") in (None, os.stat(source).st_ino)
    except OSError:
        return False


def remove_tree(folder: Path) -> None:
    """shutil.rmtree, file by file (a kill point after each: the chaos test cuts a removal half way).

    Through directory file descriptors, as rmtree does: a subfolder swapped for a link meanwhile is
    removed as a link, never followed out of the folder.
    """
    for _, dirs, files, dir_fd in os.fwalk(folder, topdown=False):
        for name in files:
            os.unlink(name, dir_fd=dir_fd)
            kill_points.reached("accept-remove-file")
        for name in dirs:
            try:
                os.rmdir(name, dir_fd=dir_fd)
            except NotADirectoryError:  # a link to a folder: the link goes, what it points at stays
                os.unlink(name, dir_fd=dir_fd)
    os.rmdir(folder)


def finish_off(source: Path, job_id: int | None) -> None:
    """Remove an accepted inbox folder (its verified copy is the job's dataset). If some of it cannot be
    removed (a read-only subfolder, say), what is left is renamed to a hidden `.<name>.accepted-as-job-<id>`
    in the inbox, which the inbox never takes: the job goes on, and the rest is never trained again."""
    try:
        remove_tree(source)
    except OSError as error:
        if job_id is None:
            raise
        aside = source.with_name(f".{source.name}.accepted-as-job-{job_id}")
        os.rename(source, aside)  # if this fails too, the accept stops: failed, saying why
        log.warning("%s could not be removed after it was accepted as job %d (%s); what is left of it is kept as "
                    "%s, hidden from the inbox. Its verified copy is the job's dataset: delete it when you like",
                    source, job_id, error.strerror or error, aside)


def left_of(source: Path, manifest: dict) -> bool:
    """Whether source is what a removal left of the manifest's folder: that very folder, every file in it
    one of the manifest's (same size, mtime and inode). Files may be missing (removed), none added."""
    if not same_folder(source, manifest):
        return False
    try:
        now = folder_manifest(source, hashes=False)
    except OSError:
        return False
    keys = ("size", "mtime_ns", "inode")
    return all(rel in manifest["files"] and [manifest["files"][rel][k] for k in keys] == [entry[k] for k in keys]
               for rel, entry in now["files"].items())


def finish_accepting(daemon: Daemon, queue: Queue) -> None:
    """After a crash: complete (or roll back) every job that was being accepted, from the phase its
    accept.json records (daemon/accept_record.py).

    A row that failed after its dataset was frozen but before its job files were written (a full
    disk, say) is completed the same way: its dataset is in the job folder and nowhere else.
    """
    stopped = [r for r in queue.by_status(Status.FAILED) if r["job_dir"] and (Path(r["job_dir"]) / "dataset").is_dir()
               and not JobPaths(Path(r["job_dir"])).resolved.is_file()]
    for row in queue.by_status(Status.ACCEPTING) + stopped:
        try:
            finish_one(daemon, queue, row)
        except OSError as error:  # a full disk, permissions: the job waits, the daemon goes on
            log.error("could not finish accepting job %d (%s): %s; it is tried again when the daemon restarts",
                      row["id"], row["name"], error)
            queue.update(row["id"], status=Status.FAILED, error=f"accepting could not be finished ({error}); fix "
                         "the cause and restart the daemon (animad run, or restart the service)")


def finish_one(daemon: Daemon, queue: Queue, row: dict) -> None:
    source = Path(row["source"]) if row["source"] else None
    job_dir = Path(row["job_dir"]) if row["job_dir"] else job_folder(daemon, row["id"], row["name"])
    dataset, partial = job_dir / "dataset", job_dir / ".dataset.partial"
    record = AcceptRecord.read(job_dir)
    phase = record.phase if record is not None else None
    manifest = read_manifest(job_dir)
    if phase in (None, COPYING):
        if partial.exists():
            shutil.rmtree(partial)  # an unverified copy of ours; the source is still in the inbox
        if not dataset.is_dir():
            # Nothing moved yet: forget the row; the folder is still in the inbox and will be taken again.
            roll_back(queue, row, job_dir if record is not None else None,
                      "accepting was interrupted; the inbox folder is handled again as a new job")
            return
        if phase is None and source is not None and source.is_dir() and manifest is not None:
            # Accepted before accept.json was kept: the inbox folder goes only if it is still that
            # very folder (a new drop of the same name is a new job).
            remove_verified_source(source, dataset, manifest)
    elif phase == VERIFIED:
        if partial.is_dir() and not dataset.exists():
            os.rename(partial, dataset)  # verified byte for byte before the record said so
        if source is not None and source.is_dir() and manifest is not None:
            remove_verified_source(source, dataset, manifest, record)
    elif phase == REMOVING_INBOX:
        if source is not None and source.exists():
            if manifest is not None and left_of(source, manifest):
                log.info("%s was half removed when the daemon stopped; its verified copy is job %d's dataset, so "
                         "the rest is removed", source, row["id"])
                finish_off(source, row["id"])
            else:
                log.warning("%s is not what was left of the folder job %d was copied from (changed or made anew); "
                            "it is kept", source, row["id"])
    if record is not None and record.phase != DONE:
        record.advance(FROZEN)
    result = check_folder(dataset, daemon, work_dir=daemon.dir("state"))
    if not result.ok:
        queue.update(row["id"], status=Status.FAILED, error=result.report())
        return
    # The job's name and source are the row's: never the name of the folder checked here (`dataset`).
    write_job_files(JobPaths(job_dir), result, name=row["name"], source=row["source"])
    if record is not None:
        record.advance(DONE)
    queue.update(row["id"], status=Status.QUEUED, job_dir=str(job_dir))


def read_manifest(job_dir: Path) -> dict | None:
    try:
        return json.loads((job_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
