"""`animad import`: sd-scripts files (dataset TOML, --config_file TOML, .bat/.sh/.ps1) to a job folder."""

from __future__ import annotations

from pathlib import Path

from animad.cli.common import Verb, daemon_of
from animad.safe_text import safe


def import_arguments(parser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="sd-scripts files in any mix: a dataset TOML, a --config_file TOML, a GUI preset "
                             "(kohya_ss .json, SD-Trainer .toml), one launch file (.bat, .cmd, .sh, .ps1); one "
                             "launch file is one job")
    parser.add_argument("--to", metavar="DIR",
                        help="the job folder to create, e.g. inbox/NAME: each image_dir is copied (never moved) "
                             "into a subset subfolder and verified, IMPORT.txt is written, and job.yaml last, only "
                             "when the folder can train (else the job waits in job.draft.yaml, which the daemon "
                             "ignores). Default: write job.yaml and IMPORT.txt into the current folder and copy "
                             "nothing, so nothing lands in the inbox before you have read them")


def cmd_import(args) -> int:
    from animad.importer.folder import import_files  # lazily: only this verb needs it

    result = import_files([Path(f) for f in args.files], Path(args.to) if args.to else None, daemon_of(args))
    unmapped = len(result.translation.unmapped)
    print(f"wrote {safe(result.job_file)} ({len(result.translation.entries)} settings, each commented with the "
          f"sd-scripts flag it came from)")
    print(f"wrote {safe(result.report_file)} ({unmapped} flags not mapped, each with the reason)")
    for folder, count in result.copied.items():
        print(f"copied {count} files into {safe(result.folder / folder)} (each compared by sha256)")
    if result.job_file.name != "job.yaml":
        print(f"job.yaml was NOT written: the folder cannot train yet, so the job waits in "
              f"{safe(result.job_file.name)}, which the daemon ignores. Fix the problems below, then rename it to "
              "job.yaml")
    if result.problems:
        print(f"{len(result.problems)} problem(s), also at the top of IMPORT.txt:")
        for problem in result.problems:
            print(f"  - {safe(problem)}")
        return 1
    print(f"next: animad check {safe(result.folder)}")
    return 0


VERBS = [
    Verb("import", "turn sd-scripts files (dataset TOML, config TOML, GUI preset, .bat/.sh/.ps1) into a job folder",
         import_arguments, cmd_import),
]
