"""Problems found in user input, collected so that all of them are reported at once.

Every problem names the file, the key (or image) it is about, what is wrong, and what to do.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from animad.fsutil import write_atomic
from animad.safe_text import safe


@dataclasses.dataclass(frozen=True)
class Problem:
    file: str
    where: str  # dotted key ("network.dim"), an image name, or "" for the file as a whole
    message: str
    fix: str = ""
    severity: str = "error"  # "error" blocks the job; "warning" is reported and training goes on

    def line(self) -> str:
        # File and image names, keys and the values quoted in messages come from the user: a name
        # holding "\nERROR ..." or an ESC sequence must not forge a line or drive the terminal.
        file, where, message, fix = (safe(part) for part in (self.file, self.where, self.message, self.fix))
        place = f"{file}: {where}" if where else file
        text = f"{self.severity.upper()} {place}: {message}"
        return f"{text}\n    -> {fix}" if fix else text


# What an inbox folder's report ends with: the daemon re-checks a folder by itself, so the user only fixes it.
INBOX_ENDING = ("Fix the errors above in the folder; the daemon checks it again by itself once it changes "
                "(saving job.yaml always counts), and once a full disk has room again or a missing model "
                "file is back.")


class Problems:
    """An ordered list of problems that knows which of them block the job."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def error(self, file, where: str, message: str, fix: str = "") -> None:
        self.items.append(Problem(str(file), where, message, fix, "error"))

    def warning(self, file, where: str, message: str, fix: str = "") -> None:
        self.items.append(Problem(str(file), where, message, fix, "warning"))

    def extend(self, other: "Problems") -> None:
        self.items.extend(other.items)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "warning"]

    def __bool__(self) -> bool:
        return bool(self.errors)

    def render(self, title: str, ending: str = INBOX_ENDING) -> str:
        """Every problem, then (when there are errors) the ending: what to do next where the folder is."""
        errors, warnings = self.errors, self.warnings
        head = f"{safe(title)}: {len(errors)} error(s), {len(warnings)} warning(s)"
        lines = [head, "=" * len(head)]
        lines += [p.line() for p in errors + warnings]
        if errors:
            lines += ["", ending]
        return "\n".join(lines) + "\n"

    def to_json(self) -> list[dict]:
        return [dataclasses.asdict(p) for p in self.items]

    @classmethod
    def from_json(cls, data: list[dict]) -> "Problems":
        out = cls()
        out.items = [Problem(**d) for d in data]
        return out


class ConfigError(Exception):
    """Raised with every problem of a config file at once; the CLI prints it without a traceback."""

    def __init__(self, problems: Problems, title: str = "Configuration problems"):
        self.problems = problems
        self.title = title
        super().__init__(problems.render(title))


def write_json_atomic(path: Path, data) -> None:
    """Write JSON through a temp file and a rename, so a crash leaves the old file or the new one."""
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())
