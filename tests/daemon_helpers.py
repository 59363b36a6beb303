"""The daemon on a temp dir: as a real process (`animad run`), or its Service ticked in this process at a
local time the test sets; either way with real SQLite, a real watchdog and real job children."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

from animad.config.daemon import load_daemon_config
from animad.daemon.queue import Queue
from animad.daemon.service import Service
from animad.daemon.states import ACTIVE

# How long a wait may take before the test calls it hung. A guard, never a speed budget: CI runs on a
# busy 2-core machine, where a tiny training run can take minutes; every wait is for a state.
HANG_SECONDS = 1800


def configure(config: Path, **settings) -> Path:
    data = yaml.safe_load(config.read_text())
    data.update({"settle_seconds": 1.0, "inhibit_sleep": False, "windows": ["always"], **settings})
    config.write_text(yaml.safe_dump(data))
    return config


class JobRows:
    """Reading a daemon's queue by job name (self.queue) and waiting (self.wait) for a job's status."""

    def job(self, name: str) -> dict | None:
        rows = [r for r in self.queue.all() if r["name"] == name]
        return rows[-1] if rows else None

    def wait_status(self, name: str, *statuses, timeout=HANG_SECONDS) -> dict:
        return self.wait(lambda: (row := self.job(name)) and row["status"] in statuses and row,
                         timeout, f"{name} to be {statuses}")


class DaemonProcess(JobRows):
    def __init__(self, config: Path, env: dict | None = None):
        self.config = config
        self.root = config.parent
        self.env = {**os.environ, **(env or {})}
        self.process = None
        self.queue = Queue(load_daemon_config(config).dir("state") / "animad.sqlite")

    def start(self) -> "DaemonProcess":
        self.log = open(self.root / "daemon.log", "a")
        self.process = subprocess.Popen([sys.executable, "-m", "animad", "--config", str(self.config), "run"],
                                        stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root)
        return self

    def stop(self, timeout=HANG_SECONDS) -> int:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode

    def kill_everything(self) -> None:
        """kill -9 the daemon and its running job (a power cut, as far as the processes can tell)."""
        for row in self.queue.by_status(*ACTIVE):
            try:
                os.killpg(os.getpgid(row["pid"]), signal.SIGKILL)
            except (ProcessLookupError, TypeError):
                pass
        self.process.kill()
        self.process.wait()
        self.log.close()

    def kill_daemon_then_job(self) -> None:
        """kill -9 the daemon, then at once its running job: the daemon has no moment in which to see
        its job die and record that (kill_everything kills the job first)."""
        groups = []
        for row in self.queue.by_status(*ACTIVE):
            try:
                groups.append(os.getpgid(row["pid"]))
            except (ProcessLookupError, TypeError):
                pass
        self.process.kill()
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        self.log.close()

    def log_text(self) -> str:
        return (self.root / "daemon.log").read_text()

    def wait(self, predicate, timeout=HANG_SECONDS, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = predicate()
            except sqlite3.OperationalError:  # e.g. a full disk in the disk-full test: look again
                value = None
            if value:
                return value
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited ({self.process.returncode}) while waiting for {what}:\n"
                                     + self.log_text()[-4000:])
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n" + self.log_text()[-4000:])


class ServiceInProcess(JobRows):
    """The daemon's Service in this process, ticked at `now`, a local time the test sets (and moves).

    What `animad run` does, minus the signal handlers and the real clock: the window follows `now`;
    everything else is real, and the test waits for states, ticking between looks.
    """

    def __init__(self, config: Path, now: dt.datetime):
        self.service = Service(load_daemon_config(config))
        self.queue = self.service.queue
        self.now = now
        self.service.open()

    def tick(self, times: int = 1) -> None:
        for _ in range(times):
            self.service.tick(self.now)
            self.service.wake.wait(0.05)  # a short nap, woken early by inbox events
            self.service.wake.clear()

    def wait(self, predicate, timeout=HANG_SECONDS, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.tick()
            value = predicate()
            if value:
                return value
        rows = [(r["name"], r["status"], r["error"]) for r in self.queue.all()]
        raise AssertionError(f"timed out waiting for {what}; jobs: {rows}")


    def close(self) -> None:
        """What SIGTERM does to `animad run`: a running job saves its state and stops, then all is let go."""
        self.service.stop()
        self.wait(lambda: self.service.runner.child is None, what="the running job to stop")
        self.service.close()


def drop(staging: Path, inbox: Path) -> Path:
    inbox.mkdir(parents=True, exist_ok=True)
    target = inbox / staging.name
    shutil.move(str(staging), target)
    return target


def hashes(folder: Path) -> dict[str, str]:
    """Every file under folder by its relative path, with its sha256: what "nothing lost or changed" compares."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
