"""The daemon's main loop: inbox -> queue -> one job at a time, inside the window.

The loop sleeps on an event that watchdog (inbox activity), APScheduler (window boundaries) and
signal handlers set, with a timeout of a second or two so control requests from the CLI (which are
rows in SQLite) are noticed. Nothing a job does can raise out of this loop.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from animad.config.daemon import Daemon
from animad.daemon.freeze import finish_accepting, handle_folder
from animad.daemon.inbox import InboxWatcher, SettleTracker
from animad.daemon.queue import Queue, pid_alive, queue_path
from animad.config.window import parse_windows
from animad.daemon.window import Clock, is_open, next_close, next_open
from animad.errors import UserError, is_disk_full
from animad.outcomes import Exit

log = logging.getLogger("animad.daemon")


def disk_or_database_full(error: BaseException) -> bool:
    return is_disk_full(error) or isinstance(error, sqlite3.OperationalError) and "full" in str(error)


@dataclasses.dataclass
class Running:
    job_id: int
    phase: str
    pid: int
    process: subprocess.Popen | None  # None for a job adopted from a previous daemon
    run_now: bool
    stop_reason: str | None = None
    stop_sent: float | None = None
    killed: bool = False
    report_fd: int | None = None  # read end of the pipe the child writes its failure message into
    report: str = ""

    def read_report(self) -> str:
        """The child's last words, read once; they arrive even when the disk is too full to record them."""
        if self.report_fd is not None:
            chunks = []
            try:
                while chunk := os.read(self.report_fd, 65536):
                    chunks.append(chunk)
            except BlockingIOError:
                pass
            os.close(self.report_fd)
            self.report_fd = None
            self.report = b"".join(chunks).decode("utf-8", "replace").strip()
        return self.report

    def poll(self) -> int | None:
        if self.process is not None:
            return self.process.poll()
        return None if pid_alive(self.pid) else -999  # adopted: no exit code, the row says how it went


class Service:
    def __init__(self, daemon: Daemon, *, now_once: bool = False, exit_when_idle: bool = False):
        self.daemon = daemon
        self.config = daemon.config
        self.queue = Queue(queue_path(daemon))
        self.windows = parse_windows(self.config.windows)
        self.clock = Clock()
        self.wake = threading.Event()
        self.last_error: tuple[str, float] = ("", 0.0)
        self.inbox = daemon.dir("inbox")
        self.tracker = SettleTracker(self.inbox, self.config.settle_seconds)
        self.watcher = InboxWatcher(self.inbox, self.wake, self.config.poll_seconds)
        self.now_credit = 1 if now_once else 0
        self.exit_when_idle = exit_when_idle
        self.running: Running | None = None
        self.signals = 0
        self.inhibitor: subprocess.Popen | None = None
        self.scheduler = None
        self.lock_handle = None
        self.next_inbox_check = 0.0

    # -- set-up and tear-down --------------------------------------------------------------------

    def acquire_lock(self) -> None:
        state = self.daemon.dir("state")
        state.mkdir(parents=True, exist_ok=True)
        self.lock_handle = open(state / "daemon.lock", "a+")
        try:
            fcntl.flock(self.lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"another animad daemon is already running on {state}") from None
        (state / "daemon.pid").write_text(f"{os.getpid()}\n")

    def handle_signal(self, signum, frame) -> None:
        self.signals += 1  # only a flag and a wake-up here; the loop does the work
        self.wake.set()

    def start_scheduler(self) -> None:
        """APScheduler wakes the loop exactly at the next window boundary."""
        from apscheduler.schedulers.background import BackgroundScheduler

        self.scheduler = BackgroundScheduler(daemon=True)
        self.scheduler.start()
        self.arm_boundary()

    def arm_boundary(self) -> None:
        from apscheduler.triggers.date import DateTrigger

        if self.scheduler is None:
            return
        now = self.clock.now()
        boundary = next_close(now, self.windows) or next_open(now, self.windows)
        if boundary is None or boundary <= now:
            return
        self.scheduler.add_job(self.on_boundary, DateTrigger(run_date=boundary), id="window",
                               replace_existing=True, misfire_grace_time=3600)
        log.info("window %s; next change at %s", "open" if is_open(now, self.windows) else "closed",
                 boundary.isoformat(timespec="minutes"))

    def on_boundary(self) -> None:
        self.wake.set()
        self.arm_boundary()

    def run(self) -> int:
        self.acquire_lock()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.handle_signal)
        for job_id in self.queue.recover():
            log.info("job %d was interrupted (crash or power cut); it resumes from its last saved state", job_id)
        finish_accepting(self.daemon, self.queue)
        self.adopt_orphans()
        self.watcher.start()
        self.start_scheduler()
        log.info("animad daemon started: inbox %s, windows %s", self.inbox, ", ".join(self.config.windows))
        try:
            while True:
                if self.signals and self.running is None:
                    break
                try:
                    self.tick()
                except Exception as error:  # noqa: BLE001 - the daemon never dies because of one bad tick
                    self.report_loop_error(error)
                if self.exit_when_idle and self.running is None and not self.has_work():
                    break
                # Sleep to the next inbox check at most, so a folder is taken as soon as it settles.
                timeout = min(1.0 if self.running else 2.0, self.next_inbox_check - time.monotonic())
                self.wake.wait(timeout=max(0.05, timeout))
                self.wake.clear()
        finally:
            self.watcher.stop()
            if self.scheduler is not None:
                self.scheduler.shutdown(wait=False)
            self.release_inhibitor()
            (self.daemon.dir("state") / "daemon.pid").unlink(missing_ok=True)
        log.info("animad daemon stopped")
        return 0

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

    def adopt_orphans(self) -> None:
        for row in self.queue.by_status("running", "selecting"):
            if pid_alive(row["pid"]) and self.running is None:
                log.info("job %d is still running as pid %d from an earlier daemon; watching it", row["id"],
                         row["pid"])
                self.running = Running(row["id"], row["phase"], row["pid"], None, bool(row["run_now"]))

    def has_work(self) -> bool:
        return bool(self.queue.by_status("queued", "accepting")) or bool(
            [r for r in self.queue.by_status("paused") if not r["held"]])

    # -- the loop --------------------------------------------------------------------------------

    def tick(self) -> None:
        window_open = is_open(self.clock.now(), self.windows)
        if not self.signals:
            self.check_inbox()
        if self.running is not None:
            self.watch_running(window_open)
        if self.running is None and not self.signals:
            self.start_next(window_open)

    def check_inbox(self) -> None:
        if time.monotonic() < self.next_inbox_check and not self.watcher.dirty.is_set():
            return
        self.watcher.dirty.clear()
        ready, wait = self.tracker.scan()
        self.next_inbox_check = time.monotonic() + (min(wait, 60.0) if wait is not None else 60.0)
        for folder in ready:
            try:
                if handle_folder(folder, self.daemon, self.queue) is None:
                    self.tracker.mark_rejected(folder)
            except Exception as error:  # noqa: BLE001 - one odd folder must not stop the daemon
                log.exception("could not take %s", folder)
                try:
                    (folder / "ERRORS.txt").write_text(
                        f"animad could not take this folder: {error}\nIt stays here; nothing was deleted. "
                        "Fix the cause (permissions? disk full?) and save job.yaml again.\n")
                except OSError:
                    pass
                self.tracker.mark_rejected(folder)

    def start_next(self, window_open: bool) -> None:
        row = self.queue.next_runnable(window_open or self.now_credit > 0)
        if row is None:
            return
        run_now = bool(row["run_now"])
        if not window_open and not run_now:
            self.now_credit -= 1  # `animad run --now`: this one job may ignore the window
            run_now = True
            self.queue.update(row["id"], run_now=1)
        self.spawn(row, row["phase"], run_now)

    def spawn(self, row: dict, phase: str, run_now: bool) -> None:
        command = [sys.executable, "-m", "animad"]
        if self.daemon.path:
            command += ["--config", str(self.daemon.path)]
        command += ["job", row["job_dir"], "--db", str(self.queue.path), "--job-id", str(row["id"]),
                    "--phase", phase]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        report_read, report_write = os.pipe()
        os.set_blocking(report_read, False)
        command += ["--report-fd", str(report_write)]
        try:
            process = subprocess.Popen(command, start_new_session=True, env=env, stdin=subprocess.DEVNULL,
                                       pass_fds=(report_write,))
        except BaseException:
            os.close(report_read)
            raise
        finally:
            os.close(report_write)
        # Watched from this moment, even if recording the start fails: never an unsupervised child.
        self.running = Running(row["id"], phase, process.pid, process, run_now, report_fd=report_read)
        status = "running" if phase == "train" else "selecting"
        self.queue.claim(row["id"], status, process.pid)
        self.queue.update(row["id"], phase=phase, outcome=None, request=None)
        self.hold_inhibitor(row["name"])
        log.info("job %d (%s): %s started as pid %d", row["id"], row["name"], phase, process.pid)

    def watch_running(self, window_open: bool) -> None:
        job = self.running
        code = job.poll()
        if code is not None:
            self.release_inhibitor()
            # Only forget the job once its outcome is recorded: if the write fails (a full disk),
            # the next tick records it again instead of leaving the row "running" for ever.
            self.on_exit(job, code, window_open)
            if self.running is job:
                self.running = None
            return
        row = self.queue.get(job.job_id)
        reason = None
        if self.signals:
            reason = "daemon stopping"
        elif row["request"] in ("pause", "cancel"):
            reason = row["request"]
        elif not window_open and not job.run_now:
            reason = "window closed"
        if reason and job.stop_sent is None:
            log.info("job %d: %s; asking it to save its state and stop", job.job_id, reason)
            job.stop_reason, job.stop_sent = reason, time.monotonic()
            self.signal_job(job, signal.SIGTERM)
        if job.stop_sent is not None and not job.killed:
            overdue = time.monotonic() - job.stop_sent > self.config.stop_grace_seconds
            if self.signals >= 2 or overdue:
                log.warning("job %d: stopping it hard (%s)", job.job_id, "second signal" if self.signals >= 2
                            else f"no exit within {self.config.stop_grace_seconds:.0f}s")
                job.killed = True
                self.signal_job(job, signal.SIGKILL)

    def signal_job(self, job: Running, sig: int) -> None:
        try:
            os.killpg(os.getpgid(job.pid), sig)
        except (ProcessLookupError, PermissionError):
            pass

    def on_exit(self, job: Running, code: int, window_open: bool) -> None:
        report = job.read_report()  # also closes the pipe, however the job ended
        row = self.queue.get(job.job_id)
        outcome = row["outcome"]
        if code == -999:  # adopted job: read what it wrote
            code = {"finished": Exit.FINISHED, "paused": Exit.PAUSED, "user_error": Exit.USER_ERROR}.get(outcome, 1)
        now = time.time()
        if code == Exit.FINISHED and job.phase == "train":
            self.queue.update(job.job_id, phase="select", pid=None, progress={"phase": "selecting"})
            if (window_open or job.run_now) and not self.signals:
                self.spawn(self.queue.get(job.job_id), "select", job.run_now)
            else:
                self.queue.update(job.job_id, status="paused", resume_first=1)
            return
        if code == Exit.FINISHED:
            self.queue.update(job.job_id, status="done", pid=None, finished=now, request=None, error=None)
            log.info("job %d done: review package in %s", job.job_id, row["outbox_dir"])
            return
        if row["request"] == "cancel":
            self.queue.update(job.job_id, status="cancelled", pid=None, request=None, finished=now)
            return
        stopped_by_us = job.stop_sent is not None
        if code == Exit.PAUSED or (stopped_by_us and job.killed):
            held = 1 if row["request"] == "pause" else row["held"]
            self.queue.update(job.job_id, status="paused", pid=None, request=None, resume_first=1, held=held)
            log.info("job %d paused (%s); it resumes from its saved state", job.job_id, job.stop_reason or "stopped")
            return
        if code == Exit.USER_ERROR:
            reason = row["error"] or report or f"the job reported a problem; see: animad logs {job.job_id}"
        elif code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            reason = f"the job process was killed by {name}" + (
                " (the kernel's out-of-memory killer does this: lower batch size or resolution)"
                if -code == signal.SIGKILL else "")
        else:
            reason = row["error"] or report or f"the job process exited with code {code}"
        self.queue.update(job.job_id, status="failed", pid=None, error=reason, finished=now, request=None)
        log.error("job %d failed: %s", job.job_id, reason.splitlines()[0])

    # -- keeping the machine awake ---------------------------------------------------------------

    def hold_inhibitor(self, name: str) -> None:
        if not self.config.inhibit_sleep or self.inhibitor is not None or not shutil.which("systemd-inhibit"):
            return
        try:
            self.inhibitor = subprocess.Popen(
                ["systemd-inhibit", "--what=sleep:idle", "--who=animad", f"--why=training {name}", "--mode=block",
                 "sleep", "infinity"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            self.inhibitor = None

    def release_inhibitor(self) -> None:
        if self.inhibitor is not None:
            self.inhibitor.terminate()
            self.inhibitor = None
