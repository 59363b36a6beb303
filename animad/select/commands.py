"""`animad floor` and `animad select`."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

from animad.errors import UserError


def cmd_floor(args) -> int:
    """Given `animad floor` arguments, print the floor analysis of a curve (JSON with --json) and return 0.

    Bad input raises UserError, which the CLI prints without a traceback (exit 2).
    """
    from animad.select.curve import read_curve_file
    from animad.select.floor import analyze_curve

    for name in ("patience", "size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1 (got {getattr(args, name)})")
    curve = read_curve_file(Path(args.curve), args.tag)
    analysis = analyze_curve(curve.epochs, curve.losses, patience=args.patience, shortlist_size=args.size,
                             min_epoch=args.min_epoch)
    if args.json:
        print(json.dumps({"floor_epoch": analysis.floor_epoch, "lowest_epoch": analysis.lowest_epoch,
                          "shortlist": analysis.shortlist, "status": analysis.status, "noise": analysis.noise,
                          "candidate_epoch": analysis.candidate_epoch,
                          "picks": [dataclasses.asdict(pick) for pick in analysis.picks],
                          "ignored_epochs": analysis.ignored_epochs, "source": curve.source, "tag": curve.tag,
                          "message": analysis.message}, indent=2))
        return 0
    floor = analysis.floor_epoch if analysis.floor_epoch is not None else "none yet"
    print(f"curve:        {args.curve} ({curve.tag}, {len(curve.epochs)} epochs)")
    print(f"status:       {analysis.status}")
    print(f"floor epoch:  {floor}")
    print(f"lowest epoch: {analysis.lowest_epoch}")
    print(f"noise sigma:  {analysis.noise:.4g}")
    print("shortlist:")
    for pick in analysis.picks:
        print(f"  epoch {pick.epoch:>5}  loss {pick.loss:.5g}  {pick.kind:<6}  {pick.reason}")
    print(textwrap.fill(analysis.message, width=100))
    return 0


def find_job_paths(args):
    """A job id or name from the daemon's queue, or a work folder from `animad train`."""
    from animad.layout import JobPaths

    candidate = Path(args.job)
    if (candidate / "job.resolved.yaml").is_file():
        return JobPaths(candidate), candidate / "review"
    try:
        from animad.daemon.commands import locate_job
    except ImportError:
        locate_job = None
    if locate_job is not None:
        found = locate_job(args)
        if found is not None:
            return found
    raise UserError(f"no job '{args.job}' in the queue, and {candidate} is not a job folder "
                    "(one with job.resolved.yaml)")


def cmd_select(args) -> int:
    from animad.commands import _daemon
    from animad.logs import setup_logging
    from animad.select.run import select_job

    setup_logging()
    paths, outbox = find_job_paths(args)
    package = select_job(paths, daemon=_daemon(args), outbox=outbox, prompts=args.prompt, seeds=args.seed,
                         steps=args.steps, size=args.size, previews=not args.no_previews)
    print(f"review package: {package / 'index.html'}")
    return 0
