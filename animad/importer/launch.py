"""A launch file's training command: its flags, as sd-scripts' argparse would read them.

The shell readers (shell.py, batch.py, powershell.py) give every command the file would run, with
its words expanded; here the one that starts an sd-scripts trainer is found and its options are
read: `--k=v` and `--k v`, list options, argparse's unique prefixes, the `accelerate launch`
options before the script, and a `--config_file` (read first; the command line wins over it).
A flag whose value the file does not give is kept apart (Sources.unresolved), and a flag that a
later one replaces is listed as shadowed: sd-scripts' argparse keeps the last.
"""

from __future__ import annotations

import os
from pathlib import Path

from animad.importer.flags import SHADOWED
from animad.importer.batch import read_batch
from animad.importer.flags import resolve_prefix
from animad.importer.powershell import read_powershell
from animad.importer.shell import read_shell
from animad.importer.sources import (Flag, Listed, Locate, Sources, convert, load_toml, read_config_toml,
                                     read_text)
from animad.importer.words import Command, Script, has_unknown, shown



def read_script(path: Path) -> Script:
    """The launch file's commands, whichever shell it is written for."""
    text = read_text(path)
    suffix = path.suffix.lower()
    reader = read_batch if suffix in (".bat", ".cmd") else read_powershell if suffix == ".ps1" else read_shell
    return reader(text, path)


def _script_index(words: list[str]) -> int | None:
    for index, word in enumerate(words):
        name = Path(shown(word).replace("\\", "/")).name.lower()
        if name.endswith(".py") and "train" in name:
            return index
    return None


def read_launch_file(path: Path, sources: Sources, locate: Locate) -> None:
    sources.launch_file = path
    try:
        script = read_script(path)
    except RecursionError:
        sources.problems.append(f"{path.name}: nested too deeply to be read; nothing from it was imported")
        return
    sources.written.update({os.path.normpath(k): v for k, v in script.files.items()})
    sources.problems += [f"{path.name} {line}" for line in script.unreadable]
    sources.notes += [f"{path.name} {note}" for note in script.notes]
    commands = [c for c in script.commands if _script_index(c.words) is not None]
    if not commands:
        sources.problems.append(f"{path.name}: no sd-scripts training command found (a line running "
                                "anima_train_network.py); job.yaml has animad's own settings")
        return
    command = commands[0]
    for other in commands[1:]:
        sources.problems.append(f"{path.name} line {other.line}: a second training command (running "
                                f"{Path(shown(other.words[_script_index(other.words)])).name}); only the first "
                                f"(line {command.line}) was imported: one launch file is one job")
    _read_command(command, path, sources)
    config_file = sources.flags.get("config_file")
    if config_file:
        named = locate(str(config_file.value), path.parent)
        named = named if named.suffix == ".toml" else named.with_name(named.name + ".toml")
        written = sources.written.get(os.path.normpath(str(named)))
        if written is not None or named.is_file():
            # sd-scripts reads the config file first; flags on the command line win over it.
            launch_flags = dict(sources.flags)
            sources.flags = {}
            text = written if written is not None else read_text(named)
            read_config_toml(load_toml(text, named.name, sources), named, sources)
            for name, flag in sources.flags.items():
                if name in launch_flags:
                    sources.listed.append(Listed(f"{named.name} {name}", flag.origin, SHADOWED,
                                                 f"the command line's {launch_flags[name].origin.split(': ', 1)[-1]} "
                                                 "wins over the config file"))
            sources.flags.update(launch_flags)
            sources.read_as["config_file"] = f"read: {named.name}" + (" (written by the launch file)" if written
                                                                       is not None else "")
        else:
            sources.read_as["config_file"] = f"not read: {named} is not on this machine"
            sources.problems.append(f"the config file named by {config_file.origin} was not found; give it to "
                                    "animad import as well")


def _read_command(command: Command, path: Path, sources: Sources) -> None:
    words, script = command.words, _script_index(command.words)
    if not Path(shown(words[script]).replace("\\", "/")).name.lower().startswith("anima_train_network"):
        sources.problems.append(f"{path.name} runs {Path(shown(words[script]).replace(chr(92), '/')).name}, not "
                                "anima_train_network.py; its flags were read as the Anima LoRA trainer's")
    launcher = words[:script]
    if "launch" in launcher:
        launcher = launcher[launcher.index("launch") + 1:]
    # `accelerate launch --num_cpu_threads_per_process 1 ...`: the launcher's own options, not the trainer's.
    while launcher and not launcher[0].startswith("--"):
        launcher = launcher[1:]
    sources.accelerate = [text for _, _, text, _ in _split_options(launcher, [[]] * len(launcher))]
    for name, values, text, used in _split_options(words[script + 1:], command.sources[script + 1:]):
        _set_launch_flag(sources, path.name, name, values, text, used)


def _split_options(words: list[str], sources: list[list[str]]):
    """(name, values, the text as written, variables used) for each --option in argv order."""
    index = 0
    while index < len(words):
        word, used = words[index], list(sources[index]) if index < len(sources) else []
        index += 1
        if not word.startswith("--"):
            yield None, [word], word, used
            continue
        name, eq, value = word[2:].partition("=")
        values = [value] if eq else []
        if not eq:
            while index < len(words) and not words[index].startswith("--"):
                values.append(words[index])
                used += sources[index] if index < len(sources) else []
                index += 1
        yield name, values, word if eq else " ".join([word] + values), used


def _set_launch_flag(sources: Sources, file: str, name: str | None, values: list[str], text: str,
                     used: list[str]) -> None:
    if name is None:
        sources.problems.append(f"{file}: '{shown(text)}' is not an option (sd-scripts would refuse it); it was "
                                "ignored")
        return
    full, candidates = resolve_prefix(name)
    shown_text = shown(text)
    variables = list(dict.fromkeys(u for u in used if u))
    origin = f"{file}: {shown_text}" + (f" (argparse reads it as --{full})" if full and full != name else "") + (
        f" (from {', '.join(variables)})" if variables else "")
    if full is None:
        sources.unknown.append(Flag(name, values, origin))
        if len(candidates) > 1:
            sources.problems.append(f"{origin}: ambiguous, it could be --{' or --'.join(candidates)} "
                                    "(sd-scripts would refuse it); write the full name")
        return
    earlier = sources.flags.pop(full, None) or sources.unresolved.pop(full, None)
    if earlier is not None and not (not any(has_unknown(v) for v in values) and _same(earlier, full, values)):
        sources.listed.append(Listed(f"--{full}", earlier.origin, SHADOWED,
                                     f"given again later ({shown_text}); sd-scripts' argparse keeps the last"))
    if any(has_unknown(v) for v in values):
        sources.unresolved[full] = Flag(full, shown(" ".join(values)), origin)
        return
    try:
        value = convert(full, values)
    except ValueError as error:
        sources.problems.append(f"{origin}: {error}; it was not imported")
        return
    sources.flags[full] = Flag(full, value, origin)


def _same(earlier: Flag, full: str, values: list[str]) -> bool:
    """The same value given twice (a GUI's rule and its extra parameters): nothing is shadowed."""
    try:
        return earlier.value == convert(full, values)
    except ValueError:
        return False
