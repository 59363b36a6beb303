"""Chained runs: `network.init_from: job:<name>` waits in the queue for that job, then continues its LoRA.

The guide's four-run outfit LoRA is four folders dropped at once: run 1 trains from zero, runs 2-4
say `init_from: job:<run 1's name>` (or chain 2 -> 3 -> 4). A waiting job stays `queued` with
progress {"phase": "waiting", "waiting_for": <name>, "waiting": <the sentence status shows>}; other
jobs run past it. Once the named job is done (trained and selected) its chosen epoch file is COPIED
into this job's folder (JobPaths.init_lora, with JobPaths.init_record saying where it came from),
before the first training step: from then on nothing outside the folder matters, so a resume, a
retention run deleting the other job's epochs or a rebuilt database never loses the start.

Which epoch, by default: the shortlist's lowest-loss epoch. It is the epoch the review page puts
first (rendered at 1.0 and 0.8), retention always keeps its file, and it is computed here from the
job's own epochs.jsonl by the same analysis select/ runs, so it does not depend on the outbox the
user may have moved. The last epoch (what the guide's sd-scripts runs continue from) is past the
floor when the run stopped late; ask for it with job:<name>@last, or for any epoch with
job:<name>@<epoch> (the pick a user makes after reviewing run 1). No shortlist (no curve): the last
epoch whose file exists.

A named job that failed or was cancelled, a name no job has, or a cycle fails the waiting job with
a reason that says what to do; it never blocks the queue. Each stage is its own job, so each gets
its own review package: a stage's LoRA is a file a user may well keep on its own, with its own curve
and floor, and one stage failing or being retried never rewrites another stage's package.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from pathlib import Path

import yaml

from animad.config.job import JobReference, load_resolved, parse_job_reference
from animad.config.problems import ConfigError, Problems
from animad.daemon.states import RUNNABLE, Status
from animad.errors import UserError, is_disk_full
from animad.fsutil import atomic_file, file_sha256, write_atomic
from animad.layout import JobPaths, read_epochs_log
from animad.safe_text import safe

log = logging.getLogger("animad.daemon")

READY, WAITING, FAILED = "ready", "waiting", "failed"
_references: dict[str, JobReference | None] = {}  # job folder -> its init_from job (frozen: read once)


def reference_of(row: dict) -> JobReference | None:
    """The job a row's frozen config continues from, or None (a file path, no init_from, no config yet)."""
    job_dir = row.get("job_dir")
    if not job_dir:
        return None
    if job_dir not in _references:
        try:
            data = yaml.safe_load(JobPaths(Path(job_dir)).resolved.read_text(encoding="utf-8")) or {}
            text = (data.get("network") or {}).get("init_from")
            reference = parse_job_reference(text) if isinstance(text, str) else None
        except (OSError, ValueError, yaml.YAMLError, AttributeError):
            return None  # unreadable now: the job's own start reports it; look again next time
        _references[job_dir] = reference
    return _references[job_dir]


def started(row: dict) -> bool:
    """The starting LoRA is already copied in (and recorded): nothing outside the job folder is needed."""
    paths = JobPaths(Path(row["job_dir"]))
    return paths.init_lora.is_file() and paths.init_record.is_file()


def prepare(queue, row: dict) -> str:
    """READY (no chain, or the start is copied in now or before), WAITING (marked in the row's
    progress) or FAILED (the row is failed with the reason)."""
    reference = reference_of(row)
    if reference is None or started(row):
        return READY
    state, text = look_up(queue, row, reference)
    if state == WAITING:
        progress = {"phase": "waiting", "waiting_for": reference.name, "waiting": text}
        if row.get("progress") != progress:
            queue.update(row["id"], progress=progress)
            log.info("job %d (%s): %s", row["id"], safe(row["name"]), safe(text))
        return WAITING
    if state == FAILED:
        fail(queue, row, text)
        return FAILED
    try:
        copy_start(row, reference, text)
    except UserError as error:
        fail(queue, row, str(error))
        return FAILED
    except OSError as error:
        if is_disk_full(error):  # passed over until there is room; the jobs behind it go on
            log.warning("job %d (%s): no room to copy its starting LoRA (%s); trying again later", row["id"],
                        safe(row["name"]), error)
            return WAITING
        # Anything else would fail every try: fail this job, never the whole queue behind it.
        fail(queue, row, f"cannot copy job:{reference.name}'s LoRA into {row['job_dir']} ({error}) -> fix that, "
                         f"then run `animad retry {row['id']}`")
        return FAILED
    queue.update(row["id"], progress=None)
    return READY


def fail(queue, row: dict, reason: str) -> None:
    # The reason first: `animad status` shows an error's first 80 characters; the file comes last.
    error = f"network.init_from: {reason} (set in {JobPaths(Path(row['job_dir'])).resolved})"
    queue.update(row["id"], status=Status.FAILED, error=error, progress=None,
                 finished=dt.datetime.now().timestamp())
    log.error("job %d (%s) cannot start: %s", row["id"], safe(row["name"]), safe(reason))


def look_up(queue, row: dict, reference: JobReference) -> tuple[str, str]:
    """(WAITING, why) / (FAILED, reason with what to do) / (READY, the named job's folder)."""
    me, name = row["id"], reference.name
    source = named_job(queue, name, me)
    retry = f"animad retry {me}"
    if source is None:
        pending = inbox_pending(row)
        if pending:
            return WAITING, (f"waiting for a job named {name}: none is queued yet, and the inbox still has "
                             f"{', '.join(pending[:3])} to accept")
        return FAILED, (f"no job named {name} is in the queue -> drop its folder into the inbox (its job name is "
                        f"its folder name or its job.yaml 'name:'), then run `{retry}`; or drop this folder again "
                        "with the right name after 'job:'")
    if cycle_back_to(queue, source, me):
        return FAILED, (f"job:{name} leads back to this job (each waits for the other) -> drop one of them again "
                        "with init_from set to a file or to a job that does not wait for it")
    status, their = source["status"], source["id"]
    if status == Status.DONE:
        return READY, source["job_dir"]
    if status == Status.FAILED:
        first = (source["error"] or "see its log").splitlines()[0]
        return FAILED, (f"job {their} ({name}), which this job continues, failed: {first} -> fix it and run "
                        f"`animad retry {their}`; once it is done, `{retry}` continues from its LoRA")
    if status == Status.CANCELLED:
        return FAILED, (f"job {their} ({name}), which this job continues, was cancelled -> drop its folder again "
                        f"(or `animad retry {their}`), then run `{retry}`")
    held = f"; it is held: `animad resume {their}`" if source["held"] else ""
    return WAITING, f"waiting for {name} (job {their}, {status}) to finish training and selection{held}"


def named_job(queue, name: str, me: int) -> dict | None:
    """The job `name` means: the newest one of that name queued before this one, else the first after it
    (folders dropped together are accepted in any order)."""
    rows = [r for r in queue.by_name(name) if r["id"] != me]
    before = [r for r in rows if r["id"] < me]
    if before:
        return max(before, key=lambda r: r["id"])
    return min(rows, key=lambda r: r["id"]) if rows else None


def cycle_back_to(queue, row: dict, me: int) -> bool:
    """Whether following the jobs that are still waiting from `row` comes back to job `me`."""
    seen = set()
    while row is not None and row["id"] not in seen and row["status"] in (*RUNNABLE, Status.ACCEPTING):
        if row["id"] == me:
            return True
        seen.add(row["id"])
        reference = reference_of(row)
        if reference is None or started(row):
            return False
        row = named_job(queue, reference.name, row["id"])
    return row is not None and row["id"] == me


def inbox_pending(row: dict) -> list[str]:
    """Inbox folders that may still become the named job: holding a job.yaml, not rejected (ERRORS.txt)."""
    if not row.get("source"):
        return []  # a row rebuilt from its job folder: where it came from is not known
    inbox = Path(row["source"]).parent
    try:
        entries = sorted(inbox.iterdir())
    except OSError:
        return []
    return [e.name for e in entries if not e.name.startswith(".") and e.is_dir() and not e.is_symlink()
            and (e / "job.yaml").is_file() and not (e / "ERRORS.txt").exists()]


# -- the copy ------------------------------------------------------------------------------------

def choose_epoch(source: JobPaths, reference: JobReference) -> tuple[int, Path, str]:
    """(epoch, its file, why) in the named job; UserError when that file is not there."""
    try:
        config = load_resolved(source.resolved)
    except ConfigError as error:
        raise UserError(f"cannot read {source.resolved} of job {reference.name}: {error}") from None
    records = read_epochs_log(source.epochs_log)
    on_disk = [r["epoch"] for r in records if source.epoch_file(config.name, r["epoch"]).is_file()]
    listed = ", ".join(map(str, on_disk)) or "none"
    if reference.epoch is not None:
        if reference.epoch not in on_disk:
            raise UserError(f"job {reference.name} has no file for epoch {reference.epoch} (epoch files kept: "
                            f"{listed}; keep_epochs: shortlist removes the others) -> drop this folder again "
                            "with one of those epochs after '@', or with no '@' for its default pick")
        return reference.epoch, source.epoch_file(config.name, reference.epoch), "asked for"
    if not on_disk:
        raise UserError(f"job {reference.name} has no epoch file left in {source.epochs_dir} -> drop this folder "
                        "again with init_from set to a .safetensors file")
    if not reference.last:
        picked = shortlist_lowest(config, records, set(on_disk))
        if picked is not None:
            return picked, source.epoch_file(config.name, picked), "its shortlist's lowest-loss epoch"
    if reference.last and on_disk[-1] != records[-1]["epoch"]:
        raise UserError(f"job {reference.name}'s last epoch ({records[-1]['epoch']}) has no file any more "
                        f"(kept: {listed}) -> drop this folder again with one of those after '@'")
    return on_disk[-1], source.epoch_file(config.name, on_disk[-1]), "its last epoch"


def shortlist_lowest(config, records: list[dict], on_disk: set[int]) -> int | None:
    """The shortlisted epoch with the lowest loss whose file is there, by select/'s own analysis."""
    from animad.select.shortlist import analyze_curve  # numpy: only when a chain resolves
    from animad.train.floor import cooldown_epochs, epoch_curve

    epochs, losses, _ = epoch_curve(records)
    sel = config.selection
    analysis = analyze_curve(epochs, losses, patience=sel.patience, shortlist_size=sel.shortlist_size,
                             min_epoch=sel.min_epoch, cooldown_epochs=cooldown_epochs(records))
    loss = dict(zip(analysis.epochs, analysis.losses))
    kept = [e for e in analysis.shortlist if e in on_disk]
    return min(kept, key=lambda e: (loss.get(e, float("inf")), e)) if kept else None


def copy_start(row: dict, reference: JobReference, source_dir: str) -> None:
    """Copy the named job's chosen epoch file into this job's folder (verified) and record where it came from."""
    paths, source = JobPaths(Path(row["job_dir"])), JobPaths(Path(source_dir))
    epoch, file, why = choose_epoch(source, reference)
    digest = file_sha256(file)
    with atomic_file(paths.init_lora) as tmp:
        shutil.copyfile(file, tmp)
        if file_sha256(tmp) != digest:  # the other job's file changed under us: take it again next time
            raise OSError(f"{file} changed while it was copied to {paths.init_lora}")
    check_text_encoder(paths, reference)
    record = {"init_from": f"job:{reference.name}", "job": reference.name, "job_dir": str(source.root),
              "epoch": epoch, "why": why, "file": str(file), "sha256": digest,
              "bytes": paths.init_lora.stat().st_size, "copied": dt.datetime.now().astimezone().isoformat()}
    write_atomic(paths.init_record, (json.dumps(record, indent=2) + "\n").encode())
    log.info("job %d (%s) continues from %s epoch %d (%s), copied to %s", row["id"], safe(row["name"]),
             safe(reference.name), epoch, why, paths.init_lora)


def check_text_encoder(paths: JobPaths, reference: JobReference) -> None:
    """A continued LoRA with text-encoder modules needs the text encoder loaded: the check `animad check`
    runs on an init_from file, run here where the file first exists (it would fail after caching)."""
    from animad.intake.check import check_init_lora  # torch: only when a chain resolves
    from animad.intake.jobfiles import load_job_dataset

    try:
        config = load_resolved(paths.resolved)
    except ConfigError as error:
        raise UserError(str(error)) from None
    problems = Problems()
    check_init_lora(paths.init_lora, config, load_job_dataset(paths, config), paths.resolved, problems)
    if problems.errors:
        problem = problems.errors[0]
        paths.init_lora.unlink(missing_ok=True)  # ours, just copied: the next try copies it again
        raise UserError(f"job:{reference.name}'s LoRA: {problem.message} -> {problem.fix}")


def settle(queue) -> None:
    """Mark or fail every runnable job that continues another one (for status while another job runs)."""
    for row in queue.by_status(*RUNNABLE):
        if reference_of(row) is not None:
            prepare(queue, row)
