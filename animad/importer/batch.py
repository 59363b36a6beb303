"""A Windows batch file (.bat, .cmd) as cmd.exe would read it, without running anything.

Batch launchers keep their settings in variables (`set "OUTPUT_NAME=my_lora_v1"`, `set DIM=32`,
`set /a ALPHA=%DIM%/2`) and pass them as `%OUTPUT_NAME%`; paths beside the file are `%~dp0`;
arguments get defaults with `if "%~1"=="" (set DIM=32) else (set DIM=%~1)`; `setlocal
enabledelayedexpansion` adds `!X!`; `call` runs another batch file or a label; `goto` jumps. This
module follows that: `%X%` is expanded when a statement (a whole parenthesised block) is read, `!X!`
when each command in it runs, as cmd does. A value the file does not set stays an unknown marker
(importer/words.py). The file's own arguments are taken as not given (each `%1` used as a value is
unknown; a test of it is read as the file run without arguments), which is how the defaults in the
file apply.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PureWindowsPath

from animad.importer.integers import evaluate
from animad.importer.sources import read_text
from animad.importer.words import Command, Script, beside, has_unknown, unknown

LABEL = re.compile(r"^\s*:(?!:)\s*([^\s:]+)")
# A value put in by %X% / !X! is kept between these marks until the command is split into words, so
# each word can say which variables it came from ("--network_dim=32 (from %DIM%)").
_FROM, _VALUE, _END = "\ue002", "\ue003", "\ue004"
_MARKED = re.compile(f"{_FROM}([^{_VALUE}]*){_VALUE}")
COMMENT = re.compile(r"^\s*(@?rem(\s|$)|::)", re.I)
MAX_STEPS = 10000  # goto loops end here


def logical_statements(text: str) -> list[tuple[int, str]]:
    """(first line, text) of each statement: ^ continuations joined, a ( ... ) block kept whole."""
    statements, current, start, depth = [], "", 0, 0
    for number, raw in enumerate(text.split("\n"), 1):
        if not current and (COMMENT.match(raw) or not raw.strip()):
            continue
        if not current:
            start = number
        line = raw.rstrip("\r")
        stripped = line.rstrip()
        if _unquoted_caret_end(stripped):
            current += stripped[:-1]
            continue
        current += line
        depth += _paren_balance(line)
        if depth > 0:
            current += "\n"
            continue
        statements.append((start, current))
        current, depth = "", 0
    if current:
        statements.append((start, current))
    return statements


def _unquoted_caret_end(line: str) -> bool:
    return line.endswith("^") and not line.endswith("^^") and line.count('"') % 2 == 0


def _paren_balance(line: str) -> int:
    depth, quoted, i = 0, False, 0
    if COMMENT.match(line):
        return 0
    while i < len(line):
        c = line[i]
        if c == '"':
            quoted = not quoted
        elif not quoted and c == "^":
            i += 1
        elif not quoted and c == "(":
            depth += 1
        elif not quoted and c == ")":
            depth -= 1
        i += 1
    return depth


class BatchReader:
    def __init__(self, path: Path, script: Script):
        self.path, self.script = path, script
        self.folder = str(path.parent)
        self.variables: dict[str, str] = {}
        self.delayed = False
        self.steps = 0

    # ---- expansion

    def percent(self, text: str, *, testing: bool = False) -> tuple[str, list[str]]:
        """%X%, %~dp0, %1 ... expanded; returns the text and the variables it used (as written)."""
        used: list[str] = []

        def argument(match) -> str:
            modifiers, number = match.group(1) or "", match.group(2)
            if number == "0":
                if "d" in modifiers.lower() or "p" in modifiers.lower():
                    return self.folder.rstrip("\\/") + ("\\" if PureWindowsPath(self.folder).drive else "/")
                return str(self.path)
            # the file's own arguments: none given
            return "" if testing else unknown(match.group(0))

        def variable(match) -> str:
            name, edit = match.group(1), match.group(2)
            value = self.lookup(name)
            if value is None:
                return unknown(match.group(0))
            used.append(match.group(0))
            value = _edit(value, edit) if edit else value
            return value if testing else f"{_FROM}{match.group(0)}{_VALUE}{value}{_END}"

        text = re.sub(r"%%", "\0PERCENT\0", text)
        text = re.sub(r"%(~[a-zA-Z]*)?([0-9])", argument, text)
        text = re.sub(r"%\*", lambda m: "" if testing else unknown("%*"), text)
        text = re.sub(r"%([^%\s=:][^%=:\n]*?)(:[^%\n]*)?%", variable, text)
        return text.replace("\0PERCENT\0", "%"), used

    def bang(self, text: str) -> tuple[str, list[str]]:
        if not self.delayed:
            return text, []
        used: list[str] = []

        def variable(match) -> str:
            value = self.lookup(match.group(1))
            if value is None:
                return unknown(match.group(0))
            used.append(match.group(0))
            value = _edit(value, match.group(2)) if match.group(2) else value
            return f"{_FROM}{match.group(0)}{_VALUE}{value}{_END}"

        return re.sub(r"!([^!\s=:][^!=:\n]*?)(:[^!\n]*)?!", variable, text), used

    def lookup(self, name: str) -> str | None:
        key = name.upper()
        if key in self.variables:
            return self.variables[key]
        if key == "CD":
            return self.folder
        return None

    # ---- statements

    def run(self, statements: list[tuple[int, str]]) -> None:
        labels = {}
        for index, (_, text) in enumerate(statements):
            match = LABEL.match(text)
            if match:
                labels[match.group(1).lower()] = index
        self.labels, self.statements = labels, statements
        self.run_from(0, [])

    def run_from(self, index: int, stack: list[int]) -> None:
        while index < len(self.statements):
            self.steps += 1
            if self.steps > MAX_STEPS:
                self.script.unreadable.append("the file jumps in a loop (goto); reading stopped there")
                return
            line, text = self.statements[index]
            if LABEL.match(text):
                index += 1
                continue
            expanded, used = self.percent(text)
            jump = self.statement(expanded, line, used, text)
            if jump == "eof":
                if stack:
                    index = stack.pop()
                    continue
                return
            if isinstance(jump, tuple):  # ("goto", label) or ("call", label)
                kind, label = jump
                target = self.labels.get(label.lower().lstrip(":"))
                if target is None:
                    self.script.unreadable.append(f"line {line}: {kind} {label}: no such label; not followed")
                    index += 1
                    continue
                if kind == "call":
                    stack.append(index + 1)
                index = target + 1
                continue
            index += 1

    def statement(self, text: str, line: int, used: list[str], raw: str):
        """One statement (percent-expanded): commands joined by & && || |, an if, a for, a set."""
        for part in _split_commands(text):
            result = self.command(part.strip(), line, used, raw)
            if result is not None:
                return result
        return None

    def command(self, text: str, line: int, used: list[str], raw: str):
        text = text.lstrip("@").strip()
        if not text or COMMENT.match(text):
            return None
        marked, _ = self.bang(text)
        text = _plain(marked)
        word = text.split(None, 1)[0].lower() if text.split() else ""
        rest = text[len(word):].strip() if text.lower().startswith(word) else text
        if word == "if":
            return self.if_command(rest, line, used, raw)
        if word == "for":
            return self.for_command(rest, line, used, raw)
        if marked.startswith("(") and marked.rstrip().endswith(")"):
            return self.block(marked.strip()[1:-1], line, used, raw)
        if word == "set":
            self.set_command(rest, line)
            return None
        if word == "setlocal":
            self.delayed = self.delayed or "enabledelayedexpansion" in rest.lower()
            return None
        if word in ("endlocal", "echo", "echo.", "pause", "cls", "title", "cd", "chdir", "pushd", "popd", "color",
                    "mode", "chcp", "timeout", "start"):
            return None
        if word == "goto":
            target = rest.split()[0] if rest.split() else ""
            return "eof" if target.lower() in (":eof", "eof") else ("goto", target)
        if word == "exit":
            return "eof"
        if word == "call":
            return self.call(rest, line, used, raw)
        marked_words = [w for w in _split_words(_unescape(_drop_redirects(marked.lstrip("@").strip()))) if w != ""]
        if not marked_words:
            return None
        words = [beside(self.folder, _plain(w)) for w in marked_words]
        sources = [_MARKED.findall(w) for w in marked_words]
        self.script.commands.append(Command(words, line, sources))
        return None

    def block(self, text: str, line: int, used: list[str], raw: str):
        for _, inner in logical_statements(text):
            result = self.statement(inner, line, used, raw)
            if result is not None:
                return result
        return None

    def set_command(self, rest: str, line: int) -> None:
        option = re.match(r"/([ap])\s*", rest, re.I)
        if option:
            rest = rest[option.end():]
        if rest.startswith('"'):
            end = rest.rfind('"')
            rest = rest[1:end] if end > 0 else rest[1:]
        name, eq, value = rest.partition("=")
        if not eq or not name.strip():
            return
        name = name.strip().upper()
        if option and option.group(1).lower() == "p":
            self.variables[name] = unknown(f"%{name}%")  # typed in when it runs
            return
        if option:  # set /a: arithmetic on the variables the file sets
            self.variables[name] = self.arithmetic(value.strip().strip('"'))
            return
        value = _unescape(value.rstrip())
        if value == "":
            self.variables.pop(name, None)
        else:
            self.variables[name] = value

    def arithmetic(self, expression: str) -> str:
        def value_of(match):
            value = self.lookup(match.group(0))
            if value is None or has_unknown(value) or not re.fullmatch(r"\s*-?\d+\s*", value):
                raise ValueError(match.group(0))
            return f"({int(value)})"

        try:
            text = re.sub(r"[A-Za-z_][A-Za-z0-9_]*", value_of, expression)
            return str(evaluate(text))
        except (ValueError, SyntaxError, ZeroDivisionError, TypeError):
            return unknown(f"set /a {expression}")

    def if_command(self, rest: str, line: int, used: list[str], raw: str):
        """if [/i] [not] (A==B | defined X | exist P | errorlevel N | A EQU B) command [else command]."""
        ignore_case = False
        match = re.match(r"/i\s+", rest, re.I)
        if match:
            ignore_case, rest = True, rest[match.end():]
        negate = False
        match = re.match(r"not\s+", rest, re.I)
        if match:
            negate, rest = True, rest[match.end():]
        verdict, rest = self.condition(rest, ignore_case, raw)
        then_part, else_part = _split_else(rest)
        if verdict is not None and negate:
            verdict = not verdict
        if verdict is True:
            return self.statement(then_part, line, used, raw)
        flags = list(dict.fromkeys(re.findall(r"--[A-Za-z_]\w*", then_part)))
        if verdict is False and flags:
            self.script.notes.append(f"line {line}: `if` is false with the file's values ({_short(raw)}); the "
                                     f"branch not read has {' '.join(flags)}")
        if verdict is None:
            self.script.notes.append(f"line {line}: `if` depends on something not known here ({_short(raw)}); "
                                     f"{'its else branch was read' if else_part else 'its command was not read'}"
                                     + (f" (the branch not read has {' '.join(flags)})" if flags else ""))
        if else_part is not None:
            return self.statement(else_part, line, used, raw)
        return None

    def condition(self, rest: str, ignore_case: bool, raw: str) -> tuple[bool | None, str]:
        match = re.match(r"defined\s+(\S+)\s*", rest, re.I)
        if match:
            return self.lookup(match.group(1)) is not None, rest[match.end():]
        match = re.match(r"(exist|errorlevel)\s+(\"[^\"]*\"|\S+)\s*", rest, re.I)
        if match:
            return None, rest[match.end():]
        match = re.match(r'("[^"]*"|[^\s=]+)\s*(==|\s(EQU|NEQ|LSS|LEQ|GTR|GEQ)\s)\s*("[^"]*"|\S+)\s*', rest, re.I)
        if not match:
            return None, rest
        left, op, right = match.group(1), (match.group(3) or "==").upper(), match.group(4)
        # A test of the file's own arguments reads them as not given (their defaults apply).
        # the statement was expanded already: the arguments' markers become "" (not given)
        tested = [re.sub(r"\ue000%~?[a-zA-Z]*[0-9*]\ue001", "", side) for side in (left, right)]
        left, right = (s.strip('"') for s in tested)
        if has_unknown(left) or has_unknown(right):
            return None, rest[match.end():]
        if ignore_case:
            left, right = left.lower(), right.lower()
        try:
            numbers = (int(left), int(right)) if op not in ("==",) else None
        except ValueError:
            numbers = None
        a, b = numbers if numbers else (left, right)
        verdict = {"==": a == b, "EQU": a == b, "NEQ": a != b, "LSS": a < b, "LEQ": a <= b, "GTR": a > b,
                   "GEQ": a >= b}[op]
        return verdict, rest[match.end():]

    def for_command(self, rest: str, line: int, used: list[str], raw: str):
        match = re.match(r"(?:/\w+\s+)*%%?(\w)\s+in\s*\(([^)]*)\)\s*do\s+(.*)$", rest, re.I | re.S)
        if not match:
            self.script.unreadable.append(f"line {line}: a for loop that cannot be read without running it; "
                                          "not read")
            return None
        items = _split_words(match.group(2).replace(",", " "))
        if not items:
            return None
        if len(items) > 1:
            self.script.notes.append(f"line {line}: a loop over {', '.join(items)}; read once, with the first "
                                     "(one launch file is one job)")
        body = re.sub(rf"%%?{re.escape(match.group(1))}\b", lambda _: items[0], match.group(3))
        return self.statement(body, line, used, raw)

    def call(self, rest: str, line: int, used: list[str], raw: str):
        words = _split_words(rest)
        if not words:
            return None
        if words[0].startswith(":"):
            return ("call", words[0])
        target = words[0]
        if target.lower().endswith((".bat", ".cmd")) and not has_unknown(target):
            path = Path(target.replace("\\", "/"))
            path = path if path.is_absolute() else Path(self.folder) / path
            if path.is_file():
                inner = BatchReader(path, self.script)
                inner.variables, inner.delayed = self.variables, self.delayed
                inner.run(logical_statements(read_text(path)))
                return None
            if "activate" not in target.lower():  # a virtual environment's activation sets no training value
                self.script.notes.append(f"line {line}: calls {target}, which was not found here; its settings are "
                                         "not known")
            return None
        return self.command(rest, line, used, raw)


def _edit(value: str, edit: str) -> str:
    """%X:~start,length% and %X:old=new%."""
    match = re.fullmatch(r":~(-?\d+)(?:,(-?\d+))?", edit)
    if match:
        start = int(match.group(1))
        text = value[start:]
        if match.group(2) is not None:
            length = int(match.group(2))
            text = text[:length] if length >= 0 else text[:length or None]
        return text
    match = re.fullmatch(r":([^=]*)=(.*)", edit, re.S)
    if match and match.group(1):
        return re.sub(re.escape(match.group(1)), lambda _: match.group(2), value, flags=re.I)
    return value


def _split_commands(text: str) -> list[str]:
    """Commands joined by &, &&, ||, | outside quotes and parentheses (^& is not a separator)."""
    parts, current, quoted, depth, i = [], "", False, 0, 0
    while i < len(text):
        c = text[i]
        if c == '"':
            quoted = not quoted
        elif not quoted and c == "^" and i + 1 < len(text):
            current += text[i:i + 2]
            i += 2
            continue
        elif not quoted and c == "(":
            depth += 1
        elif not quoted and c == ")":
            depth -= 1
        elif not quoted and depth == 0 and c in "&|":
            if c == "&" and current.rstrip().endswith(">"):  # 2>&1
                current += c
                i += 1
                continue
            parts.append(current)
            current = ""
            i += 2 if text[i + 1:i + 2] == c else 1
            continue
        current += c
        i += 1
    parts.append(current)
    return [p for p in parts if p.strip()]


def _split_else(text: str) -> tuple[str, str | None]:
    """`(a) else (b)` or `cmd`; the then-part and the else-part."""
    text = text.strip()
    if text.startswith("("):
        depth, quoted = 0, False
        for i, c in enumerate(text):
            if c == '"':
                quoted = not quoted
            elif not quoted and c == "(":
                depth += 1
            elif not quoted and c == ")":
                depth -= 1
                if depth == 0:
                    then_part, after = text[:i + 1], text[i + 1:].strip()
                    match = re.match(r"else\s*(.*)$", after, re.I | re.S)
                    return then_part, (match.group(1) if match else None)
    match = re.search(r"\s+else\s+", text, re.I)
    if match:
        return text[:match.start()], text[match.end():]
    return text, None


def _drop_redirects(text: str) -> str:
    return re.sub(r'\s*\d?>>?\s*(&\d|"[^"]*"|\S+)', "", text)


def _unescape(text: str) -> str:
    """^x outside quotes is x."""
    out, quoted, i = "", False, 0
    while i < len(text):
        c = text[i]
        if c == '"':
            quoted = not quoted
        elif c == "^" and not quoted and i + 1 < len(text):
            out += text[i + 1]
            i += 2
            continue
        out += c
        i += 1
    return out


def _split_words(line: str) -> list[str]:
    """Words as a Windows program receives them: split on spaces, double quotes group (and are removed);
    a backslash is a path separator, not an escape."""
    words, word, quoted, started = [], "", False, False
    for char in line:
        if char == '"':
            quoted, started = not quoted, True
        elif char.isspace() and not quoted:
            if word or started:
                words.append(word)
            word, started = "", False
        else:
            word += char
    if word or started:
        words.append(word)
    return words


def _plain(text: str) -> str:
    """Text without the marks that say where a value came from."""
    return _MARKED.sub("", text).replace(_END, "")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 70 else text[:67] + "..."


def read_batch(text: str, path: Path) -> Script:
    """The batch file's commands as cmd would run them; see the module's docstring."""
    script = Script()
    BatchReader(Path(os.path.abspath(path)), script).run(logical_statements(text))
    script.notes = list(dict.fromkeys(script.notes))
    return script


