"""Watch the inbox and decide when a dropped folder has settled.

A folder is ready when it holds job.yaml and nothing inside it has changed (by ctime or mtime) for
the settle time. A copy gives every file a fresh ctime, so a half-copied folder is never ready; a
folder moved in whole keeps its old ctimes, so it is ready at once. Watchdog events only wake the
daemon up to look; the file system itself is the truth, which also covers folders that were already
there at start-up and file systems where events are unreliable. `Inbox` is the daemon loop's intake
step: look when something happened or a pending folder may have settled, and queue or reject what is ready.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from animad.config.daemon import Daemon
from animad.daemon.freeze import handle_folder
from animad.daemon.queue import Queue
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


def latest_change(folder: Path) -> float | None:
    """The newest ctime/mtime of anything inside folder (not the folder's own entry), or None if empty."""
    newest = None
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".animad")]
        for name in dirs + files:
            if name in OUR_FILES and Path(root) == folder:
                continue
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                return time.time()  # vanished while we looked: something is still happening
            newest = max(newest or 0.0, st.st_ctime, st.st_mtime)
    return newest


def candidate_folders(inbox: Path) -> list[Path]:
    if not inbox.is_dir():
        return []
    return sorted(p for p in inbox.iterdir() if p.is_dir() and not p.name.startswith("."))


class InboxWatcher:
    """A watchdog observer (inotify, or polling where that is unavailable) that wakes the daemon."""

    def __init__(self, inbox: Path, wake: threading.Event, poll_seconds: float = 0.0):
        self.inbox = Path(inbox)
        self.wake = wake
        self.dirty = threading.Event()  # set on inbox activity, cleared by the daemon when it looks
        self.poll_seconds = poll_seconds
        self.observer = None

    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler

        self.inbox.mkdir(parents=True, exist_ok=True)
        wake, dirty = self.wake, self.dirty

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                if event.event_type in ("opened", "closed_no_write"):
                    return
                if os.path.basename(event.src_path) in OUR_FILES:
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
            self.observer.stop()
            self.observer.join(timeout=5)


class SettleTracker:
    """Which inbox folders are ready, and when to look again for the ones that are not yet."""

    def __init__(self, inbox: Path, settle_seconds: float):
        self.inbox = Path(inbox)
        self.settle = settle_seconds
        self.rejected: dict[str, float] = {}  # folder -> latest change when it was rejected

    def scan(self, now: float | None = None) -> tuple[list[Path], float | None]:
        """(ready folders, seconds until the next pending folder may be ready)."""
        now = time.time() if now is None else now
        ready, wait = [], None
        for folder in candidate_folders(self.inbox):
            if not (folder / "job.yaml").is_file():
                continue
            changed = latest_change(folder)
            if changed is None:
                continue
            if self.rejected.get(folder.name) == changed:
                continue  # rejected before and untouched since: the report is already there
            quiet = now - changed
            if quiet >= self.settle:
                ready.append(folder)
            else:
                remaining = self.settle - quiet
                wait = remaining if wait is None else min(wait, remaining)
        return ready, wait

    def mark_rejected(self, folder: Path) -> None:
        changed = latest_change(folder)
        if changed is not None:
            self.rejected[folder.name] = changed


class Inbox:
    """The watcher, the settle rule and the freeze, as one step of the daemon's loop."""

    def __init__(self, daemon: Daemon, queue: Queue, wake: threading.Event):
        self.daemon, self.queue = daemon, queue
        self.folder = daemon.dir("inbox")
        self.tracker = SettleTracker(self.folder, daemon.config.settle_seconds)
        self.watcher = InboxWatcher(self.folder, wake, daemon.config.poll_seconds)
        self.next_check = 0.0  # time.monotonic() of the next look without an event; 0: look at once

    def start(self) -> None:
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()

    def seconds_to_next_check(self) -> float:
        return self.next_check - time.monotonic()

    def take(self) -> None:
        """Queue every settled folder, or leave ERRORS.txt beside it; look again when the next one may settle."""
        if time.monotonic() < self.next_check and not self.watcher.dirty.is_set():
            return
        self.watcher.dirty.clear()
        ready, wait = self.tracker.scan()
        # Once a minute at least: that rescan finds folders whose events never came (WSL's /mnt/c).
        self.next_check = time.monotonic() + (min(wait, 60.0) if wait is not None else 60.0)
        for folder in ready:
            try:
                if handle_folder(folder, self.daemon, self.queue) is None:
                    self.tracker.mark_rejected(folder)
            except Exception as error:  # noqa: BLE001 - one odd folder must not stop the daemon
                if not folder.is_dir():  # removed by its owner while we looked at it: nothing to report
                    log.info("%s was removed while it was checked; dropped", folder)
                    continue
                log.exception("could not take %s", folder)
                try:
                    write_report(folder, f"animad could not take this folder: {safe(error)}\n"
                                 "It stays here; nothing was deleted. "
                                 "Fix the cause (permissions? disk full?) and save job.yaml again.\n")
                except OSError:
                    pass
                self.tracker.mark_rejected(folder)
