"""Keep the machine awake while a job runs (`inhibit_sleep: true`), through systemd-inhibit where there is one."""

from __future__ import annotations

import logging
import shutil
import subprocess

log = logging.getLogger("animad.daemon")

START_WAIT = 1.0  # systemd-inhibit that cannot reach logind exits at once; one that holds the lock runs on


class SleepInhibitor:
    """A `systemd-inhibit ... sleep infinity` child: logind blocks sleep for as long as it lives.

    Where it cannot take the lock (no system bus: WSL, a container) it exits at once: that is said
    once in the log, with its own words, and it is reaped (no zombie under the daemon); training
    goes on, only sleep is not blocked, and no later job tries again.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.process: subprocess.Popen | None = None
        self.unavailable: str | None = None  # why the lock cannot be taken here (said once)

    def hold(self, why: str) -> None:
        if not self.enabled or self.process is not None or self.unavailable is not None:
            return
        if not shutil.which("systemd-inhibit"):
            self.give_up("systemd-inhibit is not installed")
            return
        try:
            self.process = subprocess.Popen(
                ["systemd-inhibit", "--what=sleep:idle", "--who=animad", f"--why={why}", "--mode=block",
                 "sleep", "infinity"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as error:
            self.give_up(str(error))
            return
        try:
            self.process.wait(timeout=START_WAIT)
        except subprocess.TimeoutExpired:
            return  # holding the lock
        self.check()

    def check(self) -> None:
        """Reap a systemd-inhibit that ended (it could not take the lock, or someone killed it) and say why."""
        if self.process is None or self.process.poll() is None:
            return
        process, self.process = self.process, None
        try:
            words = process.stderr.read().decode("utf-8", "replace").strip() if process.stderr else ""
        except OSError:
            words = ""
        finally:
            if process.stderr:
                process.stderr.close()
        self.give_up(words.splitlines()[-1] if words else f"systemd-inhibit exited with code {process.returncode}")

    def give_up(self, reason: str) -> None:
        self.unavailable = reason
        log.warning("inhibit_sleep: the machine's sleep cannot be blocked (%s); training goes on, but the machine "
                    "may sleep during a job: keep it awake another way, or set inhibit_sleep: false in "
                    "animad.yaml to say this is fine", reason)

    def release(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)  # reaped: no zombie left under the daemon
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            if self.process.stderr:
                self.process.stderr.close()
            self.process = None
