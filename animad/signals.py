"""How a process is asked to stop: a flag the training loop reads at step boundaries, and death with a parent."""

from __future__ import annotations

import ctypes
import os
import signal


class StopFlag:
    """First Ctrl-C / SIGTERM: finish the step, save state, exit. Second: stop at once."""

    def __init__(self):
        self.requested = False

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True  # only set a flag: the loop saves state at its next step boundary

    def __call__(self) -> bool:
        return self.requested


PARENT_PID = "ANIMAD_PARENT_PID"  # set by the daemon for its job children: who they should outlive never


def parent_gone() -> bool:
    """The process that started us (as it said in ANIMAD_PARENT_PID) is no longer our parent: it died,
    possibly before die_with_parent() was asked for, when no signal can come from it any more."""
    expected = os.environ.get(PARENT_PID, "")
    return expected.isdigit() and os.getppid() != int(expected)


def die_with_parent() -> None:
    """Ask Linux to send us SIGTERM if our parent dies, so an orphan saves its state and stops.

    A parent that died before this call sends nothing: check parent_gone() after it."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
