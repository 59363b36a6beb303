"""`animad import`: turn sd-scripts files into a job folder (job.yaml, IMPORT.txt and, with --to, the dataset).

Each image_dir is copied (never moved or linked: the sd-scripts setup must keep working) into a
subfolder named after it, and every copy is read back and compared by sha256 before it counts.
job.yaml is written last, so a daemon watching the inbox never takes a folder whose copy is still
under way. Windows paths (C:\\...) are read through their WSL mount (/mnt/c/...) when animad runs
under WSL. Nothing that exists is overwritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
from pathlib import Path, PureWindowsPath

import yaml

from animad.config.daemon import Daemon
from animad.config.job import JobConfig, parse_job
from animad.config.problems import Problems
from animad.errors import UserError
from animad.fsutil import write_atomic
from animad.importer.read import read_sources
from animad.importer.records import Translation
from animad.importer.translate import translate
from animad.importer.words import has_unknown, shown
from animad.importer.write import import_text, job_text
from animad.intake.check import check_folder, inside_inbox
from animad.intake.dataset import IMAGE_FORMATS, IMPORT_REPORT, JOB_DRAFT

WINDOWS_DRIVE = re.compile(r"^([A-Za-z]):[\\/]")


def running_under_wsl(version_file: Path = Path("/proc/version")) -> bool:
    try:
        text = version_file.read_text(errors="replace").lower()
    except OSError:
        return False
    return "microsoft" in text or "wsl" in text


def local_path(text: str, base: Path, wsl: bool) -> Path:
    """Where a path written in an sd-scripts file is on this machine: C:\\x -> /mnt/c/x under WSL;
    a relative path is taken from the folder of the file that names it (sd-scripts' usual cwd)."""
    text = str(text).strip()
    match = WINDOWS_DRIVE.match(text)
    if match:
        if not wsl:
            return Path(text)  # not reachable here; reported where it is used
        parts = PureWindowsPath(text).parts[1:]
        return Path("/mnt", match.group(1).lower(), *parts)
    path = Path(os.path.expanduser(text.replace("\\", "/") if "\\" in text and "/" not in text else text))
    return path if path.is_absolute() else base / path


def _job_keys(cls=JobConfig, prefix: str = "") -> set[str]:
    keys = set()
    for field in dataclasses.fields(cls):
        name = f"{prefix}{field.name}"
        keys.add(name)
        if field.metadata.get("section"):
            keys |= _job_keys(field.default_factory, f"{name}.")
    return keys


@dataclasses.dataclass
class ImportResult:
    folder: Path
    job_file: Path
    report_file: Path
    translation: Translation
    problems: list[str]  # what the user must look at (also at the top of IMPORT.txt)
    copied: dict[str, int]  # subset folder -> files copied and verified


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_verified(source: Path, target: Path) -> None:
    """Copy one file (never over an existing one) and compare both by sha256; a bad copy is removed."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
    shutil.copystat(source, target)
    if sha256_of(source) != sha256_of(target):
        target.unlink()
        raise OSError(f"the copy of {source} differs from it (read back and compared by sha256)")


def copy_subset(source: Path, target: Path, caption_extension: str) -> tuple[int, dict[str, int]]:
    """Copy an image_dir's images and captions (its top level, as sd-scripts reads it) into target.

    Returns (files copied, {extension: count} of files left out)."""
    target.mkdir(parents=True)
    copied, left = 0, {}
    for path in sorted(source.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_FORMATS or suffix == caption_extension.lower():
            copy_verified(path, target / path.name)
            copied += 1
        else:
            left[suffix or path.name] = left.get(suffix or path.name, 0) + 1
    return copied, left


def import_files(files: list[Path], to: Path | None, daemon: Daemon, *, wsl: bool | None = None) -> ImportResult:
    """Read the sd-scripts files, write job.yaml and IMPORT.txt into `to` (default: the current folder)
    and, with `to`, copy each image_dir into its subset folder.

    Nothing in a config is refused: what cannot be carried over is listed at the top of IMPORT.txt.
    Into a --to folder (or any folder of the inbox) job.yaml is written last, and only when the folder
    can train (`animad check` passes on it); otherwise the draft stays job.draft.yaml, which the daemon
    ignores, and IMPORT.txt says what to do. Raises UserError only for what stops it (a file given that
    does not exist, a file it would overwrite)."""
    for path in files:
        if not path.is_file():
            raise UserError(f"{path}: no such file; give the sd-scripts launch file (.bat/.sh/.ps1) and/or TOMLs")
    wsl = running_under_wsl() if wsl is None else wsl
    folder = Path(to) if to is not None else Path.cwd()
    job_file, report_file, draft_file = folder / "job.yaml", folder / IMPORT_REPORT, folder / JOB_DRAFT
    for existing in (job_file, report_file, draft_file):
        if existing.exists():
            raise UserError(f"{existing} exists; animad import never overwrites a file. Move it away, or import "
                            "into another folder (--to inbox/NEW_NAME)")
    sources = read_sources(list(files), locate=lambda text, base: local_path(text, base, wsl))
    translation = translate(sources, _job_keys())
    base = sources.launch_file.parent if sources.launch_file else Path.cwd()
    for entry in translation.entries:
        if entry.key == ("network", "init_from"):  # a file this machine must open: the WSL path
            entry.value = str(local_path(str(entry.value), base, wsl))
    problems = list(translation.problems)
    layout, copied = _lay_out(translation, sources, folder if to is not None else None, wsl, problems)
    models = _model_set(translation, daemon, sources, wsl, problems)
    translation.problems = problems
    names = ", ".join(p.name for p in files)
    header = [f"Imported from sd-scripts by animad import ({names}).",
              "Each line's comment names the sd-scripts flag it came from; lines marked \"sd-scripts' default\"",
              "write out sd-scripts' value where animad's default differs, so the run trains as it did there.",
              "IMPORT.txt beside this file lists every flag that was not mapped, and why."]
    text = job_text(translation.entries, header, [f.name for f in dataclasses.fields(JobConfig)])
    # The written file is checked as the daemon will check it, so IMPORT.txt can list what it finds.
    check = Problems()
    parse_job(yaml.safe_load(text), job_file, check)
    problems += [f"job.yaml {p.where}: {p.message} ({p.fix})" for p in check.items]
    folder.mkdir(parents=True, exist_ok=True)
    watched = to is not None or inside_inbox(folder, daemon)
    written = job_file
    if watched:
        # A watching daemon takes a folder once it holds job.yaml: check the draft first, as it would.
        write_atomic(draft_file, text.encode())
        checked = check_folder(folder, daemon, job_file=draft_file)
        if not checked.ok:
            written = draft_file
            errors = [f"animad check: {_problem_text(p)}" for p in checked.problems.errors]
            problems += errors
            translation.problems = problems
            translation.notes.insert(0, f"job.yaml was not written: the folder cannot train yet ({len(errors)} "
                                        f"problem(s) from animad check, above). The job is in {JOB_DRAFT}, which the "
                                        "daemon ignores: fix what is listed, then rename it to job.yaml")
    write_atomic(report_file, import_text(translation, [p.name for p in files], layout, models, written.name).encode())
    if written == job_file:
        if watched:
            _rename_new(draft_file, job_file)  # last: the daemon sees the job only once everything is there
        else:
            write_atomic(job_file, text.encode())
    return ImportResult(folder, written, report_file, translation, problems, copied)


def _problem_text(problem) -> str:
    place = f"{problem.file}" + (f" {problem.where}" if problem.where else "")
    return f"{place}: {problem.message} ({problem.fix})" if problem.fix else f"{place}: {problem.message}"


def _rename_new(source: Path, target: Path) -> None:
    """Rename without ever replacing a file that appeared meanwhile (a hard link fails if it exists)."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise UserError(f"{target} appeared while importing; animad import never overwrites a file. The job is in "
                        f"{source}") from None
    except OSError:
        if target.exists():
            raise UserError(f"{target} appeared while importing; the job is in {source}") from None
        os.rename(source, target)  # a file system without hard links
        return
    source.unlink()


def _lay_out(translation: Translation, sources, folder: Path | None, wsl: bool,
             problems: list[str]) -> tuple[list[str], dict[str, int]]:
    """Copy each subset's image_dir into folder/<subset> (with --to), or say where to put it."""
    layout, copied = [], {}
    extension = next((e.value for e in translation.entries if e.key == ("data", "caption_extension")), ".txt")
    base = sources.dataset_file.parent if sources.dataset_file else Path.cwd()
    if folder is not None:
        taken = [p.folder for p in translation.subsets if (folder / p.folder).exists()]
        if taken:
            raise UserError(f"{folder}: subfolder(s) {', '.join(taken)} exist already; animad import copies into "
                            "new folders only. Import into another folder (--to inbox/NEW_NAME)")
    for plan in translation.subsets:
        if has_unknown(plan.image_dir):
            problems.append(f"image_dir {shown(plan.image_dir)} is not known here ({plan.origin}): the file builds it "
                            f"from a value it does not set; copy its images and captions into "
                            f"{(folder or Path('.')) / plan.folder} by hand")
            layout.append(f"{plan.folder}/  <- UNKNOWN: {shown(plan.image_dir)}; copy its images and captions here")
            continue
        source = local_path(plan.image_dir, base, wsl)
        if folder is None:
            layout.append(f"{plan.folder}/  <- copy the images and captions of {plan.image_dir} here "
                          f"(or run animad import --to FOLDER to have them copied and verified); {plan.origin}")
            continue
        if not source.is_dir():
            why = (" (a Windows path: run animad import inside WSL, or give the Linux path)"
                   if WINDOWS_DRIVE.match(plan.image_dir) and not wsl else "")
            problems.append(f"image_dir not found: {plan.image_dir} ({plan.origin}), looked at {source}{why}; "
                            f"copy its images and captions into {folder / plan.folder} by hand")
            layout.append(f"{plan.folder}/  <- MISSING: {plan.image_dir} was not found, nothing was copied: copy its "
                          f"images and captions here; {plan.origin}")
            continue
        count, left = copy_subset(source, folder / plan.folder, str(extension))
        copied[plan.folder] = count
        extra = (", not copied: " + ", ".join(f"{n} {k}" for k, n in sorted(left.items()))) if left else ""
        layout.append(f"{plan.folder}/  <- {source}: {count} files copied, each compared by sha256{extra}; "
                      f"{plan.origin}")
        if count == 0:
            problems.append(f"{source} holds no images ({plan.origin}); the subset {plan.folder} is empty")
    return layout, copied


def _model_set(translation: Translation, daemon: Daemon, sources, wsl: bool, problems: list[str]) -> list[str]:
    """Model paths become a model set of animad.yaml: the paths then live in one place for every job
    (the guide's four chained runs share them), and job folders stay portable.

    In order: a set with the same three files; a set named after the DiT file, as an earlier import
    suggested; with every file here, a new set to add; else (files not on this machine: a config from
    a guide, a forum or a friend) the user's own set whose file names match, or the default set, with
    the paths it replaced shown."""
    models = translation.models
    if not models:
        return []
    base = sources.launch_file.parent if sources.launch_file else Path.cwd()
    wanted = {k: local_path(str(f.value), base, wsl) for k, f in models.items()}
    missing = [k for k in ("dit", "text_encoder", "vae") if k not in wanted]
    for name in daemon.config.models:
        have = daemon.model_set(name) or {}
        if all(have.get(k) and Path(have[k]).expanduser() == p for k, p in wanted.items()):
            translation.set("base_model", name, f"animad.yaml's model set '{name}' has the same model files")
            return [f"animad.yaml's model set '{name}' holds the same files; job.yaml names it:"] + [
                f"  {key}: {path} (from {models[key].origin})" for key, path in wanted.items()]
    dit = str(models["dit"].value) if "dit" in models else "imported"
    stem = PureWindowsPath(dit).stem if "\\" in dit else Path(dit).stem
    set_name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem) or "imported"
    not_here = [k for k, p in wanted.items() if not p.is_file()]
    if set_name in daemon.config.models:
        chosen = set_name
        why = f"animad.yaml's model set '{set_name}', named after the DiT file as an earlier import suggested"
    elif not not_here:
        if missing:
            problems.append(f"the launch file names no {', '.join(missing)} file; the model set uses animad.yaml's")
        comment = "add this model set to animad.yaml (IMPORT.txt has it); from " + ", ".join(
            f"--{f.name}" for f in models.values())
        translation.set("base_model", set_name, comment)
        problems.append(f"job.yaml names the model set '{set_name}' (the launch file's model files, which are here): "
                        "add it to animad.yaml under models: (IMPORT.txt has the lines)")
        lines = [f"job.yaml names the model set '{set_name}'. Add it to animad.yaml under models: (then every job",
                 "that uses these files can name it):", "", "models:", f"  {set_name}:"]
        lines += [f"    {key}: {path}" for key, path in wanted.items()]
        lines += ["", "(from " + "; ".join(models[key].origin for key in wanted) + ")"]
        return lines
    else:
        chosen, why = _own_set(daemon, wanted)
    lines = []
    if chosen is None:
        for key in not_here:
            problems.append(f"model file not found here: {wanted[key]} (from {models[key].origin}); animad.yaml has no "
                            "model set to use instead: run animad init and point its model set at your files")
        return [f"not here: {wanted[k]} (from {models[k].origin})" for k in not_here]
    have = daemon.model_set(chosen) or {}
    translation.set("base_model", chosen, why if len(why) < 90 else why[:87] + "...")
    for key in not_here:
        problems.append(f"model file not found here: {wanted[key]} (from {models[key].origin}); the job uses "
                        f"{why}: its {key} is {have.get(key)}")
    lines.append(f"job.yaml names {why}. The files the launch file named, and what is used instead:")
    for key, path in wanted.items():
        state = "here" if path.is_file() else "NOT HERE"
        lines.append(f"  {key}: {path} ({state}) -> {have.get(key)}; from {models[key].origin}")
    return lines


def _own_set(daemon: Daemon, wanted: dict[str, Path]) -> tuple[str | None, str]:
    """The user's model set whose file names match the wanted files', else the default set."""
    names = {k: p.name.lower() for k, p in wanted.items()}
    for name in daemon.config.models:
        have = daemon.model_set(name) or {}
        if all(have.get(k) and Path(have[k]).name.lower() == n for k, n in names.items()):
            return name, f"your model set '{name}', whose files have the same names"
    default = daemon.config.default_model
    if default in daemon.config.models:
        return default, f"your default model set '{default}'"
    return None, ""
