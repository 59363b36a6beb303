"""The hidden `animad job` verb: the daemon spawns one per job phase (daemon/child.py does the work)."""

from __future__ import annotations

import argparse

from animad.cli.common import Verb


def job_arguments(parser) -> None:
    # Hidden from --help (the daemon is its only caller), but described like every other option.
    parser.add_argument("job_dir", help="the job's work folder (state/jobs/<id>-<name>)")
    parser.add_argument("--db", required=True, help="the daemon's queue database, where progress is reported")
    parser.add_argument("--job-id", type=int, required=True, help="the job's row in that database")
    parser.add_argument("--phase", choices=("train", "select"), default="train",
                        help="what to run (default train: a job starts by training; the daemon asks for select after)")
    parser.add_argument("--report-fd", type=int, default=None,
                        help="a pipe to the daemon for the error message (default none): it needs no disk, so a "
                             "full disk still gets its reason through")


def cmd_job(args) -> int:
    from animad.signals import die_with_parent

    # At once, before seconds of imports: a daemon killed meanwhile still stops this child (run_job
    # checks for a daemon that died even before this line).
    die_with_parent()
    from animad.daemon.child import run_job  # trains or renders: imports torch

    return run_job(args.job_dir, args.db, args.job_id, args.phase, args.report_fd, args.config)


VERBS = [Verb("job", argparse.SUPPRESS, job_arguments, cmd_job, hidden=True)]
