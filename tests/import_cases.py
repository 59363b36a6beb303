"""The importer's own cases (tests/fixtures/import-cases): real-world shapes of sd-scripts configs for
Anima, written for these tests. Each case folder holds the files and expect.yaml:

  files: [...]            the files given to `animad import`, in order
  values: {key: value}    job.yaml values under our keys (dotted; data.subsets.NAME.repeats)
  first_problem: text     the first problem in IMPORT.txt mentions it
  problem_mentions: [..]  the PROBLEMS section mentions each
  imports_mention: [..]   IMPORT.txt mentions each
  unreadable_lines: [..]  IMPORT.txt lists each line number as not read

A case "comes over" when `animad import FILES` (no --to, in an empty folder) writes job.yaml and
IMPORT.txt, prints no traceback, has the stated values under our keys, names every key the files
state (on a job.yaml line or in IMPORT.txt), and writes no unexpanded variable ($X, ${X}, %X%, !X!).
Shared by tests/test_import_cases.py and bench/import_cases.py (which counts them on any checkout).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path

import yaml

CASES = Path(__file__).resolve().parent / "fixtures" / "import-cases"
UNEXPANDED = re.compile(r"\$\{?[A-Za-z_]\w*|%~?\w+%|![A-Za-z_]\w*!|\ue000|\$\(")


def case_names() -> list[str]:
    return sorted(p.name for p in CASES.iterdir() if (p / "expect.yaml").is_file())


def spec_of(name: str) -> dict:
    return yaml.safe_load((CASES / name / "expect.yaml").read_text())


def files_of(name: str) -> list[Path]:
    return [CASES / name / f for f in spec_of(name)["files"]]


def stated_keys(path: Path) -> list[str]:
    """Every option a file states: --flags of a launch file, keys of a TOML (any depth) or a GUI .json."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".bat", ".cmd", ".sh", ".ps1"):
        return sorted(set(re.findall(r"--([A-Za-z_][A-Za-z0-9_]*)", text)))
    data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    keys: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, (dict, list)) and key in ("general", "datasets", "subsets", "metadata", "data") \
                        or isinstance(value, dict):
                    walk(value)
                else:
                    keys.add(key)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(data)
    return sorted(keys)


def dig(data, dotted: str):
    node = data
    parts = dotted.split(".")
    index = 0
    while index < len(parts):
        if not isinstance(node, dict):
            return None
        # subset folder names may contain dots: take the longest key that matches
        for end in range(len(parts), index, -1):
            key = ".".join(parts[index:end])
            if key in node:
                node, index = node[key], end
                break
        else:
            return None
    return node


def same(got, want) -> bool:
    if isinstance(want, float) or isinstance(got, float):
        try:
            return math.isclose(float(got), float(want), rel_tol=1e-9)
        except (TypeError, ValueError):
            return False
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(same(g, w) for g, w in zip(got, want))
    return got == want


def failures(name: str, out: Path, output: str) -> list[str]:
    """Why case `name` did not come over into folder `out` (empty: it did)."""
    spec = spec_of(name)
    found = []
    if "Traceback (most recent call last)" in output:
        found.append("a traceback was printed")
    job, report = out / "job.yaml", out / "IMPORT.txt"
    if not job.is_file() or not report.is_file():
        return found + ["job.yaml and IMPORT.txt were not both written"]
    job_text, report_text = job.read_text(), report.read_text()
    try:
        data = yaml.safe_load(job_text) or {}
    except yaml.YAMLError as error:
        return found + [f"job.yaml is not YAML: {error}"]
    for key, want in (spec.get("values") or {}).items():
        got = dig(data, key)
        if not same(got, want):
            found.append(f"{key}: {got!r}, stated {want!r}")
    written = job_text + report_text
    for path in files_of(name):
        for key in stated_keys(path):
            if not re.search(rf"(?<![A-Za-z0-9_]){re.escape(key)}(?![A-Za-z0-9_])", written):
                found.append(f"{path.name}: {key} is not named in job.yaml or IMPORT.txt")
    for line in job_text.splitlines():
        value = line.split("  #", 1)[0]
        if UNEXPANDED.search(value):
            found.append(f"unexpanded variable in job.yaml: {line.strip()}")
    problems = report_text.split("PROBLEMS", 1)[1].split("\n\n", 1)[0] if "PROBLEMS" in report_text else ""
    first = next((line for line in problems.splitlines() if line.strip().startswith("- ")), "")
    if spec.get("first_problem") and spec["first_problem"] not in first:
        found.append(f"the first problem does not name {spec['first_problem']}: {first.strip()!r}")
    for text in spec.get("problem_mentions") or []:
        if text not in problems:
            found.append(f"the problems do not mention {text}")
    for text in spec.get("imports_mention") or []:
        if text not in report_text:
            found.append(f"IMPORT.txt does not mention {text}")
    for number in spec.get("unreadable_lines") or []:
        if not re.search(rf"line {number}\b", report_text):
            found.append(f"IMPORT.txt does not list line {number} as not read")
    return found
