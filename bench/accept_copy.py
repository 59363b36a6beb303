"""What the recorded accept (daemon/accept_record.py) costs a cross-file-system accept. Prints JSON.

    python bench/accept_copy.py [--files 3017] [--runs 3] [--source-dir /dev/shm]

Makes a folder of --files small files (half 2 KB "images", half 40-byte captions, as a dataset of
tagged pictures) on --source-dir (another file system than the job folder, so the accept copies,
verifies and removes), and times `move_dataset` (daemon/freeze.py) into a job folder under the
current directory's file system: without an accept record (the old path) and with one (five
fsynced phase writes). Best of --runs each, wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from animad.daemon.accept_record import AcceptRecord
from animad.daemon.freeze import move_dataset


def make_folder(root: Path, files: int) -> Path:
    folder = root / "drop"
    folder.mkdir()
    for index in range(files):
        if index % 2:
            (folder / f"img{index:05d}.txt").write_text(f"@demo, tag{index % 300}, smile\n")
        else:
            (folder / f"img{index:05d}.png").write_bytes(os.urandom(2048))
    return folder


def one_run(source_root: Path, job_root: Path, files: int, recorded: bool) -> float:
    source_parent = Path(tempfile.mkdtemp(dir=source_root))
    job_parent = Path(tempfile.mkdtemp(dir=job_root))
    try:
        source = make_folder(source_parent, files)
        job_dir = job_parent / "1-drop"
        job_dir.mkdir()
        started = time.perf_counter()
        record = None
        if recorded:
            record = AcceptRecord.start(job_dir, {"id": 1, "name": "drop", "source": str(source),
                                                  "created": time.time(), "outbox_dir": None})
        move_dataset(source, job_dir / "dataset", None, record)
        elapsed = time.perf_counter() - started
        assert not source.exists() and len(list((job_dir / "dataset").iterdir())) == files
        return elapsed
    finally:
        shutil.rmtree(source_parent, ignore_errors=True)
        shutil.rmtree(job_parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=3017)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--source-dir", type=Path, default=Path("/dev/shm"))
    args = parser.parse_args()
    job_root = Path.cwd()
    if os.stat(args.source_dir).st_dev == os.stat(job_root).st_dev:
        raise SystemExit(f"{args.source_dir} is on the same file system as {job_root}: the accept would rename")
    results: dict[str, list[float]] = {"without": [], "with accept.json": []}
    for _ in range(args.runs):  # interleaved, so a busy machine weighs on both alike
        for recorded, key in ((False, "without"), (True, "with accept.json")):
            results[key].append(one_run(args.source_dir, job_root, args.files, recorded))
    print(json.dumps({"files": args.files, "runs": args.runs,
                      "best_seconds": {k: round(min(v), 3) for k, v in results.items()},
                      "all_seconds": {k: [round(x, 3) for x in v] for k, v in results.items()}}, indent=1))


if __name__ == "__main__":
    main()
