"""CLI verbs that talk to the daemon through its SQLite queue: run, status, pause, resume, ..."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

from animad.config.daemon import find_config_path, load_daemon_config
from animad.daemon.queue import Queue, pid_alive
from animad.errors import UserError


def _daemon(args):
    return load_daemon_config(find_config_path(getattr(args, "config", None)))


def _queue(daemon) -> Queue:
    from animad.daemon.service import queue_path

    return Queue(queue_path(daemon))


def _job(queue: Queue, key: str) -> dict:
    rows = queue.find(key)
    if not rows:
        raise UserError(f"no job '{key}'; see 'animad status'")
    if len(rows) > 1:
        ids = ", ".join(str(r["id"]) for r in rows)
        raise UserError(f"several jobs are named '{key}' (ids {ids}); give the id")
    return rows[0]


def locate_job(args):
    """For `animad select JOB`: (JobPaths, outbox dir) of a queued job, or None."""
    from animad.layout import JobPaths

    try:
        daemon = _daemon(args)
        queue = _queue(daemon)
        row = _job(queue, args.job)
    except UserError:
        return None
    return JobPaths(Path(row["job_dir"])), Path(row["outbox_dir"])


def cmd_run(args) -> int:
    from animad.daemon.service import Service
    from animad.logs import setup_logging

    setup_logging(stream=sys.stdout)
    daemon = _daemon(args)
    return Service(daemon, now_once=args.now, exit_when_idle=args.once).run()


def _duration(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def describe_progress(row: dict) -> str:
    p = row.get("progress") or {}
    if row["status"] == "failed":
        return (row.get("error") or "").splitlines()[0][:80] if row.get("error") else "failed"
    if row["status"] == "done":
        return f"review: {row['outbox_dir']}/index.html"
    if not p:
        return ""
    if "s_per_it" in p:
        phase = "" if p.get("phase") == "training" else f" ({p.get('phase')})"
        return (f"epoch {p['epoch']}/{p['max_epochs']} step {p['step']}/{p['total_steps']} loss {p['loss']:.4f} "
                f"{p['s_per_it']:.2f} s/it ETA {_duration(p.get('eta_seconds'))}{phase}")
    if p.get("phase") == "caching" and p.get("total"):
        return f"caching latents {p['done']}/{p['total']}"
    if "epoch" in p:
        return f"{p.get('phase')} (epoch {p['epoch']})"
    return str(p.get("phase", ""))


def cmd_status(args) -> int:
    from animad.daemon.window import Clock, is_open, next_close, next_open, parse_windows

    daemon = _daemon(args)
    queue = _queue(daemon)
    rows = queue.all()
    pid_file = daemon.dir("state") / "daemon.pid"
    daemon_pid = int(pid_file.read_text()) if pid_file.is_file() and pid_file.read_text().strip().isdigit() else None
    alive = pid_alive(daemon_pid)
    windows = parse_windows(daemon.config.windows)
    now = Clock().now()
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
        print("no jobs yet: drop a folder into", daemon.dir("inbox"))
        return 0
    print(f"{'ID':>4}  {'NAME':<20} {'STATUS':<10} {'CREATED':<16} PROGRESS")
    for row in rows:
        created = dt.datetime.fromtimestamp(row["created"]).strftime("%Y-%m-%d %H:%M")
        status = row["status"] + (" (held)" if row["held"] and row["status"] in ("paused", "queued") else "")
        print(f"{row['id']:>4}  {row['name'][:20]:<20} {status:<10} {created:<16} {describe_progress(row)}")
    # The table cuts reasons short; a failure's whole first line says what to do, so show it in full.
    for row in [r for r in rows if r["status"] == "failed" and r.get("error")][-3:]:
        print(f"\njob {row['id']} ({row['name']}) failed: {row['error'].splitlines()[0]}")
        if row["job_dir"]:
            print(f"    once fixed: animad retry {row['id']}    (log: animad logs {row['id']})")
    return 0


def cmd_pause(args) -> int:
    queue = _queue(_daemon(args))
    row = _job(queue, args.job)
    if row["status"] in ("done", "failed", "cancelled"):
        raise UserError(f"job {row['id']} is {row['status']}; nothing to pause")
    if row["status"] in ("running", "selecting"):
        queue.update(row["id"], held=1, request="pause")
        print(f"job {row['id']} will save its state at the next step and pause")
    else:
        queue.update(row["id"], held=1)
        print(f"job {row['id']} is held; 'animad resume {row['id']}' lets it run again")
    return 0


def cmd_resume(args) -> int:
    queue = _queue(_daemon(args))
    rows = [_job(queue, args.job)] if args.job else [r for r in queue.by_status("paused", "queued") if r["held"]
                                                      or r["status"] == "paused"]
    if not rows:
        print("no paused jobs")
        return 0
    for row in rows:
        if row["status"] not in ("paused", "queued"):
            raise UserError(f"job {row['id']} is {row['status']}; only paused or queued jobs can be resumed")
        queue.update(row["id"], held=0, request=None, run_now=1 if args.now else row["run_now"])
        when = "now" if args.now else "in the next window"
        print(f"job {row['id']} ({row['name']}) resumes {when}")
    return 0


def cmd_cancel(args) -> int:
    queue = _queue(_daemon(args))
    row = _job(queue, args.job)
    if row["status"] in ("done", "cancelled"):
        raise UserError(f"job {row['id']} is already {row['status']}")
    if row["status"] in ("running", "selecting"):
        queue.update(row["id"], request="cancel")
        print(f"job {row['id']} will stop at the next step; its files are kept in {row['job_dir']}")
    else:
        queue.update(row["id"], status="cancelled", finished=time.time())
        print(f"job {row['id']} cancelled; its files are kept in {row['job_dir']}")
    return 0


def cmd_retry(args) -> int:
    queue = _queue(_daemon(args))
    row = _job(queue, args.job)
    if row["status"] not in ("failed", "cancelled"):
        raise UserError(f"job {row['id']} is {row['status']}; only failed or cancelled jobs can be retried")
    if not row["job_dir"] or not (Path(row["job_dir"]) / "job.resolved.yaml").is_file():
        raise UserError(f"job {row['id']} never got a job folder; drop the dataset folder into the inbox again")
    queue.update(row["id"], status="queued", held=0, request=None, error=None, outcome=None, resume_first=1)
    print(f"job {row['id']} queued again; it resumes from its last saved state ({row['phase']} phase)")
    return 0


def cmd_logs(args) -> int:
    queue = _queue(_daemon(args))
    row = _job(queue, args.job)
    log = Path(row["job_dir"] or "") / "train.log"
    if not log.is_file():
        raise UserError(f"job {row['id']} has no log yet ({log})")
    with open(log, encoding="utf-8", errors="replace") as handle:
        sys.stdout.write(handle.read())
        while args.follow:
            line = handle.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.5)
    return 0


def cmd_tensorboard(args) -> int:
    daemon = _daemon(args)
    row = _job(_queue(daemon), args.job)
    logdir = Path(row["job_dir"]) / "tb"
    port = args.port or daemon.config.tensorboard_port
    print(f"TensorBoard for job {row['id']} at http://127.0.0.1:{port}/ (Ctrl-C stops it)")
    # Bound to 127.0.0.1: nothing animad starts listens on other interfaces.
    return subprocess.call([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                            "127.0.0.1", "--port", str(port)])
