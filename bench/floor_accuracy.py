"""How far the floor detector lands from the known onset of generated curves. Prints JSON.

    python bench/floor_accuracy.py [--curves 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from animad.select.floor import analyze_curve  # noqa: E402
from curve_families import FAMILIES, make_curve, still_falling  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--curves", type=int, default=50)
    args = parser.parse_args()
    out = {}
    for family in FAMILIES:
        errors, relative, missed = [], [], 0
        patience = 3 if family == "short" else 15
        for seed in range(1000, 1000 + args.curves):
            epochs, losses, onset, _ = make_curve(family, seed)
            analysis = analyze_curve(epochs, losses, patience=patience)
            if analysis.floor_epoch is None:
                missed += 1
                continue
            errors.append(analysis.floor_epoch - onset)
            relative.append(abs(analysis.floor_epoch - onset) / onset)
        errors = np.array(errors) if errors else np.array([0])
        out[family] = {"mean_abs_error_epochs": round(float(np.mean(np.abs(errors))), 2),
                       "median_abs_error_epochs": float(np.median(np.abs(errors))),
                       "max_abs_error_epochs": int(np.max(np.abs(errors))),
                       "bias_epochs": round(float(np.mean(errors)), 2),
                       "mean_relative_error": round(float(np.mean(relative)) if relative else 0.0, 3),
                       "no_floor_found": missed}
    false_floors = sum(analyze_curve(*still_falling(seed), patience=15).status == "floor"
                       for seed in range(args.curves))
    out["still_falling_false_floor_rate"] = false_floors / args.curves
    epochs, losses, _, _ = make_curve("long", 0)
    t = time.perf_counter()
    for _ in range(20):
        analyze_curve(epochs, losses)
    out["ms_per_500_epoch_curve"] = round((time.perf_counter() - t) / 20 * 1000, 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
