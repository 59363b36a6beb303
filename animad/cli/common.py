"""What every verb module shares: the Verb record, the daemon config lookup and flags that reuse a config option."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable

from animad.config.daemon import Daemon, DaemonConfig, find_config_path, load_daemon_config
from animad.config.schema import option_info


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


def schema_option(parser: argparse.ArgumentParser, flag: str, schema: type, key: str, *, more: str = "",
                  config_value: bool = False, **kwargs) -> None:
    """A flag whose default and help are those of a config option (config/job.py, config/daemon.py), so the
    command line states neither again. more: a sentence about the flag alone. config_value: the flag's
    default is None, and the value in the job's job.yaml (or animad.yaml) applies."""
    info = option_info(schema, key)
    file = "animad.yaml" if schema is DaemonConfig else "job.yaml"
    text = info.help[0].lower() + info.help[1:] if info.help[1:2].islower() else info.help  # as argparse's
    text += f" {more}" if more else ""
    if config_value:
        text += f" (default: {'animad.yaml' if schema is DaemonConfig else 'the job'}'s {key})"
    else:
        text += f" (default {info.default}, as {file}'s {key})"
    parser.add_argument(flag, default=None if config_value else info.default, help=text.replace("%", "%%"),
                        **kwargs)
