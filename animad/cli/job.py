"""The hidden `animad job` verb: the daemon spawns one per job phase (daemon/child.py does the work)."""

from __future__ import annotations

import argparse

from animad.cli.common import Verb


def job_arguments(parser) -> None:
    parser.add_argument("job_dir")
    parser.add_argument("--db", required=True)
    parser.add_argument("--job-id", type=int, required=True)
    parser.add_argument("--phase", choices=("train", "select"), default="train")
    parser.add_argument("--report-fd", type=int, default=None)


def cmd_job(args) -> int:
    from animad.daemon.child import run_job  # trains or renders: imports torch

    return run_job(args.job_dir, args.db, args.job_id, args.phase, args.report_fd, args.config)


VERBS = [Verb("job", argparse.SUPPRESS, job_arguments, cmd_job, hidden=True)]
