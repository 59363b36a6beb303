"""How many of the importer's own cases (tests/fixtures/import-cases) come over with a given checkout.

    python bench/import_cases.py                      # this checkout
    python bench/import_cases.py --code /path/to/old  # another checkout's animad (its PYTHONPATH)

Each case is imported as a user would, in an empty folder: `python -m animad import FILES` (no --to,
no animad.yaml), in a subprocess so the chosen code runs. A case comes over when job.yaml and
IMPORT.txt are written, no traceback is printed, the stated values are under our keys, every stated
key is named and no variable is left unexpanded (tests/import_cases.py says how each is checked).
Prints one line per case and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "tests"))

from import_cases import case_names, failures, files_of  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=HERE, help="the checkout whose animad to run (default: this)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(args.code.resolve()), HOME=tempfile.mkdtemp(prefix="animad-home-"))
    came, results = 0, {}
    for name in case_names():
        with tempfile.TemporaryDirectory() as out:
            run = subprocess.run([sys.executable, "-m", "animad", "import", *map(str, files_of(name))], cwd=out,
                                 env=env, capture_output=True, text=True, timeout=300)
            found = failures(name, Path(out), run.stdout + run.stderr)
            if run.returncode not in (0, 1):
                found.insert(0, f"exit status {run.returncode}: {(run.stderr or run.stdout).strip().splitlines()[-1:]}")
        results[name] = found
        came += not found
        print(f"{'came over' if not found else 'FAILED   '}  {name}" + (f": {found[0]}" + (
            f" (+{len(found) - 1} more)" if len(found) > 1 else "") if found else ""))
    print(json.dumps({"code": str(args.code), "cases": len(results), "came_over": came}))


if __name__ == "__main__":
    main()
