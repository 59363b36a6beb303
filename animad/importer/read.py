"""Read sd-scripts files into flags: launch files (.bat, .sh, .ps1), --config_file TOMLs, dataset TOMLs
and GUI presets (SD-Trainer TOMLs, kohya_ss .json).

What comes out is what sd-scripts' argparse and config_util would have seen: one value per option
name, each with where it came from (so job.yaml can say which flag a line came from), and the
dataset's subsets with their settings merged subset > dataset > [general], as config_util merges
them. Nothing is translated here (importer/translate.py does that), and nothing is dropped or
refused: what cannot be read is recorded (a problem, a flag whose value is not known, a flag
sd-scripts itself would ignore), to be listed in IMPORT.txt.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Callable

from animad.errors import UserError
from animad.importer.flags import BOOL, FLOAT, INT, INT_OR_FLOAT, LIST, resolve_prefix
from animad.importer.words import has_unknown, shown, unknowns

LAUNCH_SUFFIXES = (".bat", ".cmd", ".sh", ".ps1")
# A dataset TOML names these keys differently from the command line (config_util's names).
DATASET_KEY_FLAGS = {"batch_size": "train_batch_size"}


@dataclasses.dataclass
class Flag:
    name: str  # the sd-scripts option, full name
    value: Any
    origin: str  # "train.bat: --lr_warmup=5 (argparse reads it as --lr_warmup_steps)"


@dataclasses.dataclass
class DatasetSubset:
    """One [[datasets.subsets]] with the dataset's and [general]'s settings it inherits."""

    values: dict[str, Flag]  # keyed by option name (batch_size already as train_batch_size)
    dataset_index: int


@dataclasses.dataclass
class Listed:
    """A key that is named in IMPORT.txt and not mapped (a GUI field, a shadowed flag, ...)."""

    flag: str
    origin: str
    kind: str
    reason: str


@dataclasses.dataclass
class Sources:
    flags: dict[str, Flag] = dataclasses.field(default_factory=dict)  # the trainer's options
    subsets: list[DatasetSubset] = dataclasses.field(default_factory=list)
    dataset_file: Path | None = None
    launch_file: Path | None = None
    accelerate: list[str] = dataclasses.field(default_factory=list)  # `accelerate launch` options
    unknown: list[Flag] = dataclasses.field(default_factory=list)  # not an sd-scripts option
    unresolved: dict[str, Flag] = dataclasses.field(default_factory=dict)  # given, value not known here
    listed: list[Listed] = dataclasses.field(default_factory=list)  # named, not mapped (shadowed, GUI fields)
    read_as: dict[str, str] = dataclasses.field(default_factory=dict)  # a file flag -> what became of its file
    prompts: list[dict] = dataclasses.field(default_factory=list)  # --sample_prompts, one dict per prompt
    gui: dict[str, Any] = dataclasses.field(default_factory=dict)  # what a GUI preset says beyond flags
    arg_origins: dict[str, str] = dataclasses.field(default_factory=dict)  # "network_args factor" -> GUI field
    problems: list[str] = dataclasses.field(default_factory=list)  # read but not usable; each says what to do
    notes: list[str] = dataclasses.field(default_factory=list)
    written: dict[str, str] = dataclasses.field(default_factory=dict)  # files the launch file writes (heredocs)


def read_text(path: Path) -> str:
    """A user's text file: UTF-8 (with or without BOM), else the Windows code page; CRLF made LF."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise UserError(f"{path}: cannot read it ({error.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _as_written(text: str, base: Path) -> Path:
    path = Path(text)
    return path if path.is_absolute() else base / path


Locate = Callable[[str, Path], Path]


def read_sources(files: list[Path], locate: Locate = _as_written) -> Sources:
    """Read any mix of one launch file, --config_file TOMLs, GUI presets and one dataset TOML (any order).

    locate(text, base) says where a path named inside a file is on this machine (the importer
    translates Windows paths under WSL); base is the folder of the file that names it."""
    from animad.importer.gui import read_gui_preset, is_gui_preset
    from animad.importer.launch import read_launch_file

    sources = Sources()
    launches = [f for f in files if f.suffix.lower() in LAUNCH_SUFFIXES]
    if len(launches) > 1:
        raise UserError(f"{len(launches)} launch files given ({', '.join(map(str, launches))}): one launch file is "
                        "one job. Import each into its own folder (--to inbox/NAME), and chain them with "
                        "network.init_from (IMPORT.txt says how)")
    for path in (f for f in files if f not in launches):
        suffix = path.suffix.lower()
        if suffix == ".json":
            read_gui_preset(_load_json(path, sources), path, sources)
            continue
        if suffix != ".toml":
            sources.problems.append(f"{path.name}: not a .toml, .json, .bat, .cmd, .sh or .ps1 file, so it was not "
                                    "read; give sd-scripts' dataset TOML, its --config_file TOML, a GUI preset or its "
                                    "launch file")
            continue
        data = load_toml(read_text(path), path.name, sources)
        if "datasets" in data or "general" in data:
            if sources.dataset_file is not None:
                sources.problems.append(f"{path.name}: a second dataset TOML (the first, {sources.dataset_file.name}, "
                                        "was used); one job trains one dataset config: import the other on its own")
                continue
            read_dataset_toml(data, path, sources)
        elif is_gui_preset(data):
            read_gui_preset(data, path, sources)
        else:
            read_config_toml(data, path, sources)
    if launches:
        read_launch_file(launches[0], sources, locate)
    base = launches[0].parent if launches else Path.cwd()
    _dataset_config(sources, base, locate)
    train_data_dir = sources.flags.get("train_data_dir")
    if train_data_dir and "dataset_config" not in sources.flags and sources.dataset_file is None:
        read_train_data_dir(train_data_dir, locate(str(train_data_dir.value), base), sources)
    elif train_data_dir:
        sources.read_as["train_data_dir"] = ("not read: sd-scripts uses the dataset config instead of "
                                             "--train_data_dir when both are given")
    prompts = sources.flags.get("sample_prompts")
    if prompts:
        from animad.importer.prompts import read_prompts

        read_prompts(prompts, locate(str(prompts.value), base), sources)
    return sources


def _dataset_config(sources: Sources, base: Path, locate: Locate) -> None:
    """--dataset_config: the TOML the launch file writes (a heredoc), the file it names, or the one given."""
    flag = sources.flags.get("dataset_config")
    if flag is None:
        return
    if sources.dataset_file is not None:
        sources.read_as["dataset_config"] = (f"not read: {sources.dataset_file.name}, given to animad import, was "
                                             "read in its place")
        return
    named = locate(str(flag.value), base)
    written = sources.written.get(os.path.normpath(str(named)))
    if written is not None:
        data = load_toml(written, named.name, sources)
        read_dataset_toml(data, named, sources)
        sources.read_as["dataset_config"] = f"read: the TOML the launch file writes into {named.name} (a heredoc)"
    elif named.is_file():
        read_dataset_toml(load_toml(read_text(named), named.name, sources), named, sources)
        sources.read_as["dataset_config"] = f"read: {named}"
    else:
        sources.read_as["dataset_config"] = f"not read: {named} is not on this machine"
        sources.problems.append(
            f"the dataset config named by {flag.origin} was not found; give the dataset TOML to animad import as "
            "well (animad import LAUNCH_FILE DATASET.toml ...)")


KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")


def read_train_data_dir(flag: Flag, folder: Path, sources: Sources) -> None:
    """--train_data_dir without a dataset config: sd-scripts' DreamBooth layout, where each 'N_name'
    subfolder is a subset with N repeats whose images without a caption file train on 'name'."""
    if not folder.is_dir():
        sources.read_as["train_data_dir"] = f"not read: {folder} is not on this machine"
        sources.problems.append(f"the folder named by {flag.origin} was not found ({folder}); copy its 'N_name' "
                                "subfolders into the job folder by hand")
        return
    sources.read_as["train_data_dir"] = f"read: its 'N_name' folders in {folder} are data.subsets"
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        match = KOHYA_FOLDER.match(sub.name)
        if not match:
            sources.notes.append(f"{flag.origin}: {sub.name} has no 'N_' repeats prefix; sd-scripts skips it, "
                                 "and so did the import")
            continue
        where = f"{flag.origin}, folder {sub.name}"
        sources.subsets.append(DatasetSubset({
            "image_dir": Flag("image_dir", str(sub), where),
            "num_repeats": Flag("num_repeats", int(match.group(1)), f"{where} (its 'N_' prefix)"),
            "class_tokens": Flag("class_tokens", match.group(2), f"{where} (its name after the prefix)"),
        }, 0))


def _load_json(path: Path, sources: Sources) -> dict:
    import json

    try:
        data = json.loads(read_text(path))
    except ValueError as error:
        sources.problems.append(f"{path.name}: not valid JSON ({error}); it was not read")
        return {}
    if not isinstance(data, dict):
        sources.problems.append(f"{path.name}: not a JSON object of settings; it was not read")
        return {}
    return data


def load_toml(text: str, name: str, sources: Sources) -> dict:
    """A TOML file; where it is broken, every line that parses is still read and the rest listed."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        data, bad = _lenient_toml(text)
        lines = ", ".join(map(str, bad)) or "?"
        sources.problems.append(f"{name}: not valid TOML ({error}); line(s) {lines} could not be read and were "
                                "left out, the rest was read (sd-scripts would refuse the whole file)")
        return data


def _lenient_toml(text: str) -> tuple[dict, list[int]]:
    """Read a broken TOML statement by statement: (what parses, the lines that do not)."""
    data: dict = {}
    current, bad = data, []
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        start, statement = index + 1, lines[index]
        index += 1
        stripped = statement.strip()
        if not stripped or stripped.startswith("#"):
            continue
        header = re.fullmatch(r"\[(\[)?\s*([^\]]+?)\s*\]?\]\s*(#.*)?", stripped)
        if header:
            try:
                current = _table_for(data, [p.strip().strip("\"'") for p in header.group(2).split(".")],
                                     bool(header.group(1)))
            except (KeyError, IndexError, TypeError, AttributeError):
                bad.append(start)
                current = {}
            continue
        # a value may go on over lines (arrays, triple-quoted strings): join until it parses or ends
        for extra in range(0, 50):
            try:
                piece = tomllib.loads(statement)
            except tomllib.TOMLDecodeError:
                if index < len(lines) and _open_value(statement):
                    statement += "\n" + lines[index]
                    index += 1
                    continue
                bad.append(start)
                break
            for key, value in piece.items():
                if isinstance(current.get(key), dict) and isinstance(value, dict):
                    current[key].update(value)
                else:
                    current[key] = value
            break
    return data, bad


def _open_value(statement: str) -> bool:
    return statement.count("[") > statement.count("]") or statement.count('"""') % 2 == 1 or statement.count(
        "'''") % 2 == 1 or statement.count("{") > statement.count("}")


def _table_for(data: dict, parts: list[str], array: bool) -> dict:
    node: Any = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if isinstance(node, list):
            node = node[-1]
    last = parts[-1]
    if array:
        node.setdefault(last, [])
        node[last].append({})
        return node[last][-1]
    node.setdefault(last, {})
    return node[last]


def read_dataset_toml(data: dict, path: Path, sources: Sources) -> None:
    """[general], [[datasets]] and [[datasets.subsets]]: each subset with what it inherits."""
    sources.dataset_file = path
    general = data.get("general") or {}
    datasets = data.get("datasets") or []
    if not isinstance(general, dict) or not isinstance(datasets, list):
        sources.problems.append(f"{path.name}: [general] must be a table and [[datasets]] a list of tables; the "
                                "dataset config was not read")
        return
    for key in data:
        if key not in ("general", "datasets"):
            sources.listed.append(Listed(key, f"{path.name} {key}", "not an sd-scripts option",
                                         "config_util reads only [general] and [[datasets]]; it was ignored"))
    for index, dataset in enumerate(datasets):
        if not isinstance(dataset, dict):
            continue
        subsets = dataset.get("subsets") or []
        if not subsets:
            sources.problems.append(f"{path.name}: [[datasets]] #{index + 1} has no [[datasets.subsets]]; it was "
                                    "skipped (sd-scripts would train nothing from it)")
        for sub_index, subset in enumerate(subsets):
            values: dict[str, Flag] = {}
            for where, table in (("[general]", general), (f"[[datasets]] #{index + 1}", dataset),
                                 (f"[[datasets.subsets]] #{sub_index + 1}", subset)):
                for key, value in table.items():
                    if key == "subsets":
                        continue
                    name = DATASET_KEY_FLAGS.get(key, key)
                    values[name] = Flag(name, value, f"{path.name} {where} {key} = {_toml_value(value)}")
            sources.subsets.append(DatasetSubset(values, index))


def _toml_value(value) -> str:
    if isinstance(value, str):
        return repr(shown(value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def read_config_toml(data: dict, path: Path, sources: Sources) -> None:
    """An sd-scripts --config_file: flat, or in sections ([training_arguments], ...) that sd-scripts merges."""
    for key, value in data.items():
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                set_flag(sources, inner, inner_value, f"{path.name} [{key}] {inner} = {_toml_value(inner_value)}")
        else:
            set_flag(sources, key, value, f"{path.name} {key} = {_toml_value(value)}")


def set_flag(sources: Sources, name: str, value, origin: str) -> None:
    """One key of a --config_file or preset: sd-scripts takes the TOML's own types; text where a number or
    a list belongs is read as the command line would read it."""
    full, candidates = resolve_prefix(name)
    if isinstance(value, str) and has_unknown(value):
        sources.unresolved[full or name] = Flag(full or name, shown(value), origin)
        return
    if full in LIST and not isinstance(value, list):
        value = [value]
    elif full in (INT | FLOAT | INT_OR_FLOAT | BOOL) and isinstance(value, str):
        try:
            value = convert(full, [value]) if full not in BOOL else value.strip().lower() == "true"
        except ValueError:
            sources.problems.append(f"{origin}: not a {'number' if full not in BOOL else 'true/false'}; "
                                    "it was not imported")
            return
    flag = Flag(full or name, value, origin)
    if full is None:
        sources.unknown.append(flag)
        if len(candidates) > 1:
            sources.problems.append(f"{origin}: ambiguous, it could be --{' or --'.join(candidates)} "
                                    "(sd-scripts would refuse it); write the full name")
        return
    sources.flags[full] = flag


def convert(name: str, values: list[str]):
    """A command-line value as sd-scripts' argparse types it."""
    if name in BOOL:
        if values:
            raise ValueError("takes no value")
        return True
    if name in LIST:
        return list(values)
    if len(values) != 1:
        raise ValueError(f"needs exactly one value, got {len(values)}")
    text = values[0]
    if name in INT:
        return int(text)
    if name in FLOAT:
        return float(text)
    if name in INT_OR_FLOAT:
        return int_or_float(text)
    return text


def int_or_float(text: str) -> int | float:
    """sd-scripts' warmup rule: '10%' and numbers below 1 are fractions of all steps, the rest whole steps."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return text if text < 1 else int(text)
    text = str(text)
    if text.endswith("%"):
        return float(text[:-1]) / 100.0
    number = float(text)
    return int(number) if number >= 1 else number


def key_values(items: list[str], origin: str, problems: list[str]) -> dict[str, Any]:
    """--network_args/--optimizer_args: key=value words, values as Python literals (sd-scripts uses
    ast.literal_eval for optimizer args; network args stay text there, read the same way here)."""
    out = {}
    for item in items:
        key, eq, value = str(item).partition("=")
        if not eq:
            problems.append(f"{origin}: '{item}' is not key=value; it was not imported")
            continue
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            out[key.strip()] = value.strip()
    return out


__all__ = ["unknowns"]
