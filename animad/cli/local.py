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
from animad.progress_report import Report
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
        report = result.dataset_report.to_json() if result.dataset_report else None
        print(json.dumps({"ok": result.ok, "problems": result.problems.to_json(), "dataset_report": report},
                         indent=2))
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
    parser.add_argument("dir", help="folder for dit/text_encoder/vae .safetensors and tokenizers/ (made if missing)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random weights (default 0: the same files every time, as the tests use)")


def models_snippet(files: dict[str, Path], name: str = "tiny") -> str:
    """The animad.yaml lines that make a model set the default: paste them in place of its models: part."""
    import yaml

    config = {"default_model": name,
              "models": {name: {key: str(Path(files[key]).resolve()) for key in ("dit", "text_encoder", "vae")}},
              "tokenizers": [str(Path(files["tokenizers"]).resolve())]}
    # safe_dump quotes what YAML would misread (a colon or a leading ~ in a path), so the paste loads as written.
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def cmd_make_tiny(args) -> int:
    from animad.anima.tiny import make_tiny_model_set  # torch, diffusers, transformers

    files = make_tiny_model_set(Path(args.dir), seed=args.seed)
    print(f"wrote a tiny random Anima-shaped model set in {Path(args.dir).resolve()} (for tests and "
          "experiments: its previews are noise)")
    # The snippet is the whole point of the output, so nothing else printed looks like YAML.
    print("To train on it, paste these lines into animad.yaml in place of its default_model, models and "
          "tokenizers\n(`animad init` writes a full one; these lines alone are a valid animad.yaml too):\n")
    print(models_snippet(files), end="")
    return 0


class ProgressBar:
    """What `animad train` shows while it works: a bar with an ETA for each long phase, a line for the rest.

    Caching, training and previews each get their own bar (each counts something: images cached,
    steps, images rendered); eval and saving show on the training bar, since they happen between its
    steps and its ETA (the average pace since it began) already pays for them. The training bar ends
    where the run ends: max_epochs/max_steps, or the cooldown's end once the floor is confirmed.
    """

    COUNTED = {"caching": ("caching latents", "image"), "previews": ("previews", "image")}
    SAID = {"loading": "loading the models ...", "caching": "caching latents and caption embeddings ...",
            "selecting": "finding the floor and the shortlist ..."}

    def __init__(self, file=None):
        self.file = file or sys.stderr  # stdout keeps only the results (paths), for scripts
        self.bar = None
        self.phase = None  # the phase the open bar counts
        self.redirect = None

    def __enter__(self) -> "ProgressBar":
        from tqdm.contrib.logging import logging_redirect_tqdm

        # Log lines on the console go through tqdm, above the bar, instead of through the middle of it.
        self.redirect = logging_redirect_tqdm()
        self.redirect.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        self.redirect.__exit__(*exc)

    def __call__(self, sent: dict) -> None:
        progress = Report.read(sent)
        phase = progress.phase
        if phase == "training":
            self._training(progress)
        elif phase in self.COUNTED and progress.total:
            self._counted(phase, progress)
        elif phase in ("eval", "saving") and self.phase == "training":
            self.bar.set_postfix_str(f"{'evaluating' if phase == 'eval' else 'saving'} epoch {progress.epoch}")
        elif phase in self.SAID:
            self._close()
            self.file.write(self.SAID[phase] + "\n")
            self.file.flush()

    def _open(self, phase: str, label: str, total: int, initial: int, unit: str):
        from tqdm import tqdm

        self._close()
        # initial: a resumed run or a half-rendered package starts its count where it stands, and
        # tqdm's rate (smoothing 0: the average since the bar opened) counts only what this run did.
        self.bar = tqdm(total=total, initial=initial, unit=unit, file=self.file, dynamic_ncols=True, smoothing=0,
                        desc=label)
        self.phase = phase

    def _counted(self, phase: str, progress: Report) -> None:
        label, unit = self.COUNTED[phase]
        if self.phase != phase:
            self._open(phase, label, progress.total, progress.done, unit)
        self.bar.total = progress.total
        self.bar.update(progress.done - self.bar.n)

    def _training(self, progress: Report) -> None:
        # end_step moves once the floor is confirmed (the cooldown's end).
        label = f"epoch {progress.epoch}/{progress.end_epoch}"
        if self.phase != "training":
            self._open("training", label, progress.end_step, progress.step - 1, "step")
        self.bar.total = progress.end_step
        self.bar.set_description(label, refresh=False)
        extra = {"floor": progress.floor} if progress.floor and progress.floor != "off" else {}
        if progress.cooling:
            left = progress.cooldown_epochs_left
            extra = {"cooling": f"{left} epoch{'' if left == 1 else 's'} left"}
        self.bar.set_postfix(loss=f"{progress.loss:.4f}", s_it=f"{progress.s_per_it:.2f}", **extra, refresh=False)
        self.bar.update(progress.step - self.bar.n)

    def _close(self) -> None:
        if self.bar:
            self.bar.close()
        self.bar, self.phase = None, None

    def close(self) -> None:
        self._close()


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
    from animad.select.try_first import package_try_first_line
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
    stop = StopFlag()
    stop.install()
    with ProgressBar() as bar:
        status = train_job(paths, daemon=daemon, should_stop=stop, on_progress=bar, gpus=args.gpus)
    if status == "paused":
        print(f"stopped; state saved. Run the same command again to resume: animad train {args.dir}")
        return Exit.PAUSED
    print(f"training finished; epoch files in {paths.epochs_dir}")
    if not args.no_select:
        with ProgressBar() as bar:
            package = select_job(paths, daemon=daemon, outbox=paths.root / "review", should_stop=stop,
                                 on_progress=bar)
        if stop.requested:  # finished images are kept; the rerun trains nothing and renders the rest
            print(f"stopped during the previews. Run the same command again to finish them: animad train {args.dir}")
            return Exit.PAUSED
        print(f"review package: {package / 'index.html'}")
        first = package_try_first_line(package)  # the last line: which epoch to render first, and why
        if first:
            print(first)
    return Exit.FINISHED


VERBS = [
    Verb("check", "validate a dataset folder and print every problem", check_arguments, cmd_check),
    Verb("train", "train one dataset folder in the foreground, with a progress bar for each long phase",
         train_arguments, cmd_train),
    Verb("init", "write a commented animad.yaml", init_arguments, cmd_init),
    Verb("make-tiny", "write a tiny random Anima-shaped model set (for tests) and print the animad.yaml lines "
         "that use it", make_tiny_arguments, cmd_make_tiny),
]
