"""Keep the machine awake while a job runs (`inhibit_sleep: true`), through systemd-inhibit where there is one."""

from __future__ import annotations

import shutil
import subprocess


class SleepInhibitor:
    """A `systemd-inhibit ... sleep infinity` child: logind blocks sleep for as long as it lives."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.process: subprocess.Popen | None = None

    def hold(self, why: str) -> None:
        if not self.enabled or self.process is not None or not shutil.which("systemd-inhibit"):
            return
        try:
            self.process = subprocess.Popen(
                ["systemd-inhibit", "--what=sleep:idle", "--who=animad", f"--why={why}", "--mode=block",
                 "sleep", "infinity"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            self.process = None  # no logind (a container, WSL): training goes on, only sleep is not blocked

    def release(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process = None
