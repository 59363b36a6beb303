"""Verbs that run the daemon or talk to it through its SQLite queue: run, status, pause, resume, ..."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from animad.cli.common import Verb, daemon_of, schema_option
from animad.config.daemon import DaemonConfig
from animad.daemon import actions
from animad.daemon.actions import find_job
from animad.daemon.inbox import describe_folder
from animad.daemon.progress import first_line
from animad.daemon.queue import Queue, queue_path
from animad.daemon.service import Service
from animad.daemon.states import FINAL, Status
from animad.daemon.status import daemon_alive, status_word, take_snapshot
from animad.errors import UserError
from animad.layout import JobPaths
from animad.logs import setup_logging
from animad.safe_text import safe
from animad.signals import die_with_parent


def _queue(daemon) -> Queue:
    return Queue(queue_path(daemon))


def locate_job(args):
    """For `animad select JOB`: (JobPaths, outbox dir) of a queued job, or None."""
    try:
        daemon = daemon_of(args)
        queue = _queue(daemon)
        row = find_job(queue, args.job)
    except UserError:
        return None
    return JobPaths(Path(row["job_dir"])), Path(row["outbox_dir"])


def run_arguments(parser) -> None:
    parser.add_argument("--now", action="store_true", help="start the next job even outside the window")
    parser.add_argument("--once", action="store_true", help="exit when the queue is empty (for scripts)")
    parser.add_argument("--no-models-check", action="store_true",
                        help="start even when the default model set's files do not exist (checked by default: a "
                             "daemon pointed at missing files would only reject every dropped folder)")


def cmd_run(args) -> int:
    setup_logging(stream=sys.stdout)
    daemon = daemon_of(args)
    if not args.no_models_check:
        refuse_without_models(daemon)
    return Service(daemon, now_once=args.now, exit_when_idle=args.once).run()


def refuse_without_models(daemon) -> None:
    """A UserError naming every missing file of the default model set, and the ways on."""
    name = daemon.config.default_model
    files = daemon.model_set(name) or {}
    where = daemon.path or "animad.yaml (none found: the built-in defaults apply)"
    missing = [f"  models.{name}.{key}: {safe(path)} ({'not a file' if path.exists() else 'not found'})"
               for key, path in files.items() if path is None or not path.is_file()]
    if not missing:
        return
    init = "" if daemon.path else " (no animad.yaml yet: `animad init` writes a commented one)"
    raise UserError(f"{safe(where)}: the files of the default model set '{safe(name)}' do not exist:\n"
                    + "\n".join(missing) + "\n"
                    f"Point them at your ComfyUI model files{init}, or start anyway with "
                    "`animad run --no-models-check` (jobs that need these files are then rejected when dropped).")


def status_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="machine-readable output: the rows, what the table shows of each ('shown') and the inbox")


STATUS_WAIT_SECONDS = 5.0  # status waits this long for a lock, then says so: it never hangs


def cmd_status(args) -> int:
    daemon = daemon_of(args)
    queue = Queue(queue_path(daemon), timeout=STATUS_WAIT_SECONDS)
    try:
        snap = take_snapshot(daemon, queue)
    except sqlite3.Error as error:  # locked, or a file truncated under the daemon: one line, no traceback
        running = "the running daemon puts it right within seconds" if daemon_alive(daemon) else \
            "start the daemon (animad run): it rebuilds it from the job folders"
        raise UserError(f"{safe(queue.path)}: the queue database cannot be read just now ({error}); "
                        f"{running}, then run animad status again") from None
    if args.json:
        print(json.dumps(snap.as_json(), indent=2, default=str))
        return 0
    rows, inbox = snap.rows, snap.inbox
    state = f"running (pid {snap.daemon_pid})" if snap.alive else "not running (start it with: animad run)"
    when = f", {'closes' if snap.window_open else 'opens'} {snap.change:%a %H:%M}" if snap.change else ""
    print(f"daemon: {state}; window {'open' if snap.window_open else 'closed'}{when}")
    if snap.dashboard:
        print(f"dashboard: {snap.dashboard}")
    if not rows and not inbox:
        print("no jobs yet: drop a folder into", safe(daemon.dir("inbox")))
        return 0
    if rows:
        print_jobs(rows, snap.shown, gpu_column=snap.many_slots)
    if inbox:
        print(f"\ninbox ({safe(daemon.dir('inbox'))}):")
        for entry in inbox:
            print(describe_folder(entry))
    # The table cuts reasons short; a failure's whole first line says what to do, so show it in full.
    for row in [r for r in rows if r["status"] == Status.FAILED and r.get("error")][-3:]:
        print(f"\njob {row['id']} ({safe(row['name'])}) failed: {first_line(row['error'])}")
        if row["job_dir"]:
            print(f"    once fixed: animad retry {row['id']}    (log: animad logs {row['id']})")
    return 0


def print_jobs(rows: list[dict], shown: dict, gpu_column: bool = False) -> None:
    # Column widths from what is printed ("queued (held)" included), so the table stays aligned.
    words = {r["id"]: status_word(r, shown[r["id"]]) for r in rows}
    width = max([len("STATUS")] + [len(w) for w in words.values()])
    # The GPU column only where there is a choice of GPU (parallel_jobs): one slot has nothing to say.
    gpus = {r["id"]: shown[r["id"]].get("gpu") or "" for r in rows}
    gpu_width = max([len("GPU")] + [len(g) for g in gpus.values()])
    gpu_head = f"{'GPU':<{gpu_width}} " if gpu_column else ""
    print(f"{'ID':>4}  {'NAME':<20} {'STATUS':<{width}} {gpu_head}{'CREATED':<16} PROGRESS")
    for row in rows:
        created = dt.datetime.fromtimestamp(row["created"]).strftime("%Y-%m-%d %H:%M")
        # Escaped before it is cut and padded: a newline in a name must not break the table.
        name = safe(row["name"])
        gpu = f"{gpus[row['id']]:<{gpu_width}} " if gpu_column else ""
        print(f"{row['id']:>4}  {name[:20]:<20} {words[row['id']]:<{width}} {gpu}{created:<16} "
              f"{shown[row['id']]['line']}")


def job_argument(parser) -> None:
    parser.add_argument("job", help="job id or name")


def say(done: actions.Done) -> int:
    if done.note:
        print(f"note: {done.note}", file=sys.stderr)
    print(done.message)
    return 0


def cmd_pause(args) -> int:
    queue = _queue(daemon_of(args))
    return say(actions.pause(queue, find_job(queue, args.job)))


def resume_arguments(parser) -> None:
    parser.add_argument("job", nargs="?", help="job id or name (default: every paused job)")
    parser.add_argument("--now", action="store_true", help="resume now, even outside the window")


def cmd_resume(args) -> int:
    daemon = daemon_of(args)
    queue = _queue(daemon)
    rows = [find_job(queue, args.job)] if args.job else actions.paused_jobs(queue)
    if not rows:
        print("no paused jobs")
        return 0
    for row in rows:
        say(actions.resume(daemon, queue, row, args.now))
    return 0


def cmd_cancel(args) -> int:
    queue = _queue(daemon_of(args))
    return say(actions.cancel(queue, find_job(queue, args.job)))


def cmd_retry(args) -> int:
    queue = _queue(daemon_of(args))
    return say(actions.retry(queue, find_job(queue, args.job)))


def keep_arguments(parser) -> None:
    job_argument(parser)
    parser.add_argument("epoch", type=int, help="the epoch to keep (its number, as in the review)")


def cmd_keep(args) -> int:
    daemon = daemon_of(args)
    queue = _queue(daemon)
    return say(actions.keep_epoch(daemon, find_job(queue, args.job), args.epoch))


def logs_arguments(parser) -> None:
    job_argument(parser)
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing new lines until the job ends (done, failed or cancelled); a paused "
                             "job is followed on, since it resumes in the next window")


def cmd_logs(args) -> int:
    queue = _queue(daemon_of(args))
    row = find_job(queue, args.job)
    log = Path(row["job_dir"] or "") / "train.log"
    if not log.is_file():
        raise UserError(f"job {row['id']} has no log yet ({safe(log)})")
    # Our own lines are already escaped; a library's raw output in the file may not be.
    with open(log, encoding="utf-8", errors="replace") as handle:
        sys.stdout.write(safe(handle.read(), keep_newlines=True))
        sys.stdout.flush()
        while args.follow:
            line = handle.readline()
            if line:
                sys.stdout.write(safe(line, keep_newlines=True))
                sys.stdout.flush()
                continue
            # At the end of the file: an ended job writes no more. Its last lines were written before
            # its status changed, so whatever came since the read above is printed before stopping.
            now = queue.get(row["id"])
            if now is None or now["status"] in FINAL:
                sys.stdout.write(safe(handle.read(), keep_newlines=True))
                sys.stdout.flush()
                break
            time.sleep(0.5)
    return 0


def tensorboard_arguments(parser) -> None:
    job_argument(parser)
    schema_option(parser, "--port", DaemonConfig, "tensorboard_port", type=int, config_value=True)


def _stop_group(child: subprocess.Popen, grace: float = 10.0) -> None:
    """End TensorBoard and whatever it started (its data server): the whole process group, politely first."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            break
        try:
            child.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    child.poll()


def cmd_tensorboard(args) -> int:
    daemon = daemon_of(args)
    row = find_job(_queue(daemon), args.job)
    logdir = Path(row["job_dir"]) / "tb"
    port = args.port or daemon.config.tensorboard_port
    print(f"TensorBoard for job {row['id']} at http://127.0.0.1:{port}/ (Ctrl-C stops it)", flush=True)
    # SIGTERM or SIGHUP (a closed terminal, systemd, kill) leave through the same `finally` as Ctrl-C,
    # set before the child exists, so no signal can come between its start and our way to stop it.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    # Its own process group, so one killpg ends TensorBoard and its data server together; and Linux
    # sends it SIGTERM should this process die without running `finally` (kill -9).
    # Bound to 127.0.0.1: nothing animad starts listens on other interfaces.
    child = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                              "127.0.0.1", "--port", str(port)], process_group=0, preexec_fn=die_with_parent)
    try:
        return child.wait()
    finally:
        _stop_group(child)


VERBS = [
    Verb("run", "run the daemon in the foreground (journald-friendly)", run_arguments, cmd_run),
    Verb("status", "show the queue (each job's phase, progress and ETA) and the inbox (settling, rejected, "
         "being accepted)", status_arguments, cmd_status),
    Verb("pause", "pause a job (it saves state and waits)", job_argument, cmd_pause),
    Verb("resume", "resume a paused job", resume_arguments, cmd_resume),
    Verb("cancel", "cancel a job (its files are kept)", job_argument, cmd_cancel),
    Verb("retry", "queue a failed or cancelled job again", job_argument, cmd_retry),
    Verb("keep", "keep one epoch of a finished job: copy it as <name>-eNNNN.safetensors into outbox/<name>/kept/ "
         "and into comfyui_loras if set (never over a file)", keep_arguments, cmd_keep),
    Verb("logs", "print a job's log", logs_arguments, cmd_logs),
    Verb("tensorboard", "start TensorBoard for a job on 127.0.0.1", tensorboard_arguments, cmd_tensorboard),
]
