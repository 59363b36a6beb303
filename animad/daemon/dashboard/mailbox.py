"""Requests from the dashboard's threads to the daemon's loop, which carries them out at its next tick.

The dashboard only reads the queue; a button that changes a job becomes a call that the loop runs
on its own connection (`Mailbox.serve` at the start of each tick), so the loop stays the only writer
of the queue in the daemon's process, as it is for every other change it makes. The asking thread
waits for the answer; a request still unserved when it stops waiting is withdrawn, never run late.
"""

from __future__ import annotations

import concurrent.futures
import queue as queues
import threading
from typing import Any, Callable

ANSWER_SECONDS = 30.0  # the loop looks every second or two; a tick that accepts a big folder may take longer


class Busy(Exception):
    """The loop did not get to the request in time; it was withdrawn, so nothing was done."""


class Mailbox:
    def __init__(self, wake: threading.Event):
        self.wake = wake
        self.pending: queues.SimpleQueue = queues.SimpleQueue()

    def ask(self, call: Callable[[Any], Any], timeout: float = ANSWER_SECONDS) -> Any:
        """Have the loop run call(its queue); the result, or the exception it raised, comes back here."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.pending.put((call, future))
        self.wake.set()
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            if future.cancel():
                raise Busy() from None
            return future.result()  # it started just now: wait for it

    def serve(self, queue) -> None:
        """Run every waiting request (in the loop's thread); a request's own error goes back to its asker."""
        while True:
            try:
                call, future = self.pending.get_nowait()
            except queues.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue  # withdrawn: its asker has stopped waiting
            try:
                future.set_result(call(queue))
            except BaseException as error:  # noqa: BLE001 - the asker gets it; the loop goes on
                future.set_exception(error)
