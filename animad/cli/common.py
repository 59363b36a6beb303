"""What every verb module shares: the Verb record and the daemon config lookup."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable

from animad.config.daemon import Daemon, find_config_path, load_daemon_config


@dataclasses.dataclass(frozen=True)
class Verb:
    """One `animad VERB`: its help, the arguments it owns and the function that runs it (returns the exit code)."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    hidden: bool = False


def no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def daemon_of(args) -> Daemon:
    """animad.yaml as named by --config, $ANIMAD_CONFIG, ./animad.yaml or ~/.config/animad/animad.yaml."""
    return load_daemon_config(find_config_path(getattr(args, "config", None)))
