"""Verbs that look at a curve or a finished job: floor and select."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

from animad.cli.common import Verb, daemon_of, schema_option
from animad.cli.jobs import locate_job
from animad.config.job import JobConfig, PreviewConfig
from animad.errors import UserError
from animad.layout import JobPaths
from animad.logs import setup_logging
from animad.select.curve import read_curve_file
from animad.select.shortlist import analyze_curve
from animad.select.try_first import try_first_line


def floor_arguments(parser) -> None:
    parser.add_argument("curve", help="a CSV with epoch,loss columns (others are ignored), TensorBoard's own CSV "
                                      "export (Wall time,Step,Value; the step is read as the epoch, as animad logs "
                                      "its epoch curves), an epochs.jsonl, or a TensorBoard log folder")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (for scripts) instead of the readable summary")
    schema_option(parser, "--patience", JobConfig, "selection.patience", type=int)
    schema_option(parser, "--size", JobConfig, "selection.shortlist_size", type=int)
    schema_option(parser, "--min-epoch", JobConfig, "selection.min_epoch", type=int,
                  more="Raise it to skip a warmup you know is noisy.")
    parser.add_argument("--tag", help="TensorBoard scalar tag to read (default: eval/loss, the stable eval curve, "
                                      "else loss/epoch_average); for a log folder or event file only")


def cmd_floor(args) -> int:
    """Given `animad floor` arguments, print the floor analysis of a curve (JSON with --json) and return 0.

    Bad input raises UserError, which the CLI prints without a traceback (exit 2).
    """
    for name in ("patience", "size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1 (got {getattr(args, name)})")
    curve = read_curve_file(Path(args.curve), args.tag)
    analysis = analyze_curve(curve.epochs, curve.losses, patience=args.patience, shortlist_size=args.size,
                             min_epoch=args.min_epoch, cooldown_epochs=curve.cooldown)
    if args.json:
        print(json.dumps({"floor_epoch": analysis.floor_epoch, "lowest_epoch": analysis.lowest_epoch,
                          "shortlist": analysis.shortlist, "status": analysis.status, "noise": analysis.noise,
                          "candidate_epoch": analysis.candidate_epoch, "knee_epoch": analysis.knee_epoch,
                          "cooldown_epochs": sorted(analysis.cooldown_epochs),
                          "picks": [dataclasses.asdict(pick) for pick in analysis.picks],
                          "ignored_epochs": analysis.ignored_epochs, "source": curve.source, "tag": curve.tag,
                          "try_first": analysis.try_first, "numbers": analysis.numbers,
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
        print(f"  epoch {pick.epoch:>5}  loss {pick.loss:.5g}  {pick.kind:<9}  {pick.reason}")
    print(textwrap.fill(analysis.message, width=100))
    if analysis.try_first:
        print(textwrap.fill(try_first_line(analysis.try_first), width=100))
    return 0


def find_job_paths(args) -> tuple[JobPaths, Path]:
    """A job id or name from the daemon's queue, or a work folder from `animad train`."""
    candidate = Path(args.job)
    if (candidate / "job.resolved.yaml").is_file():
        return JobPaths(candidate), candidate / "review"
    found = locate_job(args)
    if found is not None:
        return found
    raise UserError(f"no job '{args.job}' in the queue, and {candidate} is not a job folder "
                    "(one with job.resolved.yaml)")


def select_arguments(parser) -> None:
    parser.add_argument("job", help="job id or name (as `animad status` lists it), or a work folder from "
                                    "'animad train'")
    parser.add_argument("--epoch", action="append", type=int, default=[], metavar="N",
                        help="add a preview row for epoch N to the package (repeatable); images already "
                             "rendered are reused")
    parser.add_argument("--strength", action="append", type=float, default=[], metavar="S",
                        help="LoRA strength for the added rows (repeatable; default 1.0; without --epoch: "
                             "every shortlisted epoch at S)")
    parser.add_argument("--prompt", action="append", help="preview prompt (repeatable): added to the package's "
                                                          "prompts, or replacing them with --prompts-mode replace")
    parser.add_argument("--prompts-mode", choices=("add", "replace"), default="add",
                        help="add (default): --prompt joins the package's prompts; replace: the --prompt list is "
                             "the whole set")
    parser.add_argument("--seed", action="append", type=int,
                        help="preview seed (repeatable): one per --prompt; when starting over (no --epoch, "
                             "--strength or --prompt), one per prompt of the job")
    schema_option(parser, "--steps", JobConfig, "previews.steps", type=int, config_value=True,
                  more="Another value renders every image again.")
    parser.add_argument("--size", type=int, help=f"preview width and height (default: the job's previews.width and "
                                                 f"height, {PreviewConfig.width} unless it sets them; another value "
                                                 f"renders every image again)")
    parser.add_argument("--no-previews", action="store_true",
                        help="only the floor analysis and the package, no images (fast, and needs no model files)")


def cmd_select(args) -> int:
    """Given `animad select` arguments, redo a job's selection (or add rows/prompts to its package); return 0.

    With no --epoch, --strength or --prompt the package is built afresh from the job's settings.
    """
    from animad.select.run import select_job  # loads the models: imports torch

    for epoch in args.epoch:
        if epoch < 1:
            raise UserError(f"--epoch must be at least 1 (got {epoch})")
    for strength in args.strength:
        if not 0 <= strength <= 10:
            raise UserError(f"--strength must be between 0 and 10 (got {strength:g}); 1.0 is the LoRA as trained")
    setup_logging()
    paths, outbox = find_job_paths(args)
    package = select_job(paths, daemon=daemon_of(args), outbox=outbox, prompts=args.prompt,
                         prompts_mode=args.prompts_mode, seeds=args.seed, steps=args.steps, size=args.size,
                         add_epochs=args.epoch, add_strengths=args.strength, previews=not args.no_previews)
    print(f"review package: {package / 'index.html'}")
    return 0


VERBS = [
    Verb("select", "re-run selection and previews for a finished job", select_arguments, cmd_select),
    Verb("floor", "find the loss floor of a curve (CSV or TensorBoard dir)", floor_arguments, cmd_floor),
]
