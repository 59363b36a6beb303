"""What a launch file's reader hands on: the commands it would run, with every word expanded as far as
the file itself says, and what it could not read.

A value the file does not set (an environment variable, a command-line argument without a default,
`$(some command)`) cannot be known without running anything. It stays in the word as a marker
(`unknown("OUT_DIR")`), never as `$OUT_DIR` or `%OUT_DIR%` text, so a flag holding one is listed by
its flag instead of being written into job.yaml as if it were a value.
"""

from __future__ import annotations

import dataclasses
import re

_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters: never in a real path or prompt
_MARKER = re.compile(f"{_OPEN}([^{_CLOSE}]*){_CLOSE}")


def unknown(name: str) -> str:
    """A stand-in for a value the file does not give; `name` is how the file wrote it ($X, %X%, $(cmd))."""
    return f"{_OPEN}{name.replace(_OPEN, '').replace(_CLOSE, '')}{_CLOSE}"


def unknowns(text) -> list[str]:
    """The unknown values inside a word, as the file wrote them."""
    return _MARKER.findall(text) if isinstance(text, str) else []


def has_unknown(text) -> bool:
    return isinstance(text, str) and _OPEN in text


def shown(text: str) -> str:
    """A word for a message: each unknown part as the file wrote it."""
    return _MARKER.sub(lambda m: m.group(1), text)


@dataclasses.dataclass
class Command:
    words: list[str]  # expanded, quotes removed; unknown parts are markers
    line: int  # the line it starts on (1-based)
    sources: list[list[str]]  # per word: the variables it was expanded from, as written ("$DIM", "%OUT%")


@dataclasses.dataclass
class Script:
    """A launch file as its shell would read it, short of running anything."""

    commands: list[Command] = dataclasses.field(default_factory=list)  # every simple command, in order
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # path as written -> text (heredocs, echo >)
    unreadable: list[str] = dataclasses.field(default_factory=list)  # "line 7: why", for IMPORT.txt
    notes: list[str] = dataclasses.field(default_factory=list)  # branches not taken, loops read once, ...


def beside(folder: str, word: str) -> str:
    """A word that starts with the launch file's folder on this machine (%~dp0, $PSScriptRoot) goes on
    as a path inside it, written with Windows separators: make them this machine's."""
    if folder and word.startswith(folder) and folder.startswith("/"):
        return folder + word[len(folder):].replace("\\", "/")
    return word
