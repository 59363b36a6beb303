"""Watch the inbox and decide when a dropped folder has settled.

A folder is ready when it holds job.yaml and nothing inside it has changed (by ctime or mtime) for
the settle time. A copy gives every file a fresh ctime, so a half-copied folder is never ready; a
folder moved in whole keeps its old ctimes, so it is ready at once. Watchdog events only wake the
daemon up to look; the file system itself is the truth, which also covers folders that were already
there at start-up and file systems where events are unreliable. `Inbox` is the daemon loop's intake
step: look when something happened or a pending folder may have settled, and queue or reject what is ready.

A rejected folder is checked again when anything in it changes (a file added, edited or removed;
not ERRORS.txt, which is ours), so removing the image a report names is enough. A folder still
open for writing is not a problem of the folder: it gets no report and is looked at again after
another settle. `animad status` shows the inbox by these same rules (`inbox_view`): it works out
settling itself and reads the daemon's verdicts (rejected, busy) from state/inbox.json, which the
daemon writes only when a verdict changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import stat
import threading
import time
from pathlib import Path

from animad.config.daemon import Daemon
from animad.daemon.freeze import FolderBusy, handle_folder
from animad.daemon.queue import Queue
from animad.errors import is_disk_full
from animad.fsutil import write_atomic
from animad.safe_text import safe

log = logging.getLogger("animad.inbox")

OUR_FILES = {"ERRORS.txt"}


def write_report(folder: Path, text: str) -> bool:
    """Leave ERRORS.txt in folder if the folder still exists; False (and a log line) if it is gone.

    The user may remove a folder while it is being checked; writing the report must not bring it
    back as a ghost holding nothing but ERRORS.txt, so the folder is never re-created.
    """
    try:
        write_atomic(Path(folder) / "ERRORS.txt", text.encode(), make_parents=False)
        return True
    except FileNotFoundError:
        log.info("%s was removed while it was checked; dropped, no report written", folder)
        return False


def is_ours(name: str) -> bool:
    """ERRORS.txt, and the temp file it is written through: our words, never a change of the user's."""
    return name in OUR_FILES or name.startswith(".ERRORS.txt.tmp")


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What a folder looks like now: when it last changed, and a fingerprint of everything in it.

    The fingerprint covers every entry (path, size, mtime, ctime) but not ERRORS.txt, so removing
    the image a report names is a change, and writing the report is not. The folder's own mtime moves
    when an entry is added or removed (a removal leaves no file to date), so it counts as a change,
    except the one our own report write gave it (`own_mtime_ns`, remembered with the rejection).
    """

    latest: float | None  # newest ctime/mtime inside (None: empty), the folder's own mtime included
    signature: str
    folder_mtime_ns: int


def snapshot(folder: Path, own_mtime_ns: int | None = None) -> Snapshot:
    folder = Path(folder)
    newest, entries = None, []
    try:
        own = os.stat(folder).st_mtime_ns
    except OSError:
        return Snapshot(time.time(), "", 0)  # vanished while we looked: something is still happening
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".animad")]
        for name in dirs + files:
            if is_ours(name) and Path(root) == folder:
                continue
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
            except OSError:
                return Snapshot(time.time(), "", own)
            newest = max(newest or 0.0, st.st_ctime, st.st_mtime)
            entries.append(f"{os.path.relpath(path, folder)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}")
    if newest is not None and own != own_mtime_ns:
        newest = max(newest, own / 1e9)
    signature = hashlib.sha1("\n".join(sorted(entries)).encode("utf-8", "surrogateescape")).hexdigest()
    return Snapshot(newest, signature, own)


def latest_change(folder: Path) -> float | None:
    """The newest ctime/mtime of anything inside folder (the folder's own mtime too), or None if empty."""
    return snapshot(folder).latest


def candidate_folders(inbox: Path) -> list[Path]:
    if not inbox.is_dir():
        return []
    return sorted(p for p in inbox.iterdir() if p.is_dir() and not p.name.startswith("."))


def first_problem(report: str) -> str:
    """The first ERROR line of a report (else its first line): what status shows of a rejection."""
    lines = [line for line in report.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR ")]
    return (errors or lines or [""])[0]


class InboxWatcher:
    """A watchdog observer (inotify, or polling where that is unavailable) that wakes the daemon."""

    def __init__(self, inbox: Path, wake: threading.Event, poll_seconds: float = 0.0):
        self.inbox = Path(inbox)
        self.wake = wake
        self.dirty = threading.Event()  # set on inbox activity, cleared by the daemon when it looks
        self.poll_seconds = poll_seconds
        self.observer = None
        self.identity: tuple[int, int] | None = None  # (device, inode) of the folder being watched
        self.root_deleted = threading.Event()  # the observer saw the inbox folder itself deleted
        self.gone_since: float | None = None  # the folder was removed (and not yet made again)

    def folder_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.inbox)
        except OSError:
            return None
        return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None

    def follow_folder(self) -> bool:
        """Notice the inbox folder removed, or removed and made again (a new inode): a watch on the old
        folder hears nothing more (inotify drops it; polling looks at a path that was gone), so the
        observer is started again on the new one. True when it was (look at the inbox at once).

        A removed inbox is not made again here: the person who removed it may be about to make it
        again, or to put another one in its place; drops simply wait for it, as the log says.
        """
        now = self.folder_identity()
        # The same inode number can come back at once (rmdir, mkdir), so the watch's own word that its
        # folder was deleted counts too.
        if now == self.identity and self.gone_since is None and not self.root_deleted.is_set():
            return False
        if now is None:
            if self.gone_since is None:
                self.gone_since = time.monotonic()
                log.warning("the inbox folder %s was removed; drops wait until it exists again (animad "
                            "watches for it and takes what is dropped there then)", safe(self.inbox))
            return False
        again = ("made again" if self.gone_since is not None or self.root_deleted.is_set()
                 else "replaced by another folder")
        self.stop()
        self.start()
        self.gone_since = None
        log.info("the inbox folder %s was %s; watching the new one", safe(self.inbox), again)
        return True

    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler

        self.inbox.mkdir(parents=True, exist_ok=True)
        self.identity = self.folder_identity()
        self.root_deleted.clear()
        wake, dirty, root, root_deleted = self.wake, self.dirty, os.path.abspath(self.inbox), self.root_deleted

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                if event.event_type in ("opened", "closed_no_write"):
                    return
                if event.event_type == "deleted" and os.path.abspath(event.src_path) == root:
                    root_deleted.set()  # the watch is over (Inbox.take starts a new one once it is back)
                names = [event.src_path, getattr(event, "dest_path", "") or event.src_path]
                if all(is_ours(os.path.basename(name)) for name in names):
                    return
                dirty.set()
                wake.set()

        observer = None
        if not self.poll_seconds:
            try:
                from watchdog.observers import Observer

                observer = Observer()
                observer.schedule(Handler(), str(self.inbox), recursive=True)
                observer.start()
            except OSError as error:  # e.g. inotify limits reached, or a file system without inotify
                log.warning("inotify unavailable (%s); falling back to polling every 2 s", error)
                observer = None
        if observer is None:
            from watchdog.observers.polling import PollingObserver

            observer = PollingObserver(timeout=self.poll_seconds or 2.0)
            observer.schedule(Handler(), str(self.inbox), recursive=True)
            observer.start()
        self.observer = observer

    def stop(self) -> None:
        if self.observer is not None:
            # watchdog's inotify emitter may run its loop once more while it is being stopped, and logs
            # that as an ERROR ("queue_events() called when the thread is inactive") on a clean exit.
            logging.getLogger("watchdog.observers.inotify").addFilter(quiet_stop_race)
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None


def quiet_stop_race(record: logging.LogRecord) -> bool:
    """A logging filter: drop only watchdog's harmless stop-time race message, keep every other record."""
    return "called when the thread is inactive" not in record.getMessage()


class SettleTracker:
    """Which inbox folders are ready, and when to look again for the ones that are not yet.

    It also remembers two verdicts the file system alone cannot show: a rejected folder (and what it
    looked like then, so that any change in it, and only a change, gets it checked again) and a busy
    folder (still open for writing: looked at again after another settle). With a state_file those
    verdicts are kept there, written atomically when they change (never on an idle tick), so that
    `animad status`, a separate process, can show them.
    """

    def __init__(self, inbox: Path, settle_seconds: float, state_file: Path | None = None):
        self.inbox = Path(inbox)
        self.settle = settle_seconds
        self.state_file = state_file
        self.rejected: dict[str, dict] = {}  # folder name -> {signature, own_mtime_ns, report, problem, at}
        self.busy: dict[str, dict] = {}  # folder name -> {until, why}
        self.checking: dict[str, float] = {}  # folder name -> when the daemon began checking it
        self.saved: dict | None = None  # what the state file holds (None: not written by us yet)

    def scan(self, now: float | None = None) -> tuple[list[Path], float | None]:
        """(ready folders, seconds until the next pending folder may be ready)."""
        now = time.time() if now is None else now
        ready, wait = [], None
        folders = candidate_folders(self.inbox)
        self.forget_missing({f.name for f in folders})
        for folder in folders:
            state = self.state_of(folder, now)
            if state["state"] == "ready":
                ready.append(folder)
            elif "seconds_left" in state:
                wait = state["seconds_left"] if wait is None else min(wait, state["seconds_left"])
        return ready, wait

    def state_of(self, folder: Path, now: float) -> dict:
        """One folder as the daemon sees it: incomplete, rejected, busy, settling (seconds_left) or ready."""
        if not (folder / "job.yaml").is_file():
            return {"state": "incomplete"}
        record = self.rejected.get(folder.name)
        snap = snapshot(folder, record["own_mtime_ns"] if record else None)
        if snap.latest is None:
            return {"state": "incomplete"}
        if record and record["signature"] == snap.signature and record["own_mtime_ns"] == snap.folder_mtime_ns:
            return {"state": "rejected", "problem": record["problem"], "report": record["report"]}
        busy = self.busy.get(folder.name)
        if busy and now < busy["until"]:
            return {"state": "busy", "why": busy["why"], "seconds_left": busy["until"] - now}
        quiet = now - snap.latest
        changed = {"changed_since_rejected": True} if record else {}
        if quiet >= self.settle:
            return {"state": "ready", **changed}
        return {"state": "settling", "seconds_left": self.settle - quiet, **changed}

    def mark_rejected(self, folder: Path, before: Snapshot | None = None, report: str = "") -> None:
        """Remember folder as rejected: as it was when it was checked (before), else as it is now.

        The folder's own mtime is taken now, after ERRORS.txt was written, so that write is not a change.
        """
        try:
            own = os.stat(folder).st_mtime_ns
        except OSError:
            return
        seen = before or snapshot(folder)
        if not report:
            try:
                report = (Path(folder) / "ERRORS.txt").read_text(errors="replace")
            except OSError:
                report = ""
        self.rejected[folder.name] = {"signature": seen.signature, "own_mtime_ns": own,
                                      "report": str(Path(folder) / "ERRORS.txt"),
                                      "problem": first_problem(report), "at": time.time()}
        self.busy.pop(folder.name, None)
        self.checking.pop(folder.name, None)
        self.save()

    def mark_busy(self, folder: Path, why: str, now: float | None = None) -> bool:
        """Look at folder again only after another settle; True if it was not busy before (worth a log line)."""
        now = time.time() if now is None else now
        new = folder.name not in self.busy
        self.busy[folder.name] = {"until": now + self.settle, "why": why}
        self.checking.pop(folder.name, None)
        self.save()
        return new

    def mark_taken(self, folder: Path) -> None:
        self.rejected.pop(folder.name, None)
        self.busy.pop(folder.name, None)
        self.checking.pop(folder.name, None)
        self.save()

    def mark_checking(self, folder: Path, checking: bool = True) -> None:
        """The daemon begins (or ends) its check of folder: status says "being checked" only meanwhile."""
        if checking:
            self.checking[folder.name] = time.time()
        else:
            self.checking.pop(folder.name, None)
        self.save()

    def forget_missing(self, names: set[str]) -> None:
        gone = [n for n in list(self.rejected) + list(self.busy) + list(self.checking) if n not in names]
        for name in gone:
            self.rejected.pop(name, None)
            self.busy.pop(name, None)
            self.checking.pop(name, None)
        if gone:
            self.save()

    # -- the state file status reads --------------------------------------------------------------

    def save(self) -> None:
        if self.state_file is None:
            return
        data = {"rejected": self.rejected, "busy": self.busy, "checking": self.checking,
                "daemon_pid": os.getpid()}
        if data == self.saved:
            return
        try:
            write_atomic(self.state_file, json.dumps(data, indent=1).encode(), durable=False)
            self.saved = json.loads(json.dumps(data))
        except OSError as error:  # a full disk: status shows less until there is room; the daemon goes on
            log.debug("could not write %s: %s", self.state_file, error)

    def load(self, daemon_pid: int | None = None) -> "SettleTracker":
        """The verdicts the daemon wrote (for status; the daemon itself starts afresh and checks every folder).

        A check in progress counts only if the daemon that wrote it (daemon_pid) is the one running now.
        """
        try:
            data = json.loads(Path(self.state_file).read_text())
            rejected, busy = dict(data.get("rejected", {})), dict(data.get("busy", {}))
        except (OSError, ValueError, TypeError, AttributeError):
            return self  # none yet, or torn by hand: status shows what the files alone say
        keys = ({"signature", "own_mtime_ns", "report", "problem"}, {"until", "why"})
        self.rejected = {n: r for n, r in rejected.items() if isinstance(r, dict) and keys[0] <= set(r)}
        self.busy = {n: b for n, b in busy.items() if isinstance(b, dict) and keys[1] <= set(b)}
        checking = data.get("checking", {}) if data.get("daemon_pid") == daemon_pid else {}
        self.checking = {n: t for n, t in checking.items() if isinstance(t, (int, float))}
        return self


def inbox_state_file(daemon: Daemon) -> Path:
    return daemon.dir("state") / "inbox.json"


def inbox_view(daemon: Daemon, rows: list[dict], daemon_running: bool, now: float | None = None,
               daemon_pid: int | None = None) -> list[dict]:
    """What `animad status` shows of the inbox: every folder with its state, by the daemon's own rules.

    Settling is worked out here from the files (so the seconds left are always current, daemon or
    not); rejections and busy folders come from the daemon's state file; folders being accepted from
    the queue rows. A folder that settled is "checking" while the daemon runs (it takes it within a
    tick) and "waiting for the daemon" when it does not.
    """
    now = time.time() if now is None else now
    tracker = SettleTracker(daemon.dir("inbox"), daemon.config.settle_seconds,
                            inbox_state_file(daemon)).load(daemon_pid if daemon_running else None)
    accepting = {r["source"]: r["id"] for r in rows if r["status"] == "accepting" and r.get("source")}
    out = []
    for folder in candidate_folders(tracker.inbox):
        entry = {"folder": str(folder)}
        if str(folder) in accepting:
            entry.update(state="accepting", job=accepting[str(folder)])
        else:
            entry.update(tracker.state_of(folder, now))
            if entry["state"] == "ready":
                entry.update(ready_state(tracker, folder, daemon_running, now))
        out.append(entry)
    return out


UNRECORDED_SECONDS = 90.0  # settled this long with no verdict: the daemon looked (it rescans each minute) but
# could not record what it found (a full disk keeps it from writing inbox.json and ERRORS.txt)


def ready_state(tracker: SettleTracker, folder: Path, daemon_running: bool, now: float) -> dict:
    """A settled folder with no verdict, as status tells it: only a check that runs is "being checked"."""
    if not daemon_running:
        return {"state": "waiting for the daemon"}
    if folder.name in tracker.checking:
        return {"state": "checking", "seconds": max(0.0, now - tracker.checking[folder.name])}
    settled = snapshot(folder).latest
    settled_for = now - (settled or now) - tracker.settle
    if settled_for > UNRECORDED_SECONDS:
        return {"state": "unrecorded", "seconds": settled_for}
    return {"state": "settled"}


def describe_folder(entry: dict) -> str:
    """One line of the inbox list in `animad status` (the folder name is the user's: escaped)."""
    name = safe(Path(entry["folder"]).name)
    return f"  {name[:20]:<20} {folder_words(entry)}"


def folder_words(entry: dict) -> str:
    """Where an inbox folder stands, in words (`animad status` and the dashboard)."""
    state = entry["state"]
    again = " (changed since it was rejected)" if entry.get("changed_since_rejected") else ""
    if state == "incomplete":
        words = "no job.yaml yet: taken once it has one (an empty job.yaml is fine)"
    elif state == "settling":
        words = f"settling: taken after {math.ceil(entry['seconds_left'])} s without changes{again}"
    elif state == "checking":
        words = f"being checked{again}"
    elif state == "settled":
        words = f"settled; the daemon takes it at its next look, within seconds{again}"
    elif state == "unrecorded":
        words = (f"settled {math.ceil(entry['seconds'])} s ago and not taken: the daemon has recorded nothing "
                 f"about it (is the disk full? its log says what it found){again}")
    elif state == "waiting for the daemon":
        words = f"settled; taken when the daemon runs (animad run){again}"
    elif state == "accepting":
        words = f"being accepted as job {entry['job']} (frozen into its job folder)"
    elif state == "busy":
        words = (f"still open for writing; checked again in {math.ceil(entry['seconds_left'])} s "
                 f"({safe(entry['why'])})")
    elif state == "rejected":
        words = f"rejected: {safe(entry['problem'])}  (report: {safe(entry['report'])})"
    else:
        words = safe(state)
    return words


# -- rejections for a condition of the machine ---------------------------------------------------------

# An ERROR line of a report about the machine, not the folder: "ERROR <file>: disk space: ..." or a
# model file or tokenizer of a model set ("models.<set>.dit", "model_files.vae", "tokenizers").
MACHINE_LINE = re.compile(r"^ERROR .*?: (disk space|models\.[\w.-]+|model_files\.\w+|tokenizers): (.*)$")
MODEL_PATH = re.compile(r": (/.*)$")  # "model file not found: /path/dit.safetensors" names the path
DISK_STEP = 64 * 2**20  # more free space than this since the rejection is worth another check


def machine_conditions(folder: Path, error: BaseException | None = None) -> dict:
    """{"disk": True, "models": [paths named]}: the machine conditions a rejection was (also) for."""
    conditions: dict = {}
    if error is not None:
        # ENOSPC on a copy or a report, or SQLite's "database or disk is full" on the queue row.
        if is_disk_full(error) or isinstance(error, sqlite3.OperationalError) and "full" in str(error):
            conditions["disk"] = True
        return conditions
    try:
        report = (Path(folder) / "ERRORS.txt").read_text(errors="replace")
    except OSError:
        return conditions
    for line in report.splitlines():
        match = MACHINE_LINE.match(line)
        if not match:
            continue
        if match.group(1) == "disk space":
            conditions["disk"] = True
        else:
            named = MODEL_PATH.search(match.group(2))
            conditions.setdefault("models", [])
            if named:
                conditions["models"].append(named.group(1))
    return conditions


def machine_state(daemon: Daemon, conditions: dict) -> dict:
    """The machine as far as the conditions go: free space, and every model file's presence and stamp."""
    state = {}
    if conditions.get("disk"):
        try:
            state["free"] = shutil.disk_usage(daemon.dir("state")).free
        except OSError:
            state["free"] = None
    if "models" in conditions:
        paths = [*conditions["models"], *daemon.tokenizer_dirs()]
        for name in daemon.config.models:
            paths += [p for p in (daemon.model_set(name) or {}).values() if p is not None]
        stamps = []
        for path in sorted({str(p) for p in paths}):
            try:
                st = os.stat(path)
                stamps.append((path, st.st_size, st.st_mtime_ns, st.st_mode, os.access(path, os.R_OK)))
            except OSError as error:
                stamps.append((path, error.errno))
        state["models"] = stamps
    return state


def machine_changed(conditions: dict, before: dict, now: dict) -> str | None:
    """Why a rejection for these conditions is worth another check (None: nothing changed that matters)."""
    if conditions.get("disk") and before.get("free") is not None and now.get("free") is not None \
            and now["free"] > before["free"] + DISK_STEP:
        return f"the disk has {(now['free'] - before['free']) / 2**20:.0f} MiB more free space"
    if "models" in conditions and now.get("models") != before.get("models"):
        return "a model or tokenizer file changed"
    return None


class Inbox:
    """The watcher, the settle rule and the freeze, as one step of the daemon's loop."""

    def __init__(self, daemon: Daemon, queue: Queue, wake: threading.Event):
        self.daemon, self.queue = daemon, queue
        self.folder = daemon.dir("inbox")
        self.tracker = SettleTracker(self.folder, daemon.config.settle_seconds, inbox_state_file(daemon))
        self.watcher = InboxWatcher(self.folder, wake, daemon.config.poll_seconds)
        self.next_check = 0.0  # time.monotonic() of the next look without an event; 0: look at once
        self.pending = False
        # Rejections for a condition of this machine, not of the folder (a full disk, a model file
        # missing): folder name -> (the conditions, the machine as it was then). Checked again once
        # the machine changes, though the folder has not.
        self.machine: dict[str, tuple[dict, dict]] = {}

    def remember_machine(self, folder: Path, error: BaseException | None = None) -> None:
        """After a rejection: note the machine conditions it was for (none: only a change of the folder counts)."""
        conditions = machine_conditions(folder, error)
        if conditions:
            self.machine[folder.name] = (conditions, machine_state(self.daemon, conditions))
        else:
            self.machine.pop(folder.name, None)

    def recheck_machine(self) -> None:
        """Rejected folders whose machine condition changed are checked again at once (said in the log)."""
        for name, (conditions, before) in list(self.machine.items()):
            if name not in self.tracker.rejected:
                self.machine.pop(name, None)
                continue
            why = machine_changed(conditions, before, machine_state(self.daemon, conditions))
            if why is None:
                continue
            log.info("%s was rejected for %s; %s: checking it again", safe(self.folder / name),
                     " and ".join(conditions), why)
            self.machine.pop(name, None)
            self.tracker.rejected.pop(name, None)  # as if it had changed: the next scan checks it
            self.tracker.save()
            self.next_check = 0.0

    def start(self) -> None:
        self.tracker.save()  # a new daemon checks every folder afresh: the last one's verdicts are gone
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()

    def seconds_to_next_check(self) -> float:
        return self.next_check - time.monotonic()

    def take(self) -> None:
        """Queue every settled folder, or leave ERRORS.txt beside it; look again when the next one may settle."""
        if self.watcher.follow_folder():  # the inbox removed and made again: watch the new one, look now
            self.next_check = 0.0
        if self.machine:
            self.recheck_machine()
        if time.monotonic() < self.next_check and not self.watcher.dirty.is_set():
            return
        self.watcher.dirty.clear()
        ready, wait = self.tracker.scan()
        self.pending = wait is not None  # a folder still settling (or busy): `animad run --once` waits for it
        # Once a minute at least: that rescan finds folders whose events never came (WSL's /mnt/c).
        self.next_check = time.monotonic() + (min(wait, 60.0) if wait is not None else 60.0)
        for folder in ready:
            if folder.name in self.tracker.busy:
                self.tracker.busy.pop(folder.name)  # its settle is over: look again (marked anew if still busy)
            before = snapshot(folder)  # as it is checked: a change during the check gets it checked again
            self.tracker.mark_checking(folder)
            try:
                if handle_folder(folder, self.daemon, self.queue) is None:
                    self.tracker.mark_rejected(folder, before)
                    self.remember_machine(folder)
                else:
                    self.tracker.mark_taken(folder)
            except FolderBusy as busy:
                # Still being written: not a problem of the folder, so no ERRORS.txt; looked at again
                # after another settle (and said once in the log, not every time).
                if self.tracker.mark_busy(folder, str(busy)):
                    log.info("%s; looked at again in %.0f s", safe(busy), self.tracker.settle)
                self.next_check = min(self.next_check, time.monotonic() + self.tracker.settle)
            except Exception as error:  # noqa: BLE001 - one odd folder must not stop the daemon
                if not folder.is_dir():  # removed by its owner while we looked at it: nothing to report
                    self.tracker.mark_checking(folder, False)
                    log.info("%s was removed while it was checked; dropped", folder)
                    continue
                log.exception("could not take %s", folder)
                try:
                    write_report(folder, f"animad could not take this folder: {safe(error)}\n"
                                 "It stays here; nothing was deleted. "
                                 "Fix the cause (permissions? disk full?); the folder is checked again "
                                 "when anything in it changes, when the disk has more room (if it was "
                                 "full), or when the daemon restarts.\n")
                except OSError:
                    pass
                self.tracker.mark_rejected(folder, before)
                self.remember_machine(folder, error)
