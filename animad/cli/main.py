"""The `animad` command line: one parser, and the verbs each module in cli/ owns.

Verb modules import only light modules at the top; a verb imports torch-heavy parts (train, select,
the models) when it runs, so `animad status` and `animad --help` stay instant.
"""

from __future__ import annotations

import argparse
import errno
import sys

from animad import __version__
from animad.cli import demo, importing, job, jobs, local, review
from animad.config.problems import ConfigError
from animad.errors import UserError, is_disk_full
from animad.safe_text import safe

VERBS = {verb.name: verb for module in (jobs, local, review, demo, job, importing) for verb in module.VERBS}
ORDER = ("run", "check", "status", "pause", "resume", "cancel", "retry", "keep", "logs", "tensorboard", "train", "select",
         "floor", "demo", "init", "import", "make-tiny", "job")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="animad",
        description="Drop a dataset folder in the inbox before bed; wake up to a shortlist of the best "
                    "Anima LoRA epochs, with previews.")
    parser.add_argument("--version", action="version", version=f"animad {__version__}")
    parser.add_argument("--config", help="path to animad.yaml (default: $ANIMAD_CONFIG, ./animad.yaml, "
                                         "~/.config/animad/animad.yaml)")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for name in ORDER:
        verb = VERBS[name]
        kwargs = {} if verb.hidden else {"help": verb.help, "description": verb.help}
        verb.arguments(sub.add_parser(name, **kwargs))
    return parser


def describe_os_error(error: OSError) -> str:
    where = error.filename or "a file"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {where}. Check its owner and mode (ls -l), or run animad as that user."
    if is_disk_full(error):
        return f"disk full while writing {where}. Free some space and run the command again."
    if error.errno == errno.EROFS:
        return f"{where} is on a read-only file system. Point the setting that names it somewhere writable."
    return f"{error.strerror or error}: {where}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 2
    try:
        return int(VERBS[args.verb].run(args) or 0)
    except ConfigError as error:
        sys.stderr.write(str(error))
        return 2
    except UserError as error:
        # Messages name user files and job names: shown escaped, so none can drive the terminal.
        sys.stderr.write(f"animad {args.verb}: {safe(str(error), keep_newlines=True)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except OSError as error:  # the file system said no: name the file and the usual fix, no traceback
        sys.stderr.write(f"animad {args.verb}: {describe_os_error(error)}\n")
        return 2
