"""Starting the real daemon process on a temp dir, and waiting on its queue."""

from __future__ import annotations

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


def configure(config: Path, **settings) -> Path:
    data = yaml.safe_load(config.read_text())
    data.update({"settle_seconds": 1.0, "inhibit_sleep": False, "windows": ["always"], **settings})
    config.write_text(yaml.safe_dump(data))
    return config


class DaemonProcess:
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

    def stop(self, timeout=60) -> int:
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
        for row in self.queue.by_status("running", "selecting"):
            try:
                os.killpg(os.getpgid(row["pid"]), signal.SIGKILL)
            except (ProcessLookupError, TypeError):
                pass
        self.process.kill()
        self.process.wait()
        self.log.close()

    def log_text(self) -> str:
        return (self.root / "daemon.log").read_text()

    def wait(self, predicate, timeout=240, what="condition"):
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

    def job(self, name: str) -> dict | None:
        rows = [r for r in self.queue.all() if r["name"] == name]
        return rows[-1] if rows else None

    def wait_status(self, name: str, *statuses, timeout=240) -> dict:
        return self.wait(lambda: (row := self.job(name)) and row["status"] in statuses and row,
                         timeout, f"{name} to be {statuses}")


def drop(staging: Path, inbox: Path) -> Path:
    inbox.mkdir(parents=True, exist_ok=True)
    target = inbox / staging.name
    shutil.move(str(staging), target)
    return target
