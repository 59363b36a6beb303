"""Logging set-up: plain lines for journald and a job's train.log; no colours, no progress spam."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

from animad.errors import is_disk_full

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: Path | None = None, stream=sys.stderr, level=logging.INFO) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = logging.Formatter(FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
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


def _thread_exception(args) -> None:
    # TensorBoard writes its event file from a thread of its own: on a full disk that thread dies
    # with a long traceback, while the training loop reports the same problem clearly. One line.
    error = args.exc_value
    if is_disk_full(error):
        name = args.thread.name if args.thread else "a background thread"
        logging.getLogger("animad").warning("%s: disk full (%s)", name, error)
        return
    threading.__excepthook__(args)
