"""What a translation is made of: job.yaml entries (each with the comment naming its flag), the flags not
mapped with their reasons, the subsets to lay out, the model files, problems and notes."""

from __future__ import annotations

import dataclasses
from typing import Any

from animad.importer.sources import Flag
from animad.importer.words import has_unknown, shown

SD_DEFAULT = "sd-scripts' default"


@dataclasses.dataclass
class Entry:
    key: tuple[str, ...]  # ("network", "dim"), ("data", "subsets", "MayRedBikini", "repeats")
    value: Any
    comment: str  # the flag it came from, or why sd-scripts' default is written


@dataclasses.dataclass
class Unmapped:
    flag: str  # "--min_snr_gamma", "--network_args module_x", "[[datasets.subsets]] is_reg"
    origin: str
    kind: str  # NO_EFFECT, NO_EQUIVALENT, SUPERSEDED, SAME, or "not an sd-scripts option"
    reason: str


@dataclasses.dataclass
class SubsetPlan:
    folder: str  # the subfolder of the dataset folder
    image_dir: str  # as the file wrote it
    origin: str


@dataclasses.dataclass
class Translation:
    entries: list[Entry] = dataclasses.field(default_factory=list)
    unmapped: list[Unmapped] = dataclasses.field(default_factory=list)
    subsets: list[SubsetPlan] = dataclasses.field(default_factory=list)
    models: dict[str, Flag] = dataclasses.field(default_factory=dict)  # dit/text_encoder/vae as written
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    unresolved: set[str] = dataclasses.field(default_factory=set)  # flags given with a value not known here

    def set(self, key: str | tuple, value, comment: str, default_for: str | None = None) -> None:
        """One job.yaml line. default_for: the flag whose absence this sd-scripts default stands for; it is
        not written when that flag was given with a value the file does not tell (animad's default stays)."""
        if default_for is not None and default_for in self.unresolved:
            return
        if has_unknown(value) or (isinstance(value, list) and any(has_unknown(v) for v in value)):
            self.problems.append(f"{shown(comment)}: its value is not known here; not imported")
            return
        self.entries.append(Entry(tuple(key.split(".")) if isinstance(key, str) else key, value, comment))


def comment_of(flag: Flag) -> str:
    """The comment for a line: the file and the flag as written, shortened for long values."""
    return flag.origin if len(flag.origin) <= 90 else flag.origin[:87] + "..."


def default_comment(name: str) -> str:
    return f"{SD_DEFAULT} (--{name} not given)"
