"""What the importer reads, before any translation: flags with their origins, dataset subsets, and what
could not be read; and the low-level readers every file kind shares (text, TOML, flag values).

Nothing is refused here: a broken TOML is read statement by statement (the lines that do not parse
are listed), a value of the wrong type is a problem, a flag whose value is not known is kept apart.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any, Callable

from animad.errors import UserError
from animad.importer.flags import BOOL, FLOAT, INT, INT_OR_FLOAT, LIST, resolve_prefix
from animad.importer.words import has_unknown, shown


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
