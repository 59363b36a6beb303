"""CLI verbs that work without the daemon: check, train, init and make-tiny."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from animad.config.daemon import find_config_path, init_text, load_daemon_config
from animad.errors import UserError


def _daemon(args):
    return load_daemon_config(find_config_path(getattr(args, "config", None)))


def cmd_check(args) -> int:
    from animad.validate import check_folder

    folder = Path(args.dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    result = check_folder(folder, _daemon(args))
    if args.json:
        print(json.dumps({"ok": result.ok, "problems": result.problems.to_json()}, indent=2))
    else:
        sys.stdout.write(result.report())
    return 0 if result.ok else 1


def cmd_init(args) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        raise UserError(f"{path} exists; use --force to replace it (a .bak copy is kept)")
    if path.exists():
        path.with_name(path.name + ".bak").write_bytes(path.read_bytes())
    from animad.fsutil import write_atomic

    write_atomic(path, init_text().encode())
    print(f"wrote {path}; edit the model paths, then start the daemon with: animad --config {path} run")
    return 0


def cmd_make_tiny(args) -> int:
    from animad.model.tiny import make_tiny_model_set

    files = make_tiny_model_set(Path(args.dir), seed=args.seed)
    for key, path in files.items():
        print(f"{key}: {path}")
    return 0


class StopFlag:
    """First Ctrl-C / SIGTERM: finish the step, save state, exit. Second: stop at once."""

    def __init__(self):
        self.requested = False

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True  # only set a flag: the loop saves state at its next step boundary

    def __call__(self) -> bool:
        return self.requested


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


def prepare_foreground_job(folder: Path, out: Path | None, daemon):
    """Check a dataset folder and write (or refresh) the work folder that trains it in place."""
    from animad.layout import JobPaths
    from animad.train.prepare import write_job_files
    from animad.validate import check_folder, job_name

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


def cmd_train(args) -> int:
    from animad.layout import JobPaths
    from animad.logs import setup_logging
    from animad.train.run import train_job

    daemon = _daemon(args)
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
        return 75
    print(f"training finished; epoch files in {paths.epochs_dir}")
    if not args.no_select:
        from animad.select.run import select_job

        package = select_job(paths, daemon=daemon, outbox=paths.root / "review")
        print(f"review package: {package / 'index.html'}")
    return 0
