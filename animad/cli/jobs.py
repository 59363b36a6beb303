"""Verbs that run the daemon or talk to it through its SQLite queue: run, status, pause, resume, ..."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from animad.cli.common import Verb, daemon_of, schema_option
from animad.config.daemon import DaemonConfig
from animad.config.window import parse_windows
from animad.daemon.inbox import describe_folder, inbox_view
from animad.daemon.progress import first_line, progress_figures
from animad.daemon.queue import Queue, pid_alive, queue_path
from animad.daemon.rebuild import clear_cancelled, mark_cancelled
from animad.daemon.service import Service, gone_message, job_folder_gone
from animad.daemon.states import ACTIVE, FINAL, RUNNABLE, Request, Status
from animad.daemon.window import is_open, local_now, next_close, next_open
from animad.errors import UserError
from animad.layout import JobPaths
from animad.logs import setup_logging
from animad.safe_text import safe
from animad.signals import die_with_parent


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
    clock = time.time()
    # A row says running only while its process lives: one that exited (a full disk can keep the
    # daemon from recording it) shows that, never its last rate and ETA.
    shown = {r["id"]: progress_figures(r, clock, pid_alive(r["pid"]) if r["status"] in ACTIVE and r["pid"] else None)
             for r in rows}
    many_slots = len(daemon.slot_devices()) > 1
    for row in rows:  # with parallel_jobs each running job says which GPU it has (--json: shown.gpu too)
        shown[row["id"]]["gpu"] = where_it_runs(row, shown[row["id"]]) if many_slots else None
    inbox = inbox_view(daemon, rows, alive, clock)
    if args.json:
        jobs = [{**r, "shown": shown[r["id"]]} for r in rows]
        print(json.dumps({"daemon": {"running": alive, "pid": daemon_pid if alive else None},
                          "window": {"open": open_now, "next_change": change.isoformat() if change else None},
                          "jobs": jobs, "inbox": inbox}, indent=2, default=str))
        return 0
    state = f"running (pid {daemon_pid})" if alive else "not running (start it with: animad run)"
    when = f", {'closes' if open_now else 'opens'} {change:%a %H:%M}" if change else ""
    print(f"daemon: {state}; window {'open' if open_now else 'closed'}{when}")
    if not rows and not inbox:
        print("no jobs yet: drop a folder into", safe(daemon.dir("inbox")))
        return 0
    if rows:
        print_jobs(rows, shown, gpu_column=many_slots)
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


def status_word(row: dict, shown: dict) -> str:
    if shown["phase"] == "exited":
        return "exited"  # the row still says running; its process is gone (the line beside it says so)
    return row["status"] + (" (held)" if row["held"] and row["status"] in RUNNABLE else "")


def where_it_runs(row: dict, shown: dict) -> str | None:
    """"gpu 1" for a job running in a parallel_jobs slot (the GPU its child was pinned to); None otherwise."""
    if row["status"] not in ACTIVE or shown["phase"] == "exited" or row.get("slot") is None:
        return None
    return f"gpu {row['gpu']}" if row.get("gpu") is not None else f"slot {row['slot']}"


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
    daemon = daemon_of(args)
    queue = _queue(daemon)
    rows = [_job(queue, args.job)] if args.job else [r for r in queue.by_status(*RUNNABLE) if r["held"]
                                                      or r["status"] == Status.PAUSED]
    if not rows:
        print("no paused jobs")
        return 0
    for row in rows:
        if row["status"] not in RUNNABLE:
            raise UserError(f"job {row['id']} is {row['status']}; only paused or queued jobs can be resumed")
        queue.update(row["id"], held=0, request=None, run_now=1 if args.now else row["run_now"])
        print(f"job {row['id']} ({safe(row['name'])}) {when_it_resumes(daemon, queue, row, args.now)}")
    return 0


def when_it_resumes(daemon, queue: Queue, row: dict, now: bool) -> str:
    """The truth about when a released job starts: now (within a tick), after the running job, or in the window."""
    pid_file = daemon.dir("state") / "daemon.pid"
    text = pid_file.read_text().strip() if pid_file.is_file() else ""
    if not pid_alive(int(text) if text.isdigit() else None):
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


def cmd_cancel(args) -> int:
    queue = _queue(daemon_of(args))
    row = _job(queue, args.job)
    if row["status"] in (Status.DONE, Status.CANCELLED):
        raise UserError(f"job {row['id']} is already {row['status']}")
    # Recorded in the job folder too: a queue rebuilt from the job folders keeps it cancelled.
    try:
        mark_cancelled(row)
    except OSError as error:
        print(f"note: could not record the cancel in its job folder ({safe(error)}); a queue rebuilt from the "
              "job folders would queue it again", file=sys.stderr)
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
    if not row["job_dir"]:
        raise UserError(f"job {row['id']} never got a job folder; drop the dataset folder into the inbox again")
    if job_folder_gone(row):
        raise UserError(f"job {row['id']} cannot be retried: {gone_message(row)}")
    if not (Path(row["job_dir"]) / "job.resolved.yaml").is_file():
        raise UserError(f"job {row['id']}: {safe(row['job_dir'])} has no job.resolved.yaml (its acceptance never "
                        "finished); drop the dataset folder into the inbox again")
    clear_cancelled(Path(row["job_dir"]))
    queue.update(row["id"], status=Status.QUEUED, held=0, request=None, error=None, outcome=None, resume_first=1)
    print(f"job {row['id']} queued again; it resumes from its last saved state ({row['phase']} phase)")
    return 0


def logs_arguments(parser) -> None:
    job_argument(parser)
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing new lines until the job ends (done, failed or cancelled); a paused "
                             "job is followed on, since it resumes in the next window")


def cmd_logs(args) -> int:
    queue = _queue(daemon_of(args))
    row = _job(queue, args.job)
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
    row = _job(_queue(daemon), args.job)
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
    Verb("logs", "print a job's log", logs_arguments, cmd_logs),
    Verb("tensorboard", "start TensorBoard for a job on 127.0.0.1", tensorboard_arguments, cmd_tensorboard),
]
