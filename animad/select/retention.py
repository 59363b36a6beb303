"""keep_epochs: shortlist: once the review package exists, the epoch files it did not pick go."""

from __future__ import annotations

from animad.config.daemon import Daemon
from animad.config.job import JobConfig
from animad.layout import JobPaths, read_epochs_log


def apply_retention(paths: JobPaths, config: JobConfig, daemon: Daemon, keep: set[int]) -> None:
    """keep_epochs: shortlist removes the other epoch files (ours, in the job folder) once the package exists."""
    if daemon.config.keep_epochs != "shortlist":
        return
    for record in read_epochs_log(paths.epochs_log):
        if record["epoch"] not in keep:
            paths.epoch_file(config.name, record["epoch"]).unlink(missing_ok=True)
