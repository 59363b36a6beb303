"""Which schedule to follow with stop-at-floor on: measured on the tiny model, on the CPU.

    python bench/schedule_quality.py [--seeds 3] [--epochs 48] [--patience 5]

Runs, for each seed, the same generated dataset (animad.demo.synthetic) and tiny model set through
the real training loop with:
  (a) guides   the guides' fixed cosine to max_epochs, stop_at_floor off
  (b) cut      cosine, stop at the confirmed floor with no cooldown (animad before the cooldown)
  (c) cosine_cooled  cosine, cut at the floor and cooled to 0 (one candidate default)
  (d) default  schedule.type auto: constant after warmup until the floor, then cooled to 0 (the other
               candidate, and the default it measured)
and prints one JSON row per run (epochs trained, wall time, best and final stable eval loss, where
the floor was confirmed), then one summary row per variant: the means, the seed-to-seed spread of
(a)'s best eval loss (the noise a difference must beat) and each variant's best minus (a)'s per
seed. The aim: the default's best eval loss within (a)'s noise in at most half of (a)'s epochs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# One thread: the tiny model's matrices are too small to share out, and on a busy machine OpenMP's
# waiting threads made every step 15x slower (measured: 57 s -> 3.7 s for a 6-epoch run).
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from animad.anima.tiny import find_shared_tokenizers, make_tiny_model_set  # noqa: E402
from animad.config.daemon import load_daemon_config  # noqa: E402
from animad.demo.synthetic import make_dataset, tiny_job, write_daemon_config  # noqa: E402
from animad.intake.check import check_folder  # noqa: E402
from animad.intake.jobfiles import write_job_files  # noqa: E402
from animad.layout import JobPaths, read_epochs_log  # noqa: E402
from animad.train.run import train_job  # noqa: E402


def variants(epochs: int, patience: int, cooldown_fraction: float) -> dict[str, dict]:
    """job.yaml overrides per variant; everything else is the tiny job's."""
    floor = {"stop_at_floor": True, "patience": patience, "cooldown_fraction": cooldown_fraction}
    return {
        "guides": {"schedule": {"type": "cosine", "max_epochs": epochs}, "selection": {"stop_at_floor": False}},
        "cut": {"schedule": {"type": "cosine", "max_epochs": epochs}, "selection": {**floor, "cooldown_fraction": 0}},
        "cosine_cooled": {"schedule": {"type": "cosine", "max_epochs": epochs}, "selection": floor},
        "default": {"schedule": {"type": "auto", "max_epochs": epochs}, "selection": floor},
    }


def run_one(root: Path, daemon_config: Path, name: str, seed: int, overrides: dict, images: int) -> dict:
    job = tiny_job(seed=seed, data={"batch_size": 2, "repeats": 1}, **overrides)
    folder = make_dataset(root / f"{name}-{seed}" / "data", count=images, seed=seed, job=job)
    daemon = load_daemon_config(daemon_config)
    result = check_folder(folder, daemon)
    assert result.ok, result.report()
    paths = JobPaths(root / f"{name}-{seed}" / "run")
    write_job_files(paths, result, dataset_dir=folder)
    start = time.perf_counter()
    status = train_job(paths, daemon=daemon, should_stop=lambda: False, on_progress=lambda _: None)
    seconds = time.perf_counter() - start
    assert status == "finished", status
    records = read_epochs_log(paths.epochs_log)
    losses = [r["eval_loss"] for r in records]
    best = min(range(len(losses)), key=losses.__getitem__)
    cooled = [r["epoch"] for r in records if r.get("cooldown")]
    return {"variant": name, "seed": seed, "epochs": len(records), "seconds": round(seconds, 1),
            "best_eval": round(losses[best], 5), "best_epoch": records[best]["epoch"],
            "final_eval": round(losses[-1], 5), "final_lr": records[-1]["lr"],
            "cooldown_epochs": f"{cooled[0]}-{cooled[-1]}" if cooled else None,
            "finished": paths.read_ending().sentence}


def summarise(rows: list[dict]) -> list[dict]:
    guides = {r["seed"]: r for r in rows if r["variant"] == "guides"}
    spread = statistics.stdev(r["best_eval"] for r in guides.values()) if len(guides) > 1 else 0.0
    out = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        diffs = [r["best_eval"] - guides[r["seed"]]["best_eval"] for r in mine if r["seed"] in guides]
        out.append({"variant": name, "mean_epochs": statistics.mean(r["epochs"] for r in mine),
                    "mean_seconds": round(statistics.mean(r["seconds"] for r in mine), 1),
                    "mean_best_eval": round(statistics.mean(r["best_eval"] for r in mine), 5),
                    "mean_final_eval": round(statistics.mean(r["final_eval"] for r in mine), 5),
                    "best_minus_guides": [round(d, 5) for d in diffs],
                    "guides_best_seed_std": round(spread, 5)})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=80, help="max_epochs of every run")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--cooldown-fraction", type=float, default=0.2, help="selection.cooldown_fraction of (c), (d)")
    parser.add_argument("--only", nargs="*", help="variants to run (default: all)")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = make_tiny_model_set(root / "models", seed=0, tokenizers=find_shared_tokenizers())
        daemon_config = write_daemon_config(root / "animad.yaml", models)
        for seed in range(args.seeds):
            for name, overrides in variants(args.epochs, args.patience, args.cooldown_fraction).items():
                if args.only and name not in args.only:
                    continue
                rows.append(run_one(root, daemon_config, name, seed, overrides, args.images))
                print(json.dumps(rows[-1]), flush=True)
    for row in summarise(rows):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
