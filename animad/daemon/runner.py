"""Job children, one per slot: spawn them, watch them, ask them to stop (then make them), record how each ended.

A daemon has one slot (one job at a time, on every GPU it has) unless animad.yaml sets parallel_jobs:
then each GPU in `gpus` is a slot, and its child sees only that GPU (CUDA_VISIBLE_DEVICES). Each child
is watched, stopped and recorded on its own, exactly as a lone child is.

The child is `animad job ...` in its own session (so a stop signal reaches everything it started).
It writes its outcome into its row; a failure message also goes down a pipe, which needs no disk,
so the reason survives a disk too full for SQLite to write.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from animad.config.daemon import Daemon
from animad.daemon import chain
from animad.daemon.inhibit import SleepInhibitor
from animad.daemon.progress import saved_point
from animad.daemon.queue import Queue, pid_alive
from animad.daemon.states import Phase, Request, Status
from animad.outcomes import Exit
from animad.signals import PARENT_PID

log = logging.getLogger("animad.daemon")
CGROUP_ROOT = Path("/sys/fs/cgroup")
STDERR_FILE = "child-stderr.log"  # in the job folder: what the job children wrote to stderr
SETTLE_SECONDS = 5.0  # a status line may lag this much; looking costs a few reads of the queue


@dataclasses.dataclass
class OomWatch:
    """The kernel's count of out-of-memory kills in the job's cgroup, read when it starts.

    A SIGKILL alone does not say who sent it; only a count that rose while the job ran lets us blame
    the OOM killer. `counter` is None where no count can be read (no cgroup files, another namespace).
    """

    counter: Path | None
    start: int | None

    @classmethod
    def of(cls, pid: int) -> "OomWatch":
        for counter in _oom_counters(pid):
            start = read_oom_kills(counter)
            if start is not None:
                return cls(counter, start)
        return cls(None, None)

    def killed_since(self) -> bool | None:
        """True: an OOM kill happened in the job's cgroup since it started; False: none; None: unknown."""
        if self.counter is None or self.start is None:
            return None
        now = read_oom_kills(self.counter)
        return None if now is None else now > self.start


def _oom_counters(pid: int) -> list[Path]:
    """memory.events (cgroup v2) or memory.oom_control (v1) of pid's cgroup, then of the mount's root
    (in a container the recorded path may not exist inside the mount; the root still counts its kills)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, name = CGROUP_ROOT, "memory.events"
        elif "memory" in controllers.split(","):
            base, name = CGROUP_ROOT / "memory", "memory.oom_control"
        else:
            continue
        out += [base / path.lstrip("/") / name, base / name]
    return out


def read_oom_kills(counter: Path) -> int | None:
    try:
        for line in counter.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


@dataclasses.dataclass
class Child:
    job_id: int
    phase: Phase
    pid: int
    process: subprocess.Popen | None  # None for a job adopted from a previous daemon
    run_now: bool
    slot: int = 0
    stop_reason: str | None = None
    stop_sent: float | None = None
    killed: bool = False
    report_fd: int | None = None  # read end of the pipe the child writes its failure message into
    report: str = ""
    oom: OomWatch = dataclasses.field(default_factory=lambda: OomWatch(None, None))
    stderr_file: tuple[Path, int] | None = None  # (the file its stderr goes to, where this launch began)

    def stderr_tail(self, lines: int = 12) -> str:
        """The last lines this launch wrote to stderr: the only words of a child that died before it
        could report (an import that failed, an interpreter that would not start)."""
        if self.stderr_file is None:
            return ""
        path, start = self.stderr_file
        try:
            with open(path, "rb") as handle:
                handle.seek(start)
                text = handle.read()[-65536:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])

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

    def exit_code(self, queue: Queue) -> int | None:
        """The exit status once the process has ended; None while it runs.

        An adopted child is not ours to wait for, so its status is lost: the outcome it wrote into
        its row says how it went instead (no outcome written: it crashed).
        """
        if self.process is not None:
            return self.process.poll()
        if pid_alive(self.pid):
            return None
        outcome = queue.get(self.job_id)["outcome"]
        return outcome.exit if outcome else Exit.CRASH

    def send(self, sig: int) -> None:
        try:
            os.killpg(os.getpgid(self.pid), sig)
        except (ProcessLookupError, PermissionError):
            pass


class Runner:
    def __init__(self, daemon: Daemon, queue: Queue):
        self.daemon, self.queue = daemon, queue
        self.grace = daemon.config.stop_grace_seconds
        self.inhibitor = SleepInhibitor(daemon.config.inhibit_sleep)
        self.devices = daemon.slot_devices()  # slot -> its CUDA_VISIBLE_DEVICES (None: as it is)
        self.children: dict[int, Child] = {}  # slot -> the child running in it
        self.next_settle = 0.0  # when to look at the jobs waiting for another one again (chain.settle)

    @property
    def child(self) -> Child | None:
        """A running child, if any (None: every slot is free)."""
        return next(iter(self.children.values()), None)

    def free_slot(self) -> int | None:
        return next((slot for slot in range(len(self.devices)) if slot not in self.children), None)

    def adopt(self, row: dict) -> None:
        # Back into the slot it was started in, if that slot is still there and free; a config that
        # shrank since keeps the child watched in a slot of its own, which no new job is given.
        slot = row.get("slot")
        if slot is None or slot in self.children or not 0 <= slot < len(self.devices):
            slot = self.free_slot()
        if slot is None:
            slot = len(self.devices) + len(self.children)
        log.info("job %d is still running as pid %d from an earlier daemon; watching it", row["id"], row["pid"])
        self.children[slot] = Child(row["id"], row["phase"], row["pid"], None, bool(row["run_now"]), slot=slot)
        self.inhibitor.hold(f"training {row['name']}")

    def spawn(self, row: dict, phase: Phase, run_now: bool, slot: int | None = None) -> None:
        """Start `phase` of the row's job in `slot` (default: the first free one)."""
        slot = self.free_slot() if slot is None else slot
        device = self.devices[slot] if slot < len(self.devices) else None
        command = child_command()
        if self.daemon.path:
            command += ["--config", str(self.daemon.path)]
        command += ["job", row["job_dir"], "--db", str(self.queue.path), "--job-id", str(row["id"]),
                    "--phase", str(phase)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_PID: str(os.getpid())}  # see signals.parent_gone
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device  # the job sees its own GPU(s) only, as device 0
        report_read, report_write = os.pipe()
        os.set_blocking(report_read, False)
        command += ["--report-fd", str(report_write)]
        stderr, stderr_from = open_stderr(row)
        try:
            process = subprocess.Popen(command, start_new_session=True, env=env, stdin=subprocess.DEVNULL,
                                       stderr=stderr, pass_fds=(report_write,))
        except BaseException:
            os.close(report_read)
            raise
        finally:
            os.close(report_write)
            if stderr is not None:
                stderr.close()
        # Watched from this moment, even if recording the start fails: never an unsupervised child.
        self.children[slot] = Child(row["id"], phase, process.pid, process, run_now, slot=slot,
                                    report_fd=report_read, oom=OomWatch.of(process.pid),
                                    stderr_file=stderr_from)
        self.queue.claim(row["id"], phase.status, process.pid, slot=slot, gpu=device)
        self.queue.update(row["id"], phase=phase, outcome=None, request=None)
        self.inhibitor.hold(f"training {row['name']}")
        on = f" on GPU {device}" if device is not None and len(self.devices) > 1 else ""
        log.info("job %d (%s): %s started as pid %d%s", row["id"], row["name"], phase, process.pid, on)

    def watch(self, window_open: bool, signals: int) -> None:
        """One look at every child (watch_one); the sleep lock goes once none is left."""
        self.settle_chains()
        self.inhibitor.check()  # a sleep lock that ended is reaped and said, not left a zombie
        errors = []
        for child in list(self.children.values()):
            try:
                self.watch_one(child, window_open, signals)
            except Exception as error:  # noqa: BLE001 - one child's failed write must not leave the others unwatched
                errors.append(error)
        if not self.children:
            self.inhibitor.release()
        if errors:
            raise errors[0]  # the loop reports it (once every few minutes) and the next tick tries again

    def watch_one(self, child: Child, window_open: bool, signals: int) -> None:
        """Record how the child ended, or ask it to stop, or kill it when it is overdue.

        `signals` counts the daemon's own stop signals: the first lets the job save and stop, the second kills it.
        """
        code = child.exit_code(self.queue)
        if code is not None:
            # Only forget the child once its outcome is recorded: if the write fails (a full disk),
            # the next tick records it again instead of leaving the row "running" for ever. A
            # select phase started by record_exit takes the same slot, replacing this child there.
            self.record_exit(child, code, go_on=(window_open or child.run_now) and not signals)
            if self.children.get(child.slot) is child:
                del self.children[child.slot]
            return
        row = self.queue.get(child.job_id)
        reason = None
        if signals:
            reason = "daemon stopping"
        elif row["request"] is not None:
            reason = row["request"].value
        elif not window_open and not child.run_now:
            reason = "window closed"
        if reason and child.stop_sent is None:
            log.info("job %d: %s; asking it to save its state and stop", child.job_id, reason)
            child.stop_reason, child.stop_sent = reason, time.monotonic()
            child.send(signal.SIGTERM)
        if child.stop_sent is not None and not child.killed:
            # The grace is about a real process's real exit, so it runs on the real (monotonic) clock.
            overdue = time.monotonic() - child.stop_sent > self.grace
            if signals >= 2 or overdue:
                log.warning("job %d: stopping it hard (%s)", child.job_id, "second signal" if signals >= 2
                            else f"no exit within {self.grace:.0f}s")
                child.killed = True
                child.send(signal.SIGKILL)

    def settle_chains(self) -> None:
        """Every few seconds while a job runs, the queued jobs that wait for another one are marked (or
        failed when it failed): next_runnable, which does it too, only runs between jobs."""
        if time.monotonic() < self.next_settle:
            return
        self.next_settle = time.monotonic() + SETTLE_SECONDS
        try:
            chain.settle(self.queue)
        except Exception as error:  # noqa: BLE001 - a status mark must never stop the watch over a child
            log.warning("could not look at the jobs waiting for another job: %s", error)

    def record_exit(self, child: Child, code: int, go_on: bool) -> None:
        """Turn the child's exit into the row's next status (and start the select phase when training finished)."""
        report = child.read_report()  # also closes the pipe, however the job ended
        row = self.queue.get(child.job_id)
        now = time.time()
        if code == Exit.FINISHED and child.phase is Phase.TRAIN:
            self.queue.update(child.job_id, phase=Phase.SELECT, pid=None, progress={"phase": "selecting"})
            if go_on:
                self.spawn(self.queue.get(child.job_id), Phase.SELECT, child.run_now, slot=child.slot)
            else:
                self.queue.update(child.job_id, status=Status.PAUSED, resume_first=1)
            return
        if code == Exit.FINISHED:
            self.queue.update(child.job_id, status=Status.DONE, pid=None, finished=now, request=None, error=None)
            log.info("job %d done: review package in %s", child.job_id, row["outbox_dir"])
            return
        if row["request"] is Request.CANCEL:
            self.queue.update(child.job_id, status=Status.CANCELLED, pid=None, request=None, finished=now)
            return
        # Our own SIGTERM can land before the child has set up its stop flag (it is still importing
        # torch); it then dies of the signal, with its saved state as it was: that is a pause too.
        stopped_early = child.stop_sent is not None and code == -signal.SIGTERM
        if code == Exit.PAUSED or (child.stop_sent is not None and child.killed) or stopped_early:
            held = 1 if row["request"] is Request.PAUSE else row["held"]
            self.queue.update(child.job_id, status=Status.PAUSED, pid=None, request=None, resume_first=1, held=held)
            # The step status shows (progress.saved_point): one figure in the log, status and train.log.
            point = saved_point(row) or {}
            at = f" at epoch {point['epoch']}, step {point['step']}" if point else ""
            log.info("job %d paused (%s); it resumes from its saved state%s", child.job_id,
                     child.stop_reason or "stopped", at)
            return
        reason = failure_reason(code, row, report, oom_killed=child.oom.killed_since(),
                                stderr_tail=child.stderr_tail(), stderr_file=child.stderr_file)
        self.queue.update(child.job_id, status=Status.FAILED, pid=None, error=reason, finished=now, request=None)
        log.error("job %d failed: %s", child.job_id, reason.splitlines()[0])


def child_command() -> list[str]:
    """`python -P -m animad`: -P keeps the current directory off sys.path, so a folder named `animad`
    where the daemon was started (a user's ~/animad of data) cannot shadow the installed package."""
    return [sys.executable, "-P", "-m", "animad"]


def open_stderr(row: dict):
    """(a file for the child's stderr, (its path, the offset this launch starts at)), or (None, None).

    In the job folder (child-stderr.log, appended to by every launch): a child that dies before its
    logging is set up has said why only there. Where it cannot be opened the child shares ours.
    """
    path = Path(row["job_dir"]) / STDERR_FILE if row.get("job_dir") else None
    if path is None:
        return None, None
    try:
        handle = open(path, "ab")
        return handle, (path, handle.tell())
    except OSError:
        return None, None


def failure_reason(code: int, row: dict, report: str, oom_killed: bool | None = None,
                   stderr_tail: str = "", stderr_file: tuple[Path, int] | None = None) -> str:
    """What `animad status` says about a failed job: the child's own words first, else what its exit tells.

    oom_killed is the kernel's word (OomWatch): a SIGKILL is blamed on the OOM killer only when it says so.
    A child that died before it could report (nothing in its row or its pipe) is described by the last
    line of its stderr, which status shows (its first line), and the tail below it.
    """
    if code == Exit.USER_ERROR:
        return row["error"] or report or f"the job reported a problem; see: animad logs {row['id']}"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        reason = f"the job process was killed by {name}"
        if -code != signal.SIGKILL:
            return reason
        if oom_killed:
            return reason + (" from the kernel's out-of-memory killer (its cgroup's OOM kill count rose): "
                             "lower data.batch_size or data.resolution, or free memory")
        if oom_killed is False:
            return reason + (" (not the out-of-memory killer: its cgroup counted no OOM kill), so a person or "
                             "a program sent it kill -9; retry it with: animad retry " + str(row["id"]))
        return reason + (" (possible causes: the kernel's out-of-memory killer - see `journalctl -k | grep -i "
                         "oom` - or a kill -9 from a person or a program; if it was memory, lower "
                         "data.batch_size or data.resolution)")
    if row["error"] or report:
        return row["error"] or report
    reason = f"the job process exited with code {code}"
    if not stderr_tail:
        return reason
    where = f" (all of it: {stderr_file[0]})" if stderr_file else ""
    return (f"{reason} before it could report: {stderr_tail.splitlines()[-1].strip()}\n"
            f"its last words on stderr{where}:\n{stderr_tail}")
