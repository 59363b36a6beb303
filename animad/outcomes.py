"""How a job phase ends, as a process exit code: shared by `animad train`, the job child and the daemon."""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    FINISHED = 0
    CRASH = 1
    USER_ERROR = 2
    PAUSED = 75  # EX_TEMPFAIL: stopped at a step boundary with its state saved; run again to resume
    # EX_CONFIG: the daemon met something it must not repair alone (its queue database cannot be
    # rebuilt); the unit's RestartPreventExitStatus keeps systemd from restarting it in a loop.
    NEEDS_PERSON = 78
