"""A PowerShell launch script (.ps1) as PowerShell would read it, without running anything.

The forms launch scripts use: `param([int]$Dim = 32)` defaults, `$Name = "value"` and `$env:X = ...`,
"$X" / "${X}" / "$($X)" / "$env:X" inside double quotes (single quotes are literal), arrays
(`$Extra = @("--seed", "42")`, `$Extra += "--flip_aug"`) passed as `@Extra` or `$Extra`,
`$PSScriptRoot` and `Split-Path -Parent $MyInvocation.MyCommand.Path` for the script's folder,
`Join-Path`, backtick continuations and `if (...) { } elseif (...) { } else { }`. A value the file
does not set stays an unknown marker (importer/words.py); a condition that cannot be decided takes
the `else` branch (or none), and says so.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from animad.importer.words import Command, Script, beside, has_unknown, unknown

ASSIGN = re.compile(r"^\$(env:)?([A-Za-z_][A-Za-z0-9_]*)\s*(\+?=)\s*(.*)$", re.S | re.I)
VARIABLE = re.compile(r"\$(?:\{([^}]+)\}|(env:[A-Za-z_][A-Za-z0-9_]*|[A-Za-z_][A-Za-z0-9_]*)(\.[A-Za-z.]+)?)", re.I)


def statements(text: str) -> list[tuple[int, str]]:
    """(first line, text): block comments dropped, ` continuations joined, { } ( ) blocks kept whole."""
    text = re.sub(r"<#.*?#>", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    out, current, start, depth = [], "", 0, 0
    for number, raw in enumerate(text.split("\n"), 1):
        line = _drop_comment(raw).rstrip()
        if not current and not line.strip():
            continue
        if not current:
            start = number
        if line.endswith("`"):
            current += line[:-1] + " "
            continue
        current += line
        depth += _balance(line)
        if depth > 0:
            current += "\n"
            continue
        out.append((start, current.strip()))
        current, depth = "", 0
    if current.strip():
        out.append((start, current.strip()))
    return out


def _scan(text: str, opens: str = "({[", closes: str = ")}]"):
    """Each character with whether it is quoted and the bracket depth after it: the one reading of
    PowerShell quotes and brackets that comments, line joining and splitting share."""
    quote, depth = None, 0
    for c in text:
        quoted = quote is not None
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in opens:
            depth += 1
        elif c in closes:
            depth -= 1
        yield c, quoted, depth


def _drop_comment(line: str) -> str:
    for i, (c, quoted, _) in enumerate(_scan(line)):
        if c == "#" and not quoted:
            return line[:i]
    return line


def _balance(line: str) -> int:
    """Brackets a line leaves open (square ones do not join lines)."""
    depth = 0
    for _, _, depth in _scan(line, "({", ")}"):
        pass
    return depth


def _split_top(text: str, separators: str) -> list[str]:
    """Split on separators outside quotes and brackets."""
    parts, current = [], ""
    for c, quoted, depth in _scan(text):
        if not quoted and depth == 0 and c in separators:
            parts.append(current)
            current = ""
            continue
        current += c
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


class PowerShellReader:
    def __init__(self, path: Path, script: Script):
        self.path, self.script = path, script
        self.folder = str(path.parent)
        self.variables: dict[str, str | list[str]] = {}
        self.sources: list[str] = []

    def lookup(self, name: str, written: str):
        key = name.lower()
        if key in ("psscriptroot",):
            return self.folder
        if key in self.variables:
            self.sources.append(written)
            return self.variables[key]
        if key == "home" or key == "env:userprofile":
            return None
        return None

    def interpolate(self, text: str) -> str:
        """A double-quoted string's value."""
        text = re.sub(r"`(.)", lambda m: {"n": "\n", "t": "\t", "0": ""}.get(m.group(1), m.group(1)), text)
        text = re.sub(r"\$\(\s*(\$[^)]*)\)", lambda m: self.scalar(m.group(1).strip()), text)

        def variable(match) -> str:
            name = match.group(1) or match.group(2)
            if match.group(3) and name.lower() == "myinvocation":
                return str(self.path)
            value = self.lookup(name, match.group(0))
            if value is None:
                return unknown(match.group(0))
            return " ".join(value) if isinstance(value, list) else value

        return VARIABLE.sub(variable, text)

    def scalar(self, text: str) -> str:
        text = text.strip()
        if len(text) >= 2 and text[0] == text[-1] == "'":
            return text[1:-1].replace("''", "'")
        if len(text) >= 2 and text[0] == text[-1] == '"':
            return self.interpolate(text[1:-1])
        if re.fullmatch(r"-?[\d.]+(e-?\d+)?", text, re.I):
            return text
        if text.lower() in ("$true", "$false", "$null"):
            return {"$true": "True", "$false": "False", "$null": ""}[text.lower()]
        match = re.fullmatch(r"\$(\{[^}]+\}|[A-Za-z_:][A-Za-z0-9_:]*)(\.[A-Za-z.]+)?", text)
        if match:
            name = match.group(1).strip("{}")
            if match.group(2) and name.lower() == "myinvocation":
                return str(self.path)
            value = self.lookup(name, text)
            if value is None:
                return unknown(text)
            return value[0] if isinstance(value, list) and value else ("" if isinstance(value, list) else value)
        inner = text[1:-1].strip() if text.startswith("(") and text.endswith(")") else text
        words = _split_top(inner, " \t")
        if words and words[0].lower() == "split-path" and any(w.lower() == "-parent" for w in words):
            target = [w for w in words[1:] if not w.startswith("-")]
            value = self.scalar(target[0]) if target else unknown(text)
            return unknown(text) if has_unknown(value) else str(Path(value).parent)
        if words and words[0].lower() == "join-path":
            parts = [self.scalar(w) for w in words[1:] if not w.startswith("-")]
            return "/".join(p.rstrip("/\\") for p in parts) if parts else unknown(text)
        if re.fullmatch(r"[\w./\\:-]+", text):
            return text  # a bare word is a string argument
        return unknown(text)

    def value(self, text: str) -> str | list[str]:
        text = text.strip()
        if text.startswith("@(") and text.endswith(")"):
            return [self.scalar(p) for p in _split_top(text[2:-1], ",\n")]
        parts = _split_top(text, ",")
        if len(parts) > 1:
            return [self.scalar(p) for p in parts]
        return self.scalar(text)

    def run(self, items: list[tuple[int, str]]) -> None:
        for line, text in items:
            self.statement(line, text)

    def statement(self, line: int, text: str) -> None:
        lower = text.lower()
        if lower.startswith("param") and text[5:].lstrip().startswith("("):
            body = text[text.index("(") + 1:text.rindex(")")]
            for entry in _split_top(body, ",\n"):
                match = re.search(r"\$([A-Za-z_][A-Za-z0-9_]*)\s*(?:=\s*(.+))?$", entry, re.S)
                if match and match.group(2):
                    self.variables[match.group(1).lower()] = self.value(match.group(2))
            return
        if re.match(r"if\s*\(", lower):
            self.if_statement(line, text)
            return
        if re.match(r"foreach\s*\(", lower):
            match = re.match(r"foreach\s*\(\s*\$(\w+)\s+in\s+(.+?)\)\s*\{(.*)\}\s*$", text, re.S | re.I)
            if match:
                items = self.value(match.group(2))
                items = items if isinstance(items, list) else [items]
                if items:
                    self.variables[match.group(1).lower()] = items[0]
                    self.script.notes.append(f"line {line}: a loop; read once, with ${match.group(1)} = {items[0]} "
                                             "(one launch file is one job)")
                    self.run(statements(match.group(3)))
            return
        match = ASSIGN.match(text)
        if match:
            name = ("env:" if match.group(1) else "") + match.group(2).lower()
            value = self.value(match.group(4))
            if match.group(3) == "+=":
                old = self.variables.get(name, [])
                old = old if isinstance(old, list) else [old]
                value = old + (value if isinstance(value, list) else [value])
            self.variables[name] = value
            return
        if lower.split()[:1] and lower.split()[0] in ("write-host", "write-output", "set-location", "cd", "pause",
                                                   "read-host", "exit", "return", "$erroractionpreference"):
            return
        self.command(line, text)

    def if_statement(self, line: int, text: str) -> None:
        rest = text
        while True:
            match = re.match(r"(?:if|elseif)\s*\((.*?)\)\s*\{", rest, re.S | re.I)
            if not match:
                break
            body, after = _braced(rest[match.end() - 1:])
            verdict = self.condition(match.group(1))
            if verdict is True:
                self.run(statements(body))
                return
            flags = list(dict.fromkeys(re.findall(r"--[A-Za-z_]\w*", body)))
            named = f" ({' '.join(flags)})" if flags else ""
            if verdict is None:
                self.script.notes.append(f"line {line}: `if ({match.group(1).strip()})` depends on something not "
                                         f"known here; its branch{named} was not read")
            elif flags:
                self.script.notes.append(f"line {line}: `if ({match.group(1).strip()})` is false with the file's "
                                         f"values; its branch{named} was not read")
            rest = after.strip()
            if rest.lower().startswith("elseif"):
                continue
            if rest.lower().startswith("else"):
                block, _ = _braced(rest[4:].strip())
                self.run(statements(block))
            return

    def condition(self, text: str) -> bool | None:
        text = text.strip()
        for op in ("-or", "-and"):
            parts = re.split(rf"\s{op}\s", text, flags=re.I)
            if len(parts) > 1:
                values = [self.condition(p) for p in parts]
                if op == "-or":
                    return True if True in values else (False if all(v is False for v in values) else None)
                return False if False in values else (True if all(values) else None)
        negate = False
        if text.lower().startswith("-not ") or text.startswith("!"):
            negate, text = True, text.split(None, 1)[1] if text.lower().startswith("-not") else text[1:]
        match = re.fullmatch(r"\[string\]::IsNullOrEmpty\((.+)\)", text.strip(), re.I)
        if match:
            value = self.scalar(match.group(1))
            verdict = None if has_unknown(value) else value == ""
        else:
            match = re.fullmatch(r"(.+?)\s+-(eq|ne|gt|ge|lt|le|like)\s+(.+)", text.strip(), re.I)
            if match:
                left, right = self.scalar(match.group(1)), self.scalar(match.group(3))
                if has_unknown(left) or has_unknown(right):
                    return None
                op = match.group(2).lower()
                try:
                    a, b = float(left), float(right)
                except ValueError:
                    a, b = left.lower(), right.lower()
                verdict = {"eq": a == b, "ne": a != b, "gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b,
                           "like": a == b}[op]
            else:
                value = self.scalar(text.strip())
                verdict = None if has_unknown(value) else value not in ("", "False", "0")
        if verdict is None:
            return None
        return (not verdict) if negate else verdict

    def command(self, line: int, text: str) -> None:
        words, sources = [], []
        for raw in _split_top(text, " \t\n"):
            if raw in ("&", "|") or raw.startswith(("2>", ">", "|")):
                if raw.startswith("|"):
                    break
                continue
            self.sources = []
            if raw.startswith("@") and re.fullmatch(r"@[A-Za-z_]\w*", raw):
                value = self.lookup(raw[1:], raw)
                values = value if isinstance(value, list) else ([value] if value else [unknown(raw)])
            elif raw.startswith("$") and re.fullmatch(r"\$[A-Za-z_][\w:]*", raw):
                value = self.lookup(raw[1:], raw)
                values = value if isinstance(value, list) else ([value] if value is not None else [unknown(raw)])
            elif raw.startswith("-") and ("'" in raw or '"' in raw or "$" in raw):
                values = [self.interpolate(re.sub(r"[\"']", "", raw))]
            else:
                values = [self.scalar(raw)] if raw[:1] in "\"'$(" else [raw]
            words.extend(beside(self.folder, v) for v in values)
            sources.extend([list(self.sources)] * len(values))
        if words:
            self.script.commands.append(Command(words, line, sources))


def _braced(text: str) -> tuple[str, str]:
    """The inside of the { } block text starts with, and what follows it."""
    depth, quote = 0, None
    for i, c in enumerate(text):
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[1:i], text[i + 1:]
    return text[1:], ""


def read_powershell(text: str, path: Path) -> Script:
    script = Script()
    PowerShellReader(Path(os.path.abspath(path)), script).run(statements(text))
    script.notes = list(dict.fromkeys(script.notes))
    return script
