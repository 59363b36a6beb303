"""`animad floor` and `animad select`."""

from __future__ import annotations

import json
from pathlib import Path

from animad.errors import UserError


def cmd_floor(args) -> int:
    from animad.select.curve import read_curve_file
    from animad.select.floor import analyze_curve

    curve = read_curve_file(Path(args.curve), args.tag)
    analysis = analyze_curve(curve.epochs, curve.losses, patience=args.patience, shortlist_size=args.size,
                             min_epoch=args.min_epoch)
    if args.json:
        out = {"floor_epoch": analysis.floor_epoch, "lowest_epoch": analysis.lowest_epoch,
               "shortlist": analysis.shortlist, "status": analysis.status,
               "candidate_epoch": analysis.candidate_epoch, "noise": analysis.noise,
               "picks": [p.__dict__ for p in analysis.picks], "ignored_epochs": analysis.ignored_epochs,
               "source": curve.source, "tag": curve.tag, "message": analysis.message}
        print(json.dumps(out, indent=2))
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
    print(analysis.message)
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
