"""The words a job row is made of: its status, a pending request from the CLI, and how its last phase ended.

Str-valued enums: SQLite stores exactly the text it stored before (old databases keep working), rows
read back compare equal to plain strings, and JSON prints them as strings.
"""

from __future__ import annotations

import enum

from animad.outcomes import Exit


class Status(enum.StrEnum):
    ACCEPTING = "accepting"  # the row exists, the dataset is being frozen into the job folder
    QUEUED = "queued"
    RUNNING = "running"  # a child trains it
    SELECTING = "selecting"  # a child renders previews and writes the review package
    PAUSED = "paused"  # state saved; resumes in the next window (or after `animad resume` when held)
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (Status.RUNNING, Status.SELECTING)  # a child process owns the row
RUNNABLE = (Status.QUEUED, Status.PAUSED)
FINAL = (Status.DONE, Status.FAILED, Status.CANCELLED)


class Request(enum.StrEnum):
    """What the CLI asks of a running job; the daemon reads it from the row on its next tick."""

    PAUSE = "pause"
    CANCEL = "cancel"


class Outcome(enum.StrEnum):
    """How the last phase ended, as the child wrote it into the row (the exit code says the same)."""

    FINISHED = "finished"
    PAUSED = "paused"
    USER_ERROR = "user_error"
    CRASH = "crash"

    @property
    def exit(self) -> Exit:
        """The exit code that says the same (for a job adopted from an earlier daemon, whose code is lost)."""
        return EXIT_OF[self]


EXIT_OF = {Outcome.FINISHED: Exit.FINISHED, Outcome.PAUSED: Exit.PAUSED, Outcome.USER_ERROR: Exit.USER_ERROR,
           Outcome.CRASH: Exit.CRASH}


class Phase(enum.StrEnum):
    """What a (re)started job runs next."""

    TRAIN = "train"
    SELECT = "select"

    @property
    def status(self) -> Status:
        """The row's status while a child runs this phase."""
        return Status.RUNNING if self is Phase.TRAIN else Status.SELECTING
