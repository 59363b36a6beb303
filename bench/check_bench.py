"""What the dataset report costs `animad check`, and how well the perceptual hash separates. Prints JSON.

    python bench/check_bench.py [--images 3000] [--before DIR] [--runs 2]
    python bench/check_bench.py --hash

The first form generates a dataset of --images small PNGs (64-256 px a side, flat shapes, tag
captions from a 300-tag vocabulary, every 50th image a resized JPEG copy of the one before) and a
tiny model set, then times the real CLI, `python -m animad --config animad.yaml check DIR`, in a
fresh process (torch import included, as a user sees it): the best wall and the best CPU time of
--runs. With --before DIR (a copy of an older animad, e.g. `git archive HEAD | tar -x -C DIR`) the
same command is timed with that copy first on the path, for the before/after figure. It also
takes the CPU time, in this process, of the scan alone and of the report alone (build_report).

--hash measures the pHash threshold: the same generated picture resized 0.5x-2x and re-encoded as
JPEG at quality 70-95 (distances to the original), and all pairs of 300 distinct pictures.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image, ImageDraw  # noqa: E402

TAGS = [f"tag{n}" for n in range(300)]


def picture(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 12)):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        box = [x, y, x + rng.randrange(8, max(9, size[0] // 2)), y + rng.randrange(8, max(9, size[1] // 2))]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def make_folder(folder: Path, images: int) -> None:
    rng = random.Random(0)
    folder.mkdir(parents=True)
    size = None
    for n in range(images):
        previous, size = size, (rng.randrange(64, 257), rng.randrange(64, 257))
        if n % 50 == 49:  # the previous picture again, resized and re-encoded: a near-duplicate
            path = folder / f"{n:05d}.jpg"
            picture(n - 1, previous).resize((size[0] // 2 + 32, size[1] // 2 + 32)).save(path, quality=85)
        else:
            path = folder / f"{n:05d}.png"
            picture(n, size).save(path)
        tags = ["@bench"] + rng.sample(TAGS, rng.randint(5, 25))
        path.with_suffix(".txt").write_text(", ".join(tags))
    (folder / "job.yaml").write_text("trigger: '@bench'\ndata: {resolution: 256, min_bucket: 64, max_bucket: 512}\n")


def time_cli(config: Path, folder: Path, runs: int, source: Path | None) -> dict:
    """Best wall time and best CPU time (user + system) of the child over the runs. On a shared
    machine the CPU time is the steadier figure: waiting for a core does not count in it."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if source is not None:
        env["PYTHONPATH"] = str(source)
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "animad", "--config", str(config), "check", str(folder)],
                                env=env, capture_output=True, text=True, cwd=source or ROOT)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if result.returncode not in (0, 1) or "Traceback" in result.stderr:
            raise SystemExit(result.stdout + result.stderr)
    return {"wall_s": round(min(walls), 2), "cpu_s": round(min(cpus), 2)}


def time_parts(config: Path, folder: Path) -> dict:
    from animad.config.daemon import load_daemon_config
    from animad.config.job import load_job_file
    from animad.config.problems import Problems
    from animad.intake.dataset import scan_dataset
    from animad.intake.report import build_report

    load_daemon_config(config)
    job = load_job_file(folder / "job.yaml", Problems())
    start = time.process_time()
    dataset = scan_dataset(folder, job, Problems())
    scanned = time.process_time()
    report = build_report(job, dataset)
    done = time.process_time()
    return {"scan_cpu_s": round(scanned - start, 2), "report_cpu_s": round(done - scanned, 3),
            "warnings": sum(f.severity == "warning" for f in report.findings),
            "near_duplicate_groups": sum(f.kind == "near_duplicate" for f in report.findings)}


def hash_figures() -> dict:
    from animad.intake.imagehash import NEAR_BITS, distance, phash

    same = []
    for seed in range(200):
        original = picture(seed, (256, 256))
        for scale in (0.5, 0.75, 1.5, 2.0):
            for quality in (70, 95):
                buffer = io.BytesIO()
                original.resize((int(256 * scale),) * 2, Image.Resampling.LANCZOS).save(buffer, "JPEG",
                                                                                          quality=quality)
                same.append(distance(phash(original), phash(Image.open(io.BytesIO(buffer.getvalue())))))
    hashes = [phash(picture(seed, (256, 256))) for seed in range(300)]
    different = [distance(a, b) for a, b in itertools.combinations(hashes, 2)]
    return {"threshold_bits": NEAR_BITS, "same_picture_max": max(same), "same_picture_mean": sum(same) / len(same),
            "same_pairs": len(same), "distinct_min": min(different),
            "distinct_mean": round(sum(different) / len(different), 1), "distinct_pairs": len(different),
            "distinct_at_or_under_threshold": sum(d <= NEAR_BITS for d in different)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--before", type=Path, help="an older animad copy to time first, for the before figure")
    parser.add_argument("--hash", action="store_true", help="measure the perceptual hash threshold instead")
    args = parser.parse_args()
    if args.hash:
        print(json.dumps(hash_figures(), indent=2))
        return
    from animad.demo.synthetic import write_daemon_config

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from animad.anima.tiny import make_tiny_model_set

        config = write_daemon_config(tmp / "animad.yaml", make_tiny_model_set(tmp / "models", seed=0))
        folder = tmp / "dataset"
        start = time.perf_counter()
        make_folder(folder, args.images)
        out = {"images": args.images, "sizes_px": "64-256 a side", "generate_s": round(time.perf_counter() - start, 1)}
        if args.before:
            out["check_before"] = time_cli(config, folder, args.runs, args.before.resolve())
        out["check_after"] = time_cli(config, folder, args.runs, None)
        out.update(time_parts(config, folder))
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
