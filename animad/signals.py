"""How a process is asked to stop: a flag the training loop reads at step boundaries, and death with a parent."""

from __future__ import annotations

import ctypes
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


def die_with_parent() -> None:
    """Ask Linux to send us SIGTERM if our parent dies, so an orphan saves its state and stops."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
