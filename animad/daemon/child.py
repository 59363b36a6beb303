"""One job phase in its own process (`animad job ...`, spawned by the daemon).

A crash, an OOM or a CUDA error here takes down this process only; the daemon records why and goes
on. SIGTERM/SIGINT only set a flag: training saves its state at the next step boundary and exits
with Exit.PAUSED (75).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from animad.config.daemon import find_config_path, load_daemon_config
from animad.daemon.progress import PhaseClock
from animad.daemon.queue import Queue
from animad.daemon.states import Outcome, Phase
from animad.errors import UserError
from animad.layout import JobPaths
from animad.logs import setup_logging
from animad.outcomes import Exit
from animad.select.run import select_job
from animad.signals import PARENT_PID, StopFlag, die_with_parent, parent_gone
from animad.train.run import train_job

log = logging.getLogger("animad.job")


class Reporter:
    """Progress into the job's row, at most every `every` seconds (SQLite is shared with the daemon).

    Reports are merged (PhaseClock), so a short eval or save phase never hides the epoch/step/loss/ETA
    numbers. A new phase is written at once: a long eval or a long caching run must not sit behind
    the last training step's numbers until its next report.
    """

    def __init__(self, queue, job_id: int, every: float = 2.0):
        self.queue, self.job_id, self.every = queue, job_id, every
        self.last = 0.0
        self.clock = PhaseClock()

    @property
    def state(self) -> dict:
        return self.clock.state

    def __call__(self, progress: dict) -> None:
        new_phase = self.clock.add(progress)
        now = time.monotonic()
        if new_phase or now - self.last >= self.every:
            self.last = now
            try:
                self.queue.heartbeat(self.job_id, dict(self.state))
            except Exception as error:  # noqa: BLE001 - a busy database must not stop training
                log.warning("could not record progress: %s", error)


def record_outcome(queue, job_id: int, report_fd: int | None, **fields) -> None:
    """Write the outcome to the queue, and the message to the daemon's pipe (which needs no disk)."""
    if report_fd is not None and fields.get("error"):
        try:
            os.write(report_fd, fields["error"].encode()[:16384])  # a pipe holds 64 KiB: never blocks
        except OSError:
            pass
    for attempt in range(3):
        try:
            queue.update(job_id, **fields)
            return
        except Exception as error:  # noqa: BLE001 - e.g. "database or disk is full"
            log.warning("could not record the outcome of job %d (%s)%s", job_id, error,
                        "; retrying" if attempt < 2 else "")
            if attempt < 2:
                time.sleep(1)


def run_job(job_dir: Path, db: Path, job_id: int, phase: str, report_fd: int | None, config: str | None) -> Exit:
    """Run one phase (train or select) of a queued job; the exit code tells the daemon how it ended."""
    die_with_parent()
    paths = JobPaths(Path(job_dir))
    setup_logging(paths.log, stream=sys.stdout)
    queue = Queue(Path(db))
    stop = StopFlag()
    stop.install()
    # Never KeyboardInterrupt here: every stop signal only asks for a save-and-stop (the daemon's hard
    # stop is SIGKILL). A daemon killed with -9 sends its children one SIGTERM per thread it loses
    # (PDEATHSIG follows the parent thread, and the daemon has several), so a second SIGTERM is no hurry.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: setattr(stop, "requested", True))
    if parent_gone():
        # The daemon died while this child was still starting, before its death could send us a
        # signal: stop as its SIGTERM would have asked (the next daemon resumes the job).
        log.info("job %d: the daemon that started it is gone; saving its state and stopping", job_id)
        stop.requested = True
    os.environ.pop(PARENT_PID, None)  # ours alone: a process this job starts has another parent
    row = queue.get(job_id)
    try:
        daemon = load_daemon_config(find_config_path(config))
        if Phase(phase) is Phase.TRAIN:
            log.info("job %d: training %s", job_id, paths.root)
            status = train_job(paths, daemon=daemon, should_stop=stop, on_progress=Reporter(queue, job_id),
                               recover=f"animad retry {job_id}")
            outcome = Outcome.PAUSED if status == Outcome.PAUSED else Outcome.FINISHED
        else:
            log.info("job %d: selection and previews", job_id)
            # A failed selection is redone by `animad retry N` (into the outbox); `animad select` on the
            # job folder would write a package into the job folder's review/ and leave the job failed.
            package = select_job(paths, daemon=daemon, outbox=Path(row["outbox_dir"]), should_stop=stop,
                                 on_progress=Reporter(queue, job_id), recover=f"animad retry {job_id}")
            if stop.requested:
                outcome = Outcome.PAUSED
            else:
                log.info("job %d: review package at %s", job_id, package / "index.html")
                outcome = Outcome.FINISHED
        queue.update(job_id, outcome=outcome)
        return outcome.exit
    except UserError as error:
        log.error("job %d failed: %s", job_id, error)
        record_outcome(queue, job_id, report_fd, outcome=Outcome.USER_ERROR, error=str(error))
        return Exit.USER_ERROR
    except Exception as error:  # noqa: BLE001 - the whole point: record any crash and exit
        detail = "".join(traceback.format_exception(error))
        log.error("job %d crashed", job_id, exc_info=error)  # the formatter keeps a traceback's lines
        message = f"{type(error).__name__}: {error}"
        if "out of memory" in str(error).lower():
            message += " (GPU out of memory: lower data.batch_size or resolution, or keep gradient checkpointing on)"
        record_outcome(queue, job_id, report_fd, outcome=Outcome.CRASH,
                       error=message + "\n" + "\n".join(detail.splitlines()[-12:]))
        return Exit.CRASH
