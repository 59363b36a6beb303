"""Deterministic crash points for the chaos tests (tests/test_chaos.py): the daemon kills itself there.

A kill from outside has to land in a window of a few hundred milliseconds (mid-copy, mid-removal);
a test that times it is a race. Instead the test starts `animad run` with
`ANIMAD_KILL_AT=<point>[:<n>]` and the daemon SIGKILLs itself the n-th time (default: the first) it
reaches that point: no cleanup, no `finally`, exactly what kill -9 or a power cut leaves. With
`ANIMAD_ACCEPT_COPY=1` an accept copies even within one file system, so the cross-file-system path
(copy, verify, remove the inbox folder) is exercised where no second file system is mounted.

Neither variable is set outside tests; unset, a point costs one environment lookup.
"""

from __future__ import annotations

import collections
import os
import signal

KILL_AT = "ANIMAD_KILL_AT"
FORCE_COPY = "ANIMAD_ACCEPT_COPY"

# Where an accept can be cut (daemon/freeze.py), in the order they come.
ACCEPT_POINTS = (
    "accept-copy-file",  # after each file copied into the job's partial folder (another file system)
    "accept-verified",  # the copy is verified and recorded so; not yet renamed into <job>/dataset
    "accept-placed",  # the dataset is in <job>/dataset (renamed there, or the verified copy); the inbox
    # folder still whole (copied) or gone (renamed), the record not yet past its phase
    "accept-remove-file",  # after each file of the inbox folder removed
    "accept-frozen",  # the inbox folder is gone; the job files are not written yet
)

_reached: collections.Counter = collections.Counter()


def reached(point: str) -> None:
    """SIGKILL this process if ANIMAD_KILL_AT names this point and this is its n-th visit."""
    wanted = os.environ.get(KILL_AT)
    if not wanted:
        return
    name, _, count = wanted.partition(":")
    if name != point:
        return
    _reached[point] += 1
    if _reached[point] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def force_copy() -> bool:
    """Whether accepts copy (as across file systems) even where a rename would do."""
    return os.environ.get(FORCE_COPY) == "1"
