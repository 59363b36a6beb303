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

from animad.daemon import chain
from animad.daemon.states import ACTIVE, RUNNABLE, Outcome, Phase, Request, Status
from animad.errors import UserError

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
    slot integer,
    gpu text,
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

# Columns added after the first release: a database made before them gets them in place at open
# (ALTER TABLE ADD COLUMN keeps every row), so an upgrade never needs a rebuild or a person.
ADDED_COLUMNS = {
    "slot": "integer",  # which job slot (parallel_jobs: which GPU's) the running child occupies
    "gpu": "text",  # the CUDA_VISIBLE_DEVICES the child was given (null: left as it was)
}


def add_missing_columns(db) -> None:
    have = {row[1] for row in db.execute("pragma table_info(jobs)")}
    for name, kind in ADDED_COLUMNS.items():
        if name in have:
            continue
        try:
            db.execute(f"alter table jobs add column {name} {kind}")
        except sqlite3.OperationalError as error:
            if "duplicate column" not in str(error):  # another process added it a moment ago: fine
                raise

def patiently(call, seconds: float = 30.0):
    """call(), retried while the database is locked by another process's setup (at most `seconds`)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# A row holds its job's name unless it is an accept that was rolled back (daemon/freeze.py roll_back:
# cancelled, never started, no job folder, no outbox folder): the folder it was for is taken again as a
# new job of the same name, and `animad pause <name>` or a chained job's `job:<name>` means that one.
HOLDS_NAME = "not (status = 'cancelled' and started is null and job_dir is null and outbox_dir is null)"


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


class CorruptDatabase(UserError):
    """The queue file is not a healthy SQLite database; `animad run` moves it aside and rebuilds it."""

    def __init__(self, path: Path, problem):
        self.path, self.problem = Path(path), str(problem)
        super().__init__(
            f"{path}: the queue database is damaged ({problem}). Start the daemon (`animad run`, or restart "
            f"the service): it keeps the damaged file as {Path(path).name}.corrupt-<time> and rebuilds the queue "
            f"from the job folders in {Path(path).parent / 'jobs'}.")


class Queue:
    # Opening is lazy (on the first call), so a damaged file is met as a CorruptDatabase naming it, in
    # the one place that can repair it (Service.open) or print it cleanly (the CLI), never a traceback.
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()

    @contextlib.contextmanager
    def connect(self):
        # One connection per thread, kept open: SQLite then keeps its -wal/-shm files instead of
        # deleting them after every call and creating them again, so the queue can still be read
        # (and usually written) when the disk is full, and calls skip the setup pragmas.
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                db.row_factory = sqlite3.Row
                db.execute("pragma busy_timeout=30000")
                # Two processes opening a new file at once (the daemon and a CLI on first start) race
                # to switch it to WAL and create the tables; the switch does not wait on SQLite's busy
                # handler, so the loser waits here instead of failing with "database is locked".
                patiently(lambda: db.execute("pragma journal_mode").fetchone()[0] == "wal"
                          or db.execute("pragma journal_mode=wal"))
                db.execute("pragma synchronous=normal")
                patiently(lambda: db.executescript(SCHEMA))
                patiently(lambda: add_missing_columns(db))
            except sqlite3.OperationalError:
                db.close()
                raise  # locked, busy, full, cannot open: a state to wait out or fix, not damage to repair
            except sqlite3.DatabaseError as error:  # "file is not a database", "disk image is malformed"
                db.close()
                raise CorruptDatabase(self.path, error) from None
            self._local.db = db
        yield db

    def check(self) -> None:
        """PRAGMA quick_check: raise CorruptDatabase unless the file is a healthy database."""
        try:
            with self.connect() as db:
                rows = [r[0] for r in db.execute("pragma quick_check").fetchall()]
        except sqlite3.OperationalError:
            raise
        except CorruptDatabase:
            raise
        except sqlite3.DatabaseError as error:
            raise CorruptDatabase(self.path, error) from None
        if rows != ["ok"]:
            raise CorruptDatabase(self.path, "; ".join(rows[:3]))

    def disconnect(self) -> None:
        """Close this thread's connection (before the file is moved aside)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

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
        """Rows matching an id, or a name (newest first; an accept that was rolled back holds no name)."""
        with self.connect() as db:
            if str(key).isdigit():
                rows = db.execute("select * from jobs where id = ?", (int(key),)).fetchall()
            else:
                rows = db.execute(f"select * from jobs where name = ? and {HOLDS_NAME} order by id desc",
                                  (key,)).fetchall()
        return [self._row(r) for r in rows]

    def by_status(self, *statuses: Status) -> list[dict]:
        marks = ",".join("?" * len(statuses))
        with self.connect() as db:
            rows = db.execute(f"select * from jobs where status in ({marks}) order by id", statuses).fetchall()
        return [self._row(r) for r in rows]

    def next_runnable(self, window_open: bool) -> dict | None:
        """Paused and recovered jobs first, then priority, then first-in-first-out.

        Outside the window only jobs marked run_now may start. A job that continues another one
        (network.init_from: job:<name>) is passed over while it waits and failed when what it waits
        for never can come (daemon/chain.py); the jobs behind it run. Every runnable row is looked
        at, held ones too, so `animad status` says what each is waiting for.
        """
        with self.connect() as db:
            rows = db.execute("select * from jobs where status in (?, ?) order by resume_first desc, "
                              "priority desc, id asc", RUNNABLE).fetchall()
        chosen = None
        for row in map(self._row, rows):
            if chain.prepare(self, row) != chain.READY or chosen is not None:
                continue
            if not row["held"] and row["request"] is None and (window_open or row["run_now"]):
                chosen = row
        return chosen

    def by_name(self, name: str) -> list[dict]:
        """Every row with exactly this job name (a name of digits too, unlike find), oldest first."""
        with self.connect() as db:
            return [self._row(r) for r in db.execute(f"select * from jobs where name = ? and {HOLDS_NAME} "
                                                     "order by id", (name,))]

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

    def add(self, name: str, source: str, priority: int = 0, min_id: int = 1) -> int:
        """A new `accepting` row; its id is above every id this database ever gave and at least min_id.

        The caller passes min_id above every job folder on disk, so a database that was reset never
        hands out an id whose folder still exists (the folder is `<id>-<name>`).
        """
        now = time.time()
        with self.transaction() as db:
            used = db.execute("select max(coalesce((select max(id) from jobs), 0), coalesce((select seq from "
                              "sqlite_sequence where name = 'jobs'), 0))").fetchone()[0]
            cursor = db.execute("insert into jobs (id, name, status, source, priority, created, updated) "
                                "values (?, ?, ?, ?, ?, ?, ?)",
                                (max(used + 1, min_id), name, Status.ACCEPTING, source, priority, now, now))
            return cursor.lastrowid

    def insert(self, job_id: int, **fields) -> None:
        """A row with a given id (re-registering a job folder that lost its row)."""
        now = time.time()
        fields = {"created": now, "updated": now, **fields, "id": job_id}
        marks = ", ".join("?" * len(fields))
        with self.transaction() as db:
            db.execute(f"insert into jobs ({', '.join(fields)}) values ({marks})", tuple(fields.values()))

    def update(self, job_id: int, **fields) -> None:
        if "progress" in fields and fields["progress"] is not None and not isinstance(fields["progress"], str):
            fields["progress"] = json.dumps(fields["progress"])
        fields["updated"] = time.time()
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as db:
            db.execute(f"update jobs set {assignments} where id = ?", (*fields.values(), job_id))

    def claim(self, job_id: int, status: Status, pid: int, slot: int = 0, gpu: str | None = None) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute("update jobs set status = ?, pid = ?, slot = ?, gpu = ?, heartbeat = ?, "
                       "started = coalesce(started, ?), attempts = attempts + 1, updated = ? where id = ?",
                       (status, pid, slot, gpu, now, now, now, job_id))

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
