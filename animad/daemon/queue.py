"""The durable job queue: one SQLite table (WAL mode), rows are never deleted.

Status (the words are in daemon/states.py): accepting -> queued -> running <-> paused -> selecting ->
done, or failed (with a reason) or cancelled. `phase` says what a (re)started job runs next: train or
select. A row left `running` by a dead process is recovered at startup: it goes back to the front of
the queue and resumes from its saved state, so nobody ever has to edit the database by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from animad.daemon.states import ACTIVE, RUNNABLE, Outcome, Phase, Request, Status

SCHEMA = """
create table if not exists jobs (
    id integer primary key autoincrement,
    name text not null,
    status text not null,
    phase text not null default 'train',
    priority integer not null default 0,
    resume_first integer not null default 0,
    held integer not null default 0,
    run_now integer not null default 0,
    request text,
    source text,
    job_dir text,
    outbox_dir text,
    attempts integer not null default 0,
    pid integer,
    heartbeat real,
    progress text,
    error text,
    outcome text,
    created real not null,
    started real,
    finished real,
    updated real
);
create index if not exists jobs_status on jobs(status);
"""

def queue_path(daemon) -> Path:
    """The queue database of a daemon config (its state dir)."""
    return daemon.dir("state") / "animad.sqlite"


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class Queue:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self.connect() as db:
            db.executescript(SCHEMA)

    @contextlib.contextmanager
    def connect(self):
        # One connection per thread, kept open: SQLite then keeps its -wal/-shm files instead of
        # deleting them after every call and creating them again, so the queue can still be read
        # (and usually written) when the disk is full, and calls skip the setup pragmas.
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("pragma busy_timeout=30000")
            if db.execute("pragma journal_mode").fetchone()[0] != "wal":
                db.execute("pragma journal_mode=wal")
            db.execute("pragma synchronous=normal")
            self._local.db = db
        yield db

    @contextlib.contextmanager
    def transaction(self):
        with self.connect() as db:
            db.execute("begin immediate")
            try:
                yield db
                db.execute("commit")
            except BaseException:
                if db.in_transaction:
                    db.execute("rollback")
                raise

    # -- reading ---------------------------------------------------------------------------------

    def get(self, job_id: int) -> dict | None:
        with self.connect() as db:
            row = db.execute("select * from jobs where id = ?", (job_id,)).fetchone()
        return self._row(row)

    def all(self) -> list[dict]:
        with self.connect() as db:
            return [self._row(r) for r in db.execute("select * from jobs order by id")]

    def find(self, key: str) -> list[dict]:
        """Rows matching an id, or a name (newest first)."""
        with self.connect() as db:
            if str(key).isdigit():
                rows = db.execute("select * from jobs where id = ?", (int(key),)).fetchall()
            else:
                rows = db.execute("select * from jobs where name = ? order by id desc", (key,)).fetchall()
        return [self._row(r) for r in rows]

    def by_status(self, *statuses: Status) -> list[dict]:
        marks = ",".join("?" * len(statuses))
        with self.connect() as db:
            rows = db.execute(f"select * from jobs where status in ({marks}) order by id", statuses).fetchall()
        return [self._row(r) for r in rows]

    def next_runnable(self, window_open: bool) -> dict | None:
        """Paused and recovered jobs first, then priority, then first-in-first-out.

        Outside the window only jobs marked run_now may start.
        """
        with self.connect() as db:
            row = db.execute(
                "select * from jobs where status in (?, ?) and held = 0 and request is null "
                "and (? or run_now = 1) order by resume_first desc, priority desc, id asc limit 1",
                (*RUNNABLE, 1 if window_open else 0)).fetchone()
        return self._row(row)

    @staticmethod
    def _row(row) -> dict | None:
        if row is None:
            return None
        out = dict(row)
        out["progress"] = json.loads(out["progress"]) if out.get("progress") else None
        out["status"], out["phase"] = Status(out["status"]), Phase(out["phase"])
        out["request"] = Request(out["request"]) if out["request"] else None
        out["outcome"] = Outcome(out["outcome"]) if out["outcome"] else None
        return out

    # -- writing ---------------------------------------------------------------------------------

    def add(self, name: str, source: str, priority: int = 0) -> int:
        now = time.time()
        with self.transaction() as db:
            cursor = db.execute("insert into jobs (name, status, source, priority, created, updated) "
                                "values (?, ?, ?, ?, ?, ?)", (name, Status.ACCEPTING, source, priority, now, now))
            return cursor.lastrowid

    def update(self, job_id: int, **fields) -> None:
        if "progress" in fields and fields["progress"] is not None and not isinstance(fields["progress"], str):
            fields["progress"] = json.dumps(fields["progress"])
        fields["updated"] = time.time()
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as db:
            db.execute(f"update jobs set {assignments} where id = ?", (*fields.values(), job_id))

    def claim(self, job_id: int, status: Status, pid: int) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute("update jobs set status = ?, pid = ?, heartbeat = ?, started = coalesce(started, ?), "
                       "attempts = attempts + 1, updated = ? where id = ?", (status, pid, now, now, now, job_id))

    def heartbeat(self, job_id: int, progress: dict | None = None) -> None:
        now = time.time()
        with self.transaction() as db:
            if progress is None:
                db.execute("update jobs set heartbeat = ? where id = ?", (now, job_id))
            else:
                db.execute("update jobs set heartbeat = ?, progress = ? where id = ?",
                           (now, json.dumps(progress), job_id))

    def outbox_names_in_use(self) -> set[str]:
        with self.connect() as db:
            return {Path(r[0]).name for r in db.execute("select outbox_dir from jobs where outbox_dir is not null")}

    def recover(self) -> list[int]:
        """At startup: rows left running/selecting by a process that is gone go back to the front."""
        recovered = []
        for row in self.by_status(*ACTIVE):
            if pid_alive(row["pid"]):
                continue  # still running (an orphan from a previous daemon): the service adopts it
            self.update(row["id"], status=Status.QUEUED, resume_first=1, pid=None,
                        error=f"recovered after the process {row['pid']} disappeared")
            recovered.append(row["id"])
        return recovered
