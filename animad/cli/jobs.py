"""Verbs that run the daemon or talk to it through its SQLite queue: run, status, pause, resume, ..."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

from animad.cli.common import Verb, daemon_of
from animad.config.window import parse_windows
from animad.daemon.progress import describe_progress, first_line
from animad.daemon.queue import Queue, pid_alive, queue_path
from animad.daemon.service import Service
from animad.daemon.states import ACTIVE, FINAL, RUNNABLE, Request, Status
from animad.daemon.window import is_open, local_now, next_close, next_open
from animad.errors import UserError
from animad.layout import JobPaths
from animad.logs import setup_logging
from animad.safe_text import safe


def _queue(daemon) -> Queue:
    return Queue(queue_path(daemon))


def _job(queue: Queue, key: str) -> dict:
    rows = queue.find(key)
    if not rows:
        raise UserError(f"no job '{safe(key)}'; see 'animad status'")
    if len(rows) > 1:
        ids = ", ".join(str(r["id"]) for r in rows)
        raise UserError(f"several jobs are named '{safe(key)}' (ids {ids}); give the id")
    return rows[0]


def locate_job(args):
    """For `animad select JOB`: (JobPaths, outbox dir) of a queued job, or None."""
    try:
        daemon = daemon_of(args)
        queue = _queue(daemon)
        row = _job(queue, args.job)
    except UserError:
        return None
    return JobPaths(Path(row["job_dir"])), Path(row["outbox_dir"])


def run_arguments(parser) -> None:
    parser.add_argument("--now", action="store_true", help="start the next job even outside the window")
    parser.add_argument("--once", action="store_true", help="exit when the queue is empty (for scripts)")


def cmd_run(args) -> int:
    setup_logging(stream=sys.stdout)
    daemon = daemon_of(args)
    return Service(daemon, now_once=args.now, exit_when_idle=args.once).run()


def status_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_status(args) -> int:
    daemon = daemon_of(args)
    queue = _queue(daemon)
    rows = queue.all()
    pid_file = daemon.dir("state") / "daemon.pid"
    daemon_pid = int(pid_file.read_text()) if pid_file.is_file() and pid_file.read_text().strip().isdigit() else None
    alive = pid_alive(daemon_pid)
    windows = parse_windows(daemon.config.windows)
    now = local_now()
    open_now = is_open(now, windows)
    change = next_close(now, windows) if open_now else next_open(now, windows)
    if args.json:
        print(json.dumps({"daemon": {"running": alive, "pid": daemon_pid if alive else None},
                          "window": {"open": open_now, "next_change": change.isoformat() if change else None},
                          "jobs": rows}, indent=2, default=str))
        return 0
    state = f"running (pid {daemon_pid})" if alive else "not running (start it with: animad run)"
    when = f", {'closes' if open_now else 'opens'} {change:%a %H:%M}" if change else ""
    print(f"daemon: {state}; window {'open' if open_now else 'closed'}{when}")
    if not rows:
        print("no jobs yet: drop a folder into", safe(daemon.dir("inbox")))
        return 0
    print(f"{'ID':>4}  {'NAME':<20} {'STATUS':<10} {'CREATED':<16} PROGRESS")
    for row in rows:
        created = dt.datetime.fromtimestamp(row["created"]).strftime("%Y-%m-%d %H:%M")
        status = row["status"] + (" (held)" if row["held"] and row["status"] in RUNNABLE else "")
        # Escaped before it is cut and padded: a newline in a name must not break the table.
        name = safe(row["name"])
        print(f"{row['id']:>4}  {name[:20]:<20} {status:<10} {created:<16} {describe_progress(row)}")
    # The table cuts reasons short; a failure's whole first line says what to do, so show it in full.
    for row in [r for r in rows if r["status"] == Status.FAILED and r.get("error")][-3:]:
        print(f"\njob {row['id']} ({safe(row['name'])}) failed: {first_line(row['error'])}")
        if row["job_dir"]:
            print(f"    once fixed: animad retry {row['id']}    (log: animad logs {row['id']})")
    return 0


def job_argument(parser) -> None:
    parser.add_argument("job", help="job id or name")


def cmd_pause(args) -> int:
    queue = _queue(daemon_of(args))
    row = _job(queue, args.job)
    if row["status"] in FINAL:
        raise UserError(f"job {row['id']} is {row['status']}; nothing to pause")
    if row["status"] in ACTIVE:
        queue.update(row["id"], held=1, request=Request.PAUSE)
        print(f"job {row['id']} will save its state at the next step and pause")
    else:
        queue.update(row["id"], held=1)
        print(f"job {row['id']} is held; 'animad resume {row['id']}' lets it run again")
    return 0


def resume_arguments(parser) -> None:
    parser.add_argument("job", nargs="?", help="job id or name (default: every paused job)")
    parser.add_argument("--now", action="store_true", help="resume now, even outside the window")


def cmd_resume(args) -> int:
    queue = _queue(daemon_of(args))
    rows = [_job(queue, args.job)] if args.job else [r for r in queue.by_status(*RUNNABLE) if r["held"]
                                                      or r["status"] == Status.PAUSED]
    if not rows:
        print("no paused jobs")
        return 0
    for row in rows:
        if row["status"] not in RUNNABLE:
            raise UserError(f"job {row['id']} is {row['status']}; only paused or queued jobs can be resumed")
        queue.update(row["id"], held=0, request=None, run_now=1 if args.now else row["run_now"])
        when = "now" if args.now else "in the next window"
        print(f"job {row['id']} ({safe(row['name'])}) resumes {when}")
    return 0


def cmd_cancel(args) -> int:
    queue = _queue(daemon_of(args))
    row = _job(queue, args.job)
    if row["status"] in (Status.DONE, Status.CANCELLED):
        raise UserError(f"job {row['id']} is already {row['status']}")
    if row["status"] in ACTIVE:
        queue.update(row["id"], request=Request.CANCEL)
        print(f"job {row['id']} will stop at the next step; its files are kept in {safe(row['job_dir'])}")
    else:
        queue.update(row["id"], status=Status.CANCELLED, finished=time.time())
        print(f"job {row['id']} cancelled; its files are kept in {safe(row['job_dir'])}")
    return 0


def cmd_retry(args) -> int:
    queue = _queue(daemon_of(args))
    row = _job(queue, args.job)
    if row["status"] not in (Status.FAILED, Status.CANCELLED):
        raise UserError(f"job {row['id']} is {row['status']}; only failed or cancelled jobs can be retried")
    if not row["job_dir"] or not (Path(row["job_dir"]) / "job.resolved.yaml").is_file():
        raise UserError(f"job {row['id']} never got a job folder; drop the dataset folder into the inbox again")
    queue.update(row["id"], status=Status.QUEUED, held=0, request=None, error=None, outcome=None, resume_first=1)
    print(f"job {row['id']} queued again; it resumes from its last saved state ({row['phase']} phase)")
    return 0


def logs_arguments(parser) -> None:
    job_argument(parser)
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")


def cmd_logs(args) -> int:
    queue = _queue(daemon_of(args))
    row = _job(queue, args.job)
    log = Path(row["job_dir"] or "") / "train.log"
    if not log.is_file():
        raise UserError(f"job {row['id']} has no log yet ({safe(log)})")
    # Our own lines are already escaped; a library's raw output in the file may not be.
    with open(log, encoding="utf-8", errors="replace") as handle:
        sys.stdout.write(safe(handle.read(), keep_newlines=True))
        while args.follow:
            line = handle.readline()
            if line:
                sys.stdout.write(safe(line, keep_newlines=True))
                sys.stdout.flush()
            else:
                time.sleep(0.5)
    return 0


def tensorboard_arguments(parser) -> None:
    job_argument(parser)
    parser.add_argument("--port", type=int, help="port on 127.0.0.1 (default from animad.yaml)")


def cmd_tensorboard(args) -> int:
    daemon = daemon_of(args)
    row = _job(_queue(daemon), args.job)
    logdir = Path(row["job_dir"]) / "tb"
    port = args.port or daemon.config.tensorboard_port
    print(f"TensorBoard for job {row['id']} at http://127.0.0.1:{port}/ (Ctrl-C stops it)")
    # Bound to 127.0.0.1: nothing animad starts listens on other interfaces.
    return subprocess.call([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                            "127.0.0.1", "--port", str(port)])


VERBS = [
    Verb("run", "run the daemon in the foreground (journald-friendly)", run_arguments, cmd_run),
    Verb("status", "show the queue and the running job's progress", status_arguments, cmd_status),
    Verb("pause", "pause a job (it saves state and waits)", job_argument, cmd_pause),
    Verb("resume", "resume a paused job", resume_arguments, cmd_resume),
    Verb("cancel", "cancel a job (its files are kept)", job_argument, cmd_cancel),
    Verb("retry", "queue a failed or cancelled job again", job_argument, cmd_retry),
    Verb("logs", "print a job's log", logs_arguments, cmd_logs),
    Verb("tensorboard", "start TensorBoard for a job on 127.0.0.1", tensorboard_arguments, cmd_tensorboard),
]
