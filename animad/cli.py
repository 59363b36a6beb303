"""The `animad` command line. Each verb imports its module lazily so `animad status` stays instant."""

from __future__ import annotations

import argparse
import importlib
import sys

from animad import __version__

# verb -> (module, function, one-line help). The function receives the parsed args and returns an exit code.
VERBS = {
    "run": ("animad.daemon.commands", "cmd_run", "run the daemon in the foreground (journald-friendly)"),
    "check": ("animad.commands", "cmd_check", "validate a dataset folder and print every problem"),
    "status": ("animad.daemon.commands", "cmd_status", "show the queue and the running job's progress"),
    "pause": ("animad.daemon.commands", "cmd_pause", "pause a job (it saves state and waits)"),
    "resume": ("animad.daemon.commands", "cmd_resume", "resume a paused job"),
    "cancel": ("animad.daemon.commands", "cmd_cancel", "cancel a job (its files are kept)"),
    "retry": ("animad.daemon.commands", "cmd_retry", "queue a failed or cancelled job again"),
    "logs": ("animad.daemon.commands", "cmd_logs", "print a job's log"),
    "tensorboard": ("animad.daemon.commands", "cmd_tensorboard", "start TensorBoard for a job on 127.0.0.1"),
    "train": ("animad.commands", "cmd_train", "train one dataset folder in the foreground"),
    "select": ("animad.select.commands", "cmd_select", "re-run selection and previews for a finished job"),
    "floor": ("animad.select.commands", "cmd_floor", "find the loss floor of a curve (CSV or TensorBoard dir)"),
    "demo": ("animad.daemon.demo", "cmd_demo", "the whole inbox -> train -> select -> outbox path on a tiny model"),
    "init": ("animad.commands", "cmd_init", "write a commented animad.yaml"),
    "make-tiny": ("animad.commands", "cmd_make_tiny", "write a tiny random Anima-shaped model set (for tests)"),
    "job": ("animad.daemon.child", "cmd_job", argparse.SUPPRESS),  # internal: one job in a child process
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="animad",
        description="Drop a dataset folder in the inbox before bed; wake up to a shortlist of the best "
                    "Anima LoRA epochs, with previews.")
    parser.add_argument("--version", action="version", version=f"animad {__version__}")
    parser.add_argument("--config", help="path to animad.yaml (default: $ANIMAD_CONFIG, ./animad.yaml, "
                                         "~/.config/animad/animad.yaml)")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for verb, (module, _, help_text) in VERBS.items():
        kwargs = {} if help_text == argparse.SUPPRESS else {"help": help_text, "description": help_text}
        sp = sub.add_parser(verb, **kwargs)
        _add_arguments(verb, sp)
    return parser


def _add_arguments(verb: str, sp: argparse.ArgumentParser) -> None:
    """Arguments per verb live here (not in the lazily imported modules) so --help needs no torch."""
    if verb == "run":
        sp.add_argument("--now", action="store_true", help="start the next job even outside the window")
        sp.add_argument("--once", action="store_true", help="exit when the queue is empty (for scripts)")
    elif verb == "check":
        sp.add_argument("dir", help="dataset folder with job.yaml")
        sp.add_argument("--json", action="store_true", help="print the problems as JSON")
    elif verb == "status":
        sp.add_argument("--json", action="store_true", help="machine-readable output")
    elif verb in ("pause", "cancel", "retry", "logs", "tensorboard"):
        sp.add_argument("job", help="job id or name")
        if verb == "logs":
            sp.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
        if verb == "tensorboard":
            sp.add_argument("--port", type=int, help="port on 127.0.0.1 (default from animad.yaml)")
    elif verb == "resume":
        sp.add_argument("job", nargs="?", help="job id or name (default: every paused job)")
        sp.add_argument("--now", action="store_true", help="resume now, even outside the window")
    elif verb == "train":
        sp.add_argument("dir", help="dataset folder with job.yaml, or a daemon job folder")
        sp.add_argument("--out", help="work folder (default ./runs/NAME); an existing one is resumed")
        sp.add_argument("--no-select", action="store_true", help="skip selection and previews at the end")
        sp.add_argument("--gpus", type=int, help="train on this many GPUs (default: animad.yaml's gpus)")
    elif verb == "select":
        sp.add_argument("job", help="job id or name, or a work folder from 'animad train'")
        sp.add_argument("--prompt", action="append", help="preview prompt (repeatable; replaces the job's)")
        sp.add_argument("--seed", action="append", type=int, help="preview seed (repeatable)")
        sp.add_argument("--steps", type=int, help="sampler steps")
        sp.add_argument("--size", type=int, help="preview width and height")
        sp.add_argument("--no-previews", action="store_true", help="only the floor analysis and package")
    elif verb == "floor":
        sp.add_argument("curve", help="CSV with epoch,loss columns, an epochs.jsonl, or a TensorBoard log dir")
        sp.add_argument("--json", action="store_true", help="print JSON")
        sp.add_argument("--patience", type=int, default=15)
        sp.add_argument("--size", type=int, default=4, help="shortlist size")
        sp.add_argument("--min-epoch", type=int, default=1)
        sp.add_argument("--tag", help="TensorBoard scalar tag (default: eval/loss, else loss/epoch_average)")
    elif verb == "demo":
        sp.add_argument("--dir", default="demo", help="folder for the demo (default ./demo)")
        sp.add_argument("--epochs", type=int, default=12, help="epochs to train")
    elif verb == "init":
        sp.add_argument("path", nargs="?", default="animad.yaml", help="where to write (default ./animad.yaml)")
        sp.add_argument("--force", action="store_true", help="replace an existing file (a .bak copy is kept)")
    elif verb == "make-tiny":
        sp.add_argument("dir", help="folder for dit/text_encoder/vae .safetensors")
        sp.add_argument("--seed", type=int, default=0)
    elif verb == "job":
        sp.add_argument("job_dir")
        sp.add_argument("--db", required=True)
        sp.add_argument("--job-id", type=int, required=True)
        sp.add_argument("--phase", choices=("train", "select"), default="train")
        sp.add_argument("--report-fd", type=int, default=None)


def describe_os_error(error: OSError) -> str:
    import errno

    from animad.errors import is_disk_full

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
    module_name, function_name, _ = VERBS[args.verb]
    from animad.config.problems import ConfigError
    from animad.errors import UserError

    try:
        function = getattr(importlib.import_module(module_name), function_name)
        return int(function(args) or 0)
    except ConfigError as error:
        sys.stderr.write(str(error))
        return 2
    except UserError as error:
        sys.stderr.write(f"animad {args.verb}: {error}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except OSError as error:  # the file system said no: name the file and the usual fix, no traceback
        sys.stderr.write(f"animad {args.verb}: {describe_os_error(error)}\n")
        return 2
