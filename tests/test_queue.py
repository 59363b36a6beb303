"""The SQLite queue: order, paused-first, crash recovery, and two processes at once."""

from __future__ import annotations

import subprocess
import sys

from animad.daemon.queue import Queue
from animad.daemon.states import Status


def queued(queue, name, priority=0):
    job = queue.add(name, f"/inbox/{name}", priority)
    queue.update(job, status=Status.QUEUED)
    return job


def test_fifo_with_priority_and_paused_first(tmp_path):
    queue = Queue(tmp_path / "q.sqlite")
    a, b, c = queued(queue, "a"), queued(queue, "b"), queued(queue, "c", priority=5)
    assert queue.next_runnable(True)["id"] == c  # priority first
    queue.update(c, status=Status.DONE)
    assert queue.next_runnable(True)["id"] == a  # then first in, first out
    queue.update(b, status=Status.PAUSED, resume_first=1)
    assert queue.next_runnable(True)["id"] == b  # a paused job resumes before newer work
    queue.update(b, held=1)  # paused by the user: waits for `animad resume`
    assert queue.next_runnable(True)["id"] == a


def test_nothing_starts_outside_the_window_unless_run_now(tmp_path):
    queue = Queue(tmp_path / "q.sqlite")
    job = queued(queue, "a")
    assert queue.next_runnable(False) is None
    queue.update(job, run_now=1)
    assert queue.next_runnable(False)["id"] == job


def test_dead_running_row_is_recovered(tmp_path):
    queue = Queue(tmp_path / "q.sqlite")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    job = queued(queue, "a")
    queue.claim(job, Status.RUNNING, dead.pid)
    alive = queued(queue, "b")
    queue.claim(alive, Status.RUNNING, subprocess.os.getpid())
    assert queue.recover() == [job]
    row = queue.get(job)
    assert row["status"] == Status.QUEUED and row["resume_first"] == 1 and row["attempts"] == 1
    assert queue.get(alive)["status"] == Status.RUNNING  # a live process is left alone


def test_two_processes_write_at_once(tmp_path):
    path = tmp_path / "q.sqlite"
    Queue(path)
    script = ("import sys; from animad.daemon.queue import Queue; q = Queue(sys.argv[1])\n"
              "for i in range(50):\n    j = q.add(f'{sys.argv[2]}{i}', 'x'); q.update(j, status='queued')\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), tag]) for tag in ("p", "q")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    rows = Queue(path).all()
    assert len(rows) == 100 and all(r["status"] == Status.QUEUED for r in rows)
    assert len({r["id"] for r in rows}) == 100


def test_a_database_from_before_the_slot_columns_opens_and_gains_them(tmp_path):
    """An upgrade adds the columns in place (ALTER TABLE): old rows kept, new writes work."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        create table jobs (id integer primary key autoincrement, name text not null, status text not null,
            phase text not null default 'train', priority integer not null default 0,
            resume_first integer not null default 0, held integer not null default 0,
            run_now integer not null default 0, request text, source text, job_dir text, outbox_dir text,
            attempts integer not null default 0, pid integer, heartbeat real, progress text, error text,
            outcome text, created real not null, started real, finished real, updated real);
        insert into jobs (name, status, created) values ('old', 'queued', 1.0);
    """)
    db.commit()
    db.close()
    queue = Queue(path)
    row = queue.next_runnable(True)
    assert row["name"] == "old" and row["slot"] is None and row["gpu"] is None
    queue.claim(row["id"], Status.RUNNING, 4242, slot=1, gpu="1")
    assert (queue.get(row["id"])["slot"], queue.get(row["id"])["gpu"]) == (1, "1")
    assert Queue(path).get(row["id"])["name"] == "old"  # opened again: nothing added twice
