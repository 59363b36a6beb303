"""Verbs that work without the daemon: check, train, init and make-tiny."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from animad.cli.common import Verb, daemon_of
from animad.config.daemon import init_text
from animad.errors import UserError
from animad.fsutil import write_atomic
from animad.layout import JobPaths
from animad.logs import setup_logging
from animad.outcomes import Exit
from animad.signals import StopFlag


def check_arguments(parser) -> None:
    parser.add_argument("dir", help="dataset folder with job.yaml")
    parser.add_argument("--json", action="store_true", help="print the problems as JSON")


def cmd_check(args) -> int:
    from animad.intake.check import check_folder  # reads model headers: imports torch

    folder = Path(args.dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    result = check_folder(folder, daemon_of(args))
    if args.json:
        print(json.dumps({"ok": result.ok, "problems": result.problems.to_json()}, indent=2))
    else:
        sys.stdout.write(result.report())
    return 0 if result.ok else 1


def init_arguments(parser) -> None:
    parser.add_argument("path", nargs="?", default="animad.yaml", help="where to write (default ./animad.yaml)")
    parser.add_argument("--force", action="store_true", help="replace an existing file (a .bak copy is kept)")


def cmd_init(args) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        raise UserError(f"{path} exists; use --force to replace it (a .bak copy is kept)")
    if path.exists():
        path.with_name(path.name + ".bak").write_bytes(path.read_bytes())
    write_atomic(path, init_text().encode())
    print(f"wrote {path}; edit the model paths, then start the daemon with: animad --config {path} run")
    return 0


def make_tiny_arguments(parser) -> None:
    parser.add_argument("dir", help="folder for dit/text_encoder/vae .safetensors")
    parser.add_argument("--seed", type=int, default=0)


def cmd_make_tiny(args) -> int:
    from animad.anima.tiny import make_tiny_model_set  # torch, diffusers, transformers

    files = make_tiny_model_set(Path(args.dir), seed=args.seed)
    for key, path in files.items():
        print(f"{key}: {path}")
    return 0


class ProgressBar:
    def __init__(self):
        self.bar = None

    def __call__(self, progress: dict) -> None:
        from tqdm import tqdm

        if progress.get("phase") != "training":
            if progress.get("phase") in ("eval", "saving") and self.bar:
                self.bar.set_postfix_str(f"{progress['phase']} epoch {progress.get('epoch')}")
            return
        if self.bar is None:
            self.bar = tqdm(total=progress["total_steps"], initial=progress["step"] - 1, unit="step",
                            dynamic_ncols=True)
        self.bar.n = progress["step"]
        self.bar.set_description(f"epoch {progress['epoch']}/{progress['max_epochs']}")
        self.bar.set_postfix(loss=f"{progress['loss']:.4f}", s_it=f"{progress['s_per_it']:.2f}")
        self.bar.refresh()

    def close(self):
        if self.bar:
            self.bar.close()


def prepare_foreground_job(folder: Path, out: Path | None, daemon) -> JobPaths:
    """Check a dataset folder and write (or refresh) the work folder that trains it in place."""
    from animad.intake.check import check_folder, job_name
    from animad.intake.jobfiles import write_job_files

    result = check_folder(folder, daemon, work_dir=out or Path("runs"))
    sys.stdout.write(result.report())
    if not result.ok:
        raise SystemExit(1)
    paths = JobPaths(out or Path("runs") / job_name(folder, result.config))
    existing = paths.read_meta()
    if existing and Path(existing.get("dataset", "")) != folder.resolve():
        raise UserError(f"{paths.root} holds a run of {existing.get('dataset')}; choose another --out")
    write_job_files(paths, result, dataset_dir=folder)
    return paths


def train_arguments(parser) -> None:
    parser.add_argument("dir", help="dataset folder with job.yaml, or a daemon job folder")
    parser.add_argument("--out", help="work folder (default ./runs/NAME); an existing one is resumed")
    parser.add_argument("--no-select", action="store_true", help="skip selection and previews at the end")
    parser.add_argument("--gpus", type=int, help="train on this many GPUs (default: animad.yaml's gpus)")


def cmd_train(args) -> int:
    from animad.select.run import select_job
    from animad.train.run import train_job

    daemon = daemon_of(args)
    folder = Path(args.dir)
    if (folder / "job.resolved.yaml").is_file():
        paths = JobPaths(folder)
    elif (folder / "job.yaml").is_file():
        paths = prepare_foreground_job(folder, Path(args.out) if args.out else None, daemon)
    else:
        raise UserError(f"{folder}: no job.yaml (a dataset folder) or job.resolved.yaml (a job folder) here")
    setup_logging(paths.log)
    stop, bar = StopFlag(), ProgressBar()
    stop.install()
    try:
        status = train_job(paths, daemon=daemon, should_stop=stop, on_progress=bar, gpus=args.gpus)
    finally:
        bar.close()
    if status == "paused":
        print(f"stopped; state saved. Run the same command again to resume: animad train {args.dir}")
        return Exit.PAUSED
    print(f"training finished; epoch files in {paths.epochs_dir}")
    if not args.no_select:
        package = select_job(paths, daemon=daemon, outbox=paths.root / "review")
        print(f"review package: {package / 'index.html'}")
    return Exit.FINISHED


VERBS = [
    Verb("check", "validate a dataset folder and print every problem", check_arguments, cmd_check),
    Verb("train", "train one dataset folder in the foreground", train_arguments, cmd_train),
    Verb("init", "write a commented animad.yaml", init_arguments, cmd_init),
    Verb("make-tiny", "write a tiny random Anima-shaped model set (for tests)", make_tiny_arguments, cmd_make_tiny),
]
