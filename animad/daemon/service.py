"""The daemon's main loop: inbox -> queue -> one job at a time (one per GPU with parallel_jobs), inside the window.

`tick(now)` is one look at everything, at the local time `now` (run() passes the real one; tests
pass any). Between ticks the loop sleeps on an event that watchdog (inbox activity) and the signal
handlers set, for a second or two at most, so control requests from the CLI (rows in SQLite) and
window edges are noticed within that. Nothing a job does can raise out of this loop.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import signal
import sqlite3
import threading
import time

from animad.config.daemon import Daemon
from animad.config.window import parse_windows
from animad.daemon.actions import gone_message, job_folder_gone
from animad.daemon.chain import named_job
from animad.daemon.dashboard.mailbox import Mailbox
from animad.daemon.dbhealth import DatabaseWatch
from animad.daemon.dashboard.server import start_dashboard
from animad.daemon.freeze import finish_accepting
from animad.daemon.inbox import Inbox
from animad.daemon.queue import Queue, pid_alive, queue_path
from animad.daemon.rebuild import adopt_job_folders, repair_database
from animad.daemon.runner import Runner
from animad.daemon.states import ACTIVE, Status
from animad.daemon.window import is_open, local_now, next_close, next_open
from animad.errors import UserError, is_disk_full
from animad.progress_report import Report

log = logging.getLogger("animad.daemon")


def disk_or_database_full(error: BaseException) -> bool:
    return is_disk_full(error) or isinstance(error, sqlite3.OperationalError) and "full" in str(error)


class Service:
    def __init__(self, daemon: Daemon, *, now_once: bool = False, exit_when_idle: bool = False):
        self.daemon = daemon
        # The daemon keeps its file open even when it is removed (dbwatch copies it back from there).
        self.queue = Queue(queue_path(daemon), follow_file=False)
        self.dbwatch = DatabaseWatch(self.queue)
        self.windows = parse_windows(daemon.config.windows)
        self.wake = threading.Event()
        self.inbox = Inbox(daemon, self.queue, self.wake)
        self.runner = Runner(daemon, self.queue)
        self.now_credit = 1 if now_once else 0  # `animad run --now`: one job may ignore the window
        self.exit_when_idle = exit_when_idle
        self.signals = 0
        self.window_open: bool | None = None  # as of the last tick; None before the first
        self.last_error: tuple[str, float] = ("", 0.0)
        self.lock_handle = None
        self.mailbox = Mailbox(self.wake)  # the dashboard's job actions, carried out by tick()
        self.dashboard = None

    # -- set-up and tear-down --------------------------------------------------------------------

    def open(self) -> None:
        """Take the lock, put the queue right after a crash, adopt a surviving child, watch the inbox."""
        state = self.daemon.dir("state")
        state.mkdir(parents=True, exist_ok=True)
        self.lock_handle = open(state / "daemon.lock", "a+")
        try:
            fcntl.flock(self.lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.lock_handle.close()
            raise UserError(f"another animad daemon is already running on {state}") from None
        # Under the lock, before anything reads the queue: a damaged file is set aside and the queue
        # rebuilt, and job folders without a row (an emptied or deleted database) are registered again.
        try:
            repair_database(self.queue)
        except SystemExit:  # needs a person: let the lock go with the message already logged
            self.lock_handle.close()
            self.lock_handle = None
            raise
        adopt_job_folders(self.daemon, self.queue)
        (state / "daemon.pid").write_text(f"{os.getpid()}\n")
        for job_id in self.queue.recover():
            log.info("job %d was interrupted (crash or power cut); it resumes from its last saved state", job_id)
        finish_accepting(self.daemon, self.queue)
        for row in self.queue.by_status(*ACTIVE):
            if pid_alive(row["pid"]):  # recover() left only the rows whose process still runs
                self.runner.adopt(row)
        self.dbwatch.arm()
        self.inbox.start()
        self.dashboard = start_dashboard(self.daemon, self.mailbox)
        log.info("animad daemon started: inbox %s, windows %s", self.inbox.folder,
                 ", ".join(self.daemon.config.windows))

    def close(self) -> None:
        if self.dashboard is not None:
            self.dashboard.stop()
            self.dashboard = None
        self.inbox.stop()
        self.runner.inhibitor.release()
        (self.daemon.dir("state") / "daemon.pid").unlink(missing_ok=True)
        if self.lock_handle is not None:
            self.lock_handle.close()  # releases the lock
            self.lock_handle = None

    def stop(self) -> None:
        """What SIGTERM/SIGINT do: the first lets the running job save and stop, the second kills it."""
        self.signals += 1  # only a count and a wake-up (this runs in a signal handler); the loop does the work
        self.wake.set()

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self.stop())
        self.open()
        try:
            while not (self.signals and not self.runner.children):
                try:
                    self.tick(local_now())
                except Exception as error:  # noqa: BLE001 - the daemon never dies because of one bad tick
                    self.report_loop_error(error)
                if self.exit_when_idle and not self.runner.children and not self.has_work():
                    break
                self.sleep()
        finally:
            self.close()
        log.info("animad daemon stopped")
        return 0

    def tick(self, now: dt.datetime) -> None:
        self.check_database()  # first: nothing may read or write a queue file that went away
        self.mailbox.serve(self.queue)  # the dashboard's pause/resume/cancel/retry, as the CLI's would be
        window_open = is_open(now, self.windows)
        if window_open != self.window_open:
            self.window_open = window_open
            change = next_close(now, self.windows) if window_open else next_open(now, self.windows)
            log.info("window %s%s", "open" if window_open else "closed",
                     f"; next change at {change.isoformat(timespec='minutes')}" if change else "")
        if not self.signals:
            self.inbox.take()
        if self.runner.children:
            self.runner.watch(window_open, self.signals)
        # Fill every free slot (one, unless parallel_jobs): a job's select phase may run beside another's training.
        while not self.signals and self.runner.free_slot() is not None and self.start_next(window_open):
            pass

    def check_database(self) -> None:
        """The queue file removed or truncated under us: put back or rebuilt now (daemon/dbhealth.py)."""
        running = {c.job_id: (c.phase.status, c.phase, c.pid, c.slot) for c in self.runner.children.values()}
        self.dbwatch.repair(lambda: adopt_job_folders(self.daemon, self.queue), running)

    def sleep(self) -> None:
        """Until something happens, the next inbox check is due, or a second or two have passed."""
        timeout = min(1.0 if self.runner.children else 2.0, self.inbox.seconds_to_next_check())
        self.wake.wait(timeout=max(0.05, timeout))
        self.wake.clear()

    def start_next(self, window_open: bool) -> bool:
        """Start the next runnable job in a free slot; False when there is none to start."""
        row = self.queue.next_runnable(window_open or self.now_credit > 0)
        if row is None:
            return False
        if job_folder_gone(row):
            # Deleted by hand while paused or queued: its dataset and saved state went with it, so the
            # job cannot go on; say that, instead of a child failing on a missing job.resolved.yaml.
            self.queue.update(row["id"], status=Status.FAILED, finished=time.time(), error=gone_message(row))
            log.error("job %d: %s", row["id"], gone_message(row))
            return True
        run_now = bool(row["run_now"])
        if not window_open and not run_now:
            self.now_credit -= 1
            run_now = True
            self.queue.update(row["id"], run_now=1)
        self.runner.spawn(row, row["phase"], run_now)
        return True

    def has_work(self) -> bool:
        if self.inbox.pending:  # a dropped folder still settling becomes work once it has settled
            return True
        if self.queue.by_status(Status.ACCEPTING) or any(not r["held"] for r in self.queue.by_status(Status.PAUSED)):
            return True
        return any(not waits_on_held(self.queue, r) for r in self.queue.by_status(Status.QUEUED))

    def report_loop_error(self, error: Exception) -> None:
        # The same error every tick (a full disk can last hours) is logged once every few minutes.
        text, now = f"{type(error).__name__}: {error}", time.monotonic()
        if text == self.last_error[0] and now - self.last_error[1] < 300:
            return
        self.last_error = (text, now)
        if disk_or_database_full(error):
            log.error("the disk is full (%s): waiting for free space; the queue carries on once there is room", text)
        else:
            log.exception("unexpected error in the daemon loop; carrying on")


def waits_on_held(queue: Queue, row: dict, seen: frozenset = frozenset()) -> bool:
    """A chained job waiting (directly or down its chain) for a held job: nothing to do until a person
    resumes that one, so `animad run --once` does not wait for it."""
    p = Report.read(row.get("progress"))
    if p.phase != "waiting" or row["id"] in seen:
        return False
    source = named_job(queue, p.waiting_for or "", row["id"])
    if source is None:
        return False
    return bool(source["held"]) or waits_on_held(queue, source, seen | {row["id"]})

