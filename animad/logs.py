"""Logging set-up: plain lines for journald and a job's train.log; no colours, no progress spam."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

from animad.errors import is_disk_full
from animad.safe_text import safe

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: Path | None = None, stream=sys.stderr, level=logging.INFO) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = SafeFormatter(FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    if stream is not None:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(formatter)
        root.addHandler(handler)
    # Libraries that talk too much at INFO.
    for noisy in ("httpx", "urllib3", "PIL", "matplotlib", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    threading.excepthook = _thread_exception


class SafeFormatter(logging.Formatter):
    """A Formatter that shows control characters in a message's arguments as escapes.

    The arguments carry job names, file names and paths chosen by the user; one holding
    "\nERROR fake line" or an ESC sequence must neither forge a line in journald or train.log nor
    drive the terminal of whoever reads them. Numbers keep their %d/%.3f formatting. An exception
    argument keeps its line breaks (its text is ours, composed from fields already made safe) but
    nothing else; so do tracebacks.
    """

    def format(self, record: logging.LogRecord) -> str:
        if record.args:
            record = logging.makeLogRecord(record.__dict__)
            if isinstance(record.args, dict):
                record.args = {key: _safe_arg(value) for key, value in record.args.items()}
            else:
                record.args = tuple(_safe_arg(value) for value in record.args)
        elif isinstance(record.msg, str):
            record = logging.makeLogRecord(record.__dict__)
            record.msg = safe(record.msg, keep_newlines=True)
        return super().format(record)

    def formatException(self, ei) -> str:
        # Kept on its lines; an ESC inside an exception's message is still shown, not obeyed.
        return safe(super().formatException(ei), keep_newlines=True)

    def formatStack(self, stack_info: str) -> str:
        return safe(super().formatStack(stack_info), keep_newlines=True)


def _safe_arg(value):
    if isinstance(value, (int, float)):  # bool too
        return value
    if isinstance(value, BaseException):
        return safe(value, keep_newlines=True)
    return safe(value)


def _thread_exception(args) -> None:
    # TensorBoard writes its event file from a thread of its own: on a full disk that thread dies
    # with a long traceback, while the training loop reports the same problem clearly. One line.
    error = args.exc_value
    if is_disk_full(error):
        name = args.thread.name if args.thread else "a background thread"
        logging.getLogger("animad").warning("%s: disk full (%s)", name, error)
        return
    threading.__excepthook__(args)
