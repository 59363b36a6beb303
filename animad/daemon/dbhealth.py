"""The queue database going away under a running daemon: noticed at the next tick, put back, and logged.

A person or a clean-up script may remove `state/animad.sqlite*`, or truncate the file, while the
daemon runs. Without a look, the daemon would go on writing into a file nobody else can see (the CLI
would say "no jobs yet"), or into a truncated one the CLI cannot read at all (and the next job child
could not open). So every tick looks at the file (one stat, never an open: see file_problem):

- removed, or replaced by another file (a CLI made a new empty one): the daemon still has the old file
  open, whole, so it copies it back to the path with SQLite's backup: every row kept as it was;
- truncated: what it held is gone; what is left is kept aside as
  `animad.sqlite.lost-<time>` (never deleted) and the queue is rebuilt from the job folders, as at a
  start after a damaged database; the jobs running now get their rows back as running, with their pids.

Every other process (job children, the dashboard, the CLI) follows the new file by itself (Queue's
follow_file). One log line says what happened and what was done.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from animad.daemon.queue import CorruptDatabase, Queue, file_identity

log = logging.getLogger("animad.daemon")

MIN_SIZE = 512  # the smallest page SQLite writes: a database file in use is never shorter


def file_problem(path: Path, identity: tuple[int, int] | None) -> str | None:
    """What happened to the queue's file since the daemon opened it ("removed", ...), or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "removed"
    except OSError:
        return None  # cannot tell (permissions?): the queue's own calls will say what is wrong
    if identity is not None and (st.st_dev, st.st_ino) != identity:
        return "replaced by another file"
    # Never opened here to read its header: closing any descriptor of the file drops every POSIX lock
    # this process holds on it, SQLite's included (another process would then take the daemon's
    # database for unused, and checkpoint and delete its WAL under it). A database in WAL mode is a
    # page at least (its header says WAL), so a shorter file was cut.
    if st.st_size < MIN_SIZE:
        return "truncated"
    return None


class DatabaseWatch:
    """The daemon's look at its queue file, once a tick; `repair` puts it right and says so."""

    def __init__(self, queue: Queue):
        self.queue = queue
        self.identity: tuple[int, int] | None = None

    def arm(self) -> None:
        """Remember the file the daemon has open now (at start, and after each repair)."""
        with self.queue.connect():
            pass
        self.identity = file_identity(self.queue.path)

    def repair(self, rebuild, running: dict[int, tuple]) -> str | None:
        """Put the file back or rebuild it if something happened to it; what was done (None: nothing).

        rebuild() registers the job folders again (rebuild.adopt_job_folders); `running` maps the job
        ids of the children running now to (status, phase, pid, slot), written back into their rows.
        """
        problem = file_problem(self.queue.path, self.identity)
        if problem is None:
            return None
        path = self.queue.path
        done = None
        if problem in ("removed", "replaced by another file"):
            done = self.copy_back()
        if done is None:
            done = self.rebuild(rebuild, running)
        self.queue.reopen()
        self.arm()
        message = f"the queue database {path} was {problem} while the daemon ran; {done}"
        log.error(message)
        return message

    def copy_back(self) -> str | None:
        """The old file, still open here, copied whole to the path (None: it could not be)."""
        old = self.queue.open_connection()
        if old is None:
            return None
        try:
            target = sqlite3.connect(self.queue.path, timeout=5)
            try:
                old.backup(target)
            finally:
                target.close()
        except (sqlite3.Error, OSError) as error:
            log.warning("could not copy the open queue back to %s (%s); rebuilding it from the job folders",
                        self.queue.path, error)
            return None
        return "it was put back from the copy the daemon still had open (every job kept as it was)"

    def rebuild(self, rebuild, running: dict[int, tuple]) -> str:
        """Keep what is left aside, start a new file, register the job folders, mark the running jobs."""
        self.queue.reopen()  # closes this thread's connection first: nothing more goes into the old file
        path = self.queue.path
        aside = path.with_name(f"{path.name}.lost-{time.strftime('%Y%m%d-%H%M%S')}")
        kept = []
        for suffix in ("", "-wal", "-shm"):  # the journal files belong to the old file, not the new one
            part = Path(f"{path}{suffix}")
            try:
                os.rename(part, f"{aside}{suffix}")
                kept.append(f"{aside.name}{suffix}")
            except FileNotFoundError:
                pass
        try:
            self.queue.check()
        except CorruptDatabase as error:  # not a fresh file after all: say so; the next tick looks again
            return f"a new queue could not be made ({error.problem}); it is tried again"
        adopted = rebuild()
        for job_id, (status, phase, pid, slot) in running.items():
            self.queue.update(job_id, status=status, phase=phase, pid=pid, slot=slot, error=None)
        what = f"what was left is kept as {', '.join(kept)}; " if kept else ""
        return (f"{what}the queue was rebuilt from the job folders ({len(adopted)} job"
                f"{'s' if len(adopted) != 1 else ''}); a job running now goes on")
