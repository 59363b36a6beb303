"""Accept one inbox folder (daemon/freeze.py handle_folder, the daemon's own code) in this process and
kill -9 this process at a chosen moment of the accept: what a daemon killed there leaves on disk.

    python tests/accept_kill.py CONFIG FOLDER MOMENT [--copy]

MOMENT: `placed` (right after the rename that puts the dataset into <job>/dataset), `copied:N` (after
N files were copied to the job folder), `removed:N` (after N files of the inbox folder were removed,
once the dataset is in place). --copy: the inbox folder's rename fails with EXDEV, as across file
systems, so the accept copies, verifies and removes. The moments are found by wrapping the os and
shutil calls every version of the accept makes, so the same kill lands on any version of it.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
from pathlib import Path

from animad.config.daemon import load_daemon_config
from animad.daemon.freeze import handle_folder
from animad.daemon.queue import Queue


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("moment")
    parser.add_argument("--copy", action="store_true")
    args = parser.parse_args()
    kind, _, count = args.moment.partition(":")
    limit = int(count or 0)
    seen = {"copied": 0, "removed": 0, "placed": False}
    real_rename, real_copyfile, real_unlink = os.rename, shutil.copyfile, os.unlink

    def rename(src, dst, *rest, **named):
        if args.copy and Path(src) == args.folder:
            raise OSError(errno.EXDEV, "Invalid cross-device link (simulated)")
        real_rename(src, dst, *rest, **named)
        if Path(dst).name == "dataset":
            seen["placed"] = True
            if kind == "placed":
                die()

    def copyfile(src, dst, *rest, **named):  # what shutil.copy2 calls, whoever calls that
        result = real_copyfile(src, dst, *rest, **named)
        seen["copied"] += 1
        if kind == "copied" and seen["copied"] >= limit:
            die()
        return result

    def unlink(path, *rest, **named):
        real_unlink(path, *rest, **named)
        if seen["placed"]:
            seen["removed"] += 1
            if kind == "removed" and seen["removed"] >= limit:
                die()

    os.rename, shutil.copyfile, os.unlink = rename, copyfile, unlink
    daemon = load_daemon_config(args.config)
    handle_folder(args.folder, daemon, Queue(daemon.dir("state") / "animad.sqlite"))
    raise SystemExit(f"the accept finished before the moment {args.moment} came")


if __name__ == "__main__":
    main()
