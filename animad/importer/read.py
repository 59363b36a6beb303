"""Read sd-scripts files into flags: launch files (.bat, .sh, .ps1), --config_file TOMLs and dataset TOMLs.

What comes out is what sd-scripts' argparse and config_util would have seen: one value per option
name, each with where it came from (so job.yaml can say which flag a line came from), and the
dataset's subsets with their settings merged subset > dataset > [general], as config_util merges
them. Nothing is translated here (importer/translate.py does that), and nothing is dropped: what
cannot be read is recorded as a problem, to be listed in IMPORT.txt.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any, Callable

from animad.errors import UserError
from animad.importer.flags import BOOL, FLOAT, INT, INT_OR_FLOAT, LIST, resolve_prefix

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
class Sources:
    flags: dict[str, Flag] = dataclasses.field(default_factory=dict)  # the trainer's options
    subsets: list[DatasetSubset] = dataclasses.field(default_factory=list)
    dataset_file: Path | None = None
    launch_file: Path | None = None
    accelerate: list[str] = dataclasses.field(default_factory=list)  # `accelerate launch` options
    unknown: list[Flag] = dataclasses.field(default_factory=list)  # not an sd-scripts option
    problems: list[str] = dataclasses.field(default_factory=list)  # read but not usable; each says what to do
    notes: list[str] = dataclasses.field(default_factory=list)


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


def read_sources(files: list[Path], locate: Callable[[str, Path], Path] = _as_written) -> Sources:
    """Read any mix of one launch file, --config_file TOMLs and one dataset TOML (in any order).

    locate(text, base) says where a path named inside a file is on this machine (intake translates
    Windows paths under WSL); base is the folder of the file that names it."""
    sources = Sources()
    launches = [f for f in files if f.suffix.lower() in LAUNCH_SUFFIXES]
    if len(launches) > 1:
        raise UserError(f"{len(launches)} launch files given ({', '.join(map(str, launches))}): one launch file is "
                        "one job. Import each into its own folder (--to inbox/NAME), and chain them with "
                        "network.init_from (IMPORT.txt says how)")
    others = [f for f in files if f not in launches]
    for path in others:
        if path.suffix.lower() != ".toml":
            raise UserError(f"{path}: not a .toml, .bat, .cmd, .sh or .ps1 file; give sd-scripts' dataset TOML, "
                            "its --config_file TOML or its launch file")
        data = _load_toml(path)
        if "datasets" in data or "general" in data:
            if sources.dataset_file is not None:
                raise UserError(f"{path}: a second dataset TOML (the first was {sources.dataset_file}); one job "
                                "trains one dataset config, so import them one at a time")
            read_dataset_toml(data, path, sources)
        else:
            read_config_toml(data, path, sources)
    if launches:
        read_launch_file(launches[0], sources, locate)
    dataset_config = sources.flags.get("dataset_config")
    if dataset_config and sources.dataset_file is None:
        named = locate(str(dataset_config.value), launches[0].parent if launches else Path.cwd())
        if named.is_file():
            read_dataset_toml(_load_toml(named), named, sources)
        else:
            sources.problems.append(
                f"the dataset config named by {dataset_config.origin} was not found; give the dataset TOML to "
                "animad import as well (animad import LAUNCH_FILE DATASET.toml ...)")
    elif dataset_config:
        sources.notes.append(f"{sources.dataset_file.name} was read in place of {dataset_config.origin}")
    train_data_dir = sources.flags.get("train_data_dir")
    if train_data_dir and not dataset_config and sources.dataset_file is None:
        read_train_data_dir(train_data_dir, locate(str(train_data_dir.value), launches[0].parent if launches
                                                   else Path.cwd()), sources)
    return sources


KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")


def read_train_data_dir(flag: Flag, folder: Path, sources: Sources) -> None:
    """--train_data_dir without a dataset config: sd-scripts' DreamBooth layout, where each 'N_name'
    subfolder is a subset with N repeats whose images without a caption file train on 'name'."""
    if not folder.is_dir():
        sources.problems.append(f"the folder named by {flag.origin} was not found ({folder}); copy its 'N_name' "
                                "subfolders into the job folder by hand")
        return
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


def _load_toml(path: Path) -> dict:
    try:
        return tomllib.loads(read_text(path))
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: not valid TOML ({error}); fix the file (sd-scripts could not read it either)") from None


def read_dataset_toml(data: dict, path: Path, sources: Sources) -> None:
    """[general], [[datasets]] and [[datasets.subsets]]: each subset with what it inherits."""
    sources.dataset_file = path
    general = data.get("general") or {}
    datasets = data.get("datasets") or []
    if not isinstance(general, dict) or not isinstance(datasets, list):
        raise UserError(f"{path}: [general] must be a table and [[datasets]] a list of tables")
    for index, dataset in enumerate(datasets):
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
        return repr(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def read_config_toml(data: dict, path: Path, sources: Sources) -> None:
    """An sd-scripts --config_file: flat, or in sections ([training_arguments], ...) that sd-scripts merges."""
    for key, value in data.items():
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                _set_flag(sources, inner, inner_value, f"{path.name} [{key}] {inner} = {_toml_value(inner_value)}")
        else:
            _set_flag(sources, key, value, f"{path.name} {key} = {_toml_value(value)}")


def _set_flag(sources: Sources, name: str, value, origin: str) -> None:
    """One key of a --config_file: sd-scripts takes the TOML's own types; text where a number or a
    list belongs is read as the command line would read it."""
    full, candidates = resolve_prefix(name)
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


# ---------------------------------------------------------------- launch files

def logical_lines(text: str, suffix: str) -> list[str]:
    """Lines with continuations joined (^ in cmd, \\ in sh, ` in PowerShell) and comment lines dropped."""
    mark = {".bat": "^", ".cmd": "^", ".ps1": "`"}.get(suffix, "\\")
    comment = re.compile(r"^\s*(rem\b|::|@rem\b)", re.I) if mark == "^" else re.compile(r"^\s*#")
    lines, current = [], ""
    for raw in text.split("\n"):
        if not current and comment.match(raw):
            continue
        line = raw.rstrip()
        if line.endswith(mark):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    if current:
        lines.append(current)
    return lines


def split_words(line: str, suffix: str) -> list[str]:
    """Words as the shell would pass them: sh by POSIX rules; cmd and PowerShell by quotes only, because
    a Windows path's backslashes are not escapes there."""
    if suffix == ".sh":
        return shlex.split(line, comments=True, posix=True)
    words, word, quote, started = [], "", None, False
    quotes = "\"'" if suffix == ".ps1" else "\""
    for char in line:
        if quote:
            if char == quote:
                quote = None
            else:
                word += char
        elif char in quotes:
            quote, started = char, True
        elif char.isspace():
            if word or started:
                words.append(word)
            word, started = "", False
        else:
            word += char
    if word or started:
        words.append(word)
    return words


def read_launch_file(path: Path, sources: Sources, locate: Callable[[str, Path], Path] = _as_written) -> None:
    sources.launch_file = path
    suffix = path.suffix.lower()
    command = None
    text = read_text(path)
    if suffix in (".bat", ".cmd"):
        # %~dp0 is the batch file's own folder, which launch files use for paths beside them.
        text = re.sub(r"%~dp0\\?", lambda _: str(path.parent) + "/", text, flags=re.I)
    for line in logical_lines(text, suffix):
        words = split_words(line, suffix)
        script = next((i for i, w in enumerate(words) if w.lower().endswith(".py") and "train" in Path(w).name.lower()),
                      None)
        if script is not None:
            command = (words, script)
            break
    if command is None:
        raise UserError(f"{path}: no sd-scripts training command found (a line running anima_train_network.py); "
                        "give the launch file that starts training")
    words, script = command
    if not Path(words[script]).name.lower().startswith("anima_train_network"):
        sources.problems.append(f"{path.name} runs {Path(words[script]).name}, not anima_train_network.py; its flags "
                                "were read as the Anima LoRA trainer's")
    launcher = words[:script]
    if "launch" in launcher:
        launcher = launcher[launcher.index("launch") + 1:]
    # `accelerate launch --num_cpu_threads_per_process 1 ...`: the launcher's own options, not the trainer's.
    while launcher and not launcher[0].startswith("--"):
        launcher = launcher[1:]
    sources.accelerate = [text for _, _, text in _split_options(launcher)]
    for name, values, text in _split_options(words[script + 1:]):
        _set_launch_flag(sources, path.name, name, values, text)
    config_file = sources.flags.get("config_file")
    if config_file:
        named = locate(str(config_file.value), path.parent)
        named = named if named.suffix == ".toml" else named.with_name(named.name + ".toml")
        if named.is_file():
            # sd-scripts reads the config file first; flags on the command line win over it.
            launch_flags = dict(sources.flags)
            read_config_toml(_load_toml(named), named, sources)
            sources.flags.update(launch_flags)
        else:
            sources.problems.append(f"the config file named by {config_file.origin} was not found; give it to "
                                    "animad import as well")


def _split_options(words: list[str]):
    """(name, values, the text as written) for each --option in argv order."""
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if not word.startswith("--"):
            yield None, [word], word
            continue
        name, eq, value = word[2:].partition("=")
        values = [value] if eq else []
        if not eq:
            while index < len(words) and not words[index].startswith("--"):
                values.append(words[index])
                index += 1
        yield name, values, word if eq else " ".join([word] + values)


def _set_launch_flag(sources: Sources, file: str, name: str | None, values: list[str], text: str) -> None:
    if name is None:
        sources.problems.append(f"{file}: '{text}' is not an option (sd-scripts would refuse it); it was ignored")
        return
    full, candidates = resolve_prefix(name)
    origin = f"{file}: {text}" + (f" (argparse reads it as --{full})" if full and full != name else "")
    if full is None:
        sources.unknown.append(Flag(name, values, origin))
        if len(candidates) > 1:
            sources.problems.append(f"{origin}: ambiguous, it could be --{' or --'.join(candidates)} "
                                    "(sd-scripts would refuse it); write the full name")
        return
    try:
        value = convert(full, values)
    except ValueError as error:
        sources.problems.append(f"{origin}: {error}; it was not imported")
        return
    sources.flags[full] = Flag(full, value, origin)


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
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out
