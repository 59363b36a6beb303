"""A POSIX shell script (.sh) as bash would read it, without running anything.

Launch scripts set variables and pass them on (`DIM=${2:-32}` ... `--network_dim="$DIM"`), do
arithmetic (`--network_alpha=$((DIM / 2))`), build flags in arrays (`EXTRA=(--seed 42)` ...
`"${EXTRA[@]}"`), choose with `if`/`case`, and write their dataset TOML with a heredoc. This module
lexes and parses the whole file (importer/shell_syntax.py: quotes may span lines; heredoc bodies
are not commands) and walks the commands with an environment, so each command's words come out as
the shell would pass them. What the file cannot tell (an environment variable it never sets, `$1` without a
default, `$(some command)`) stays an unknown marker (importer/words.py).

Where a choice depends on something unknown, the default path is taken: an `if` whose condition
cannot be decided runs its `else` (or nothing), a `case` its `*)` branch, a loop its body once with
the first item; each branch not taken is listed. A line that cannot be parsed (an unclosed quote) is
listed by its number and the lexer starts again on the next line.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from pathlib import Path, PurePosixPath

from animad.importer.integers import evaluate
from animad.importer.shell_syntax import (ASSIGN, NAME, AndOr, Case, For, Function, Group, If, Loop, Parser, Simple,
                                          _skip_backtick, _skip_balanced, _skip_double, lex)
from animad.importer.sources import read_text
from animad.importer.words import Command, Script, has_unknown, unknown

MAX_DEPTH = 20  # function calls and sourced files within each other

# ------------------------------------------------------------------ running (without running anything)

@dataclasses.dataclass
class Env:
    variables: dict[str, str | list[str]]
    positional: list[str] | None  # None: the script's own arguments, unknown here
    functions: dict[str, Function]


class Reader:
    def __init__(self, path: Path, script: Script, home: str | None):
        self.path, self.script, self.home = path, script, home
        self.folder = str(path.parent)
        self.depth = 0
        self.sources: list[str] = []  # variables expanded into the word being built
        self.assigned: set[str] = set()  # every name the file assigns anywhere (see variable())
        self.lines: list[str] = []  # the file's lines, to name the flags of a branch not read

    # ---- words

    def expand(self, raw: str, env: Env, *, split: bool = True) -> list[str]:
        """The words `raw` becomes: parameters, arithmetic and substitutions expanded, quotes removed,
        unquoted expansions split on whitespace (when split)."""
        words: list[str] = []
        current, have = "", False
        i = 0
        if raw.startswith("~") and (len(raw) == 1 or raw[1] == "/"):
            current, have, i = self.home_text(), True, 1
        while i < len(raw):
            c = raw[i]
            if c == "'":
                end = raw.find("'", i + 1)
                end = len(raw) if end < 0 else end
                current, have, i = current + raw[i + 1:end], True, end + 1
            elif c == '"':
                end = _skip_double(raw, i + 1, 0) - 1
                pieces = self.expand_double(raw[i + 1:end], env)
                if pieces is None:  # "$@" or "${A[@]}" with nothing in it: no word at all, as in bash
                    i = end + 1
                    continue
                current += pieces[0]
                if len(pieces) > 1:
                    words.append(current)
                    words.extend(pieces[1:-1])
                    current = pieces[-1]
                have, i = True, end + 1
            elif c == "\\":
                current, have, i = current + raw[i + 1:i + 2], True, i + 2
            elif c == "$" or c == "`":
                value, i = self.dollar(raw, i, env)
                values = value if isinstance(value, list) else [value]
                if isinstance(value, list) and not value:
                    continue
                for n, item in enumerate(values):
                    fields = item.split() if split and not has_unknown(item) else [item]
                    if not fields:
                        continue
                    for m, field in enumerate(fields):
                        if n == 0 and m == 0 and not (split and item[:1].isspace()):
                            current, have = current + field, True
                        else:
                            if have or current:
                                words.append(current)
                            current, have = field, True
            else:
                current, have, i = current + c, True, i + 1
        if have or current:
            words.append(current)
        return words

    def expand_double(self, text: str, env: Env) -> list[str] | None:
        """A double-quoted string: one piece, or several where "${A[@]}" / "$@" splits it; None when it
        is only such a list and the list is empty."""
        pieces = [""]
        i, only_empty_lists = 0, bool(text)
        while i < len(text):
            c = text[i]
            if c == "\\" and text[i + 1:i + 2] in ('"', "\\", "$", "`", "\n"):
                pieces[-1] += "" if text[i + 1] == "\n" else text[i + 1]
                i += 2
            elif c == "$" or c == "`":
                value, i = self.dollar(text, i, env)
                if isinstance(value, list):
                    if value:
                        only_empty_lists = False
                        pieces[-1] += value[0]
                        pieces.extend(value[1:])
                else:
                    only_empty_lists = False
                    pieces[-1] += value
            else:
                only_empty_lists = False
                pieces[-1] += c
                i += 1
        return None if only_empty_lists else pieces

    def home_text(self) -> str:
        if self.home is None:
            return unknown("~")
        return self.home

    def dollar(self, text: str, i: int, env: Env):
        """The value of the expansion at text[i] ($..., `...`): a string or a list (arrays, "$@"), and
        the index after it."""
        if text[i] == "`":
            end = _skip_backtick(text, i + 1, 0)
            return self.substitute(text[i + 1:end - 1], env, f"`{text[i + 1:end - 1]}`"), end
        nxt = text[i + 1:i + 2]
        if text.startswith("$((", i):
            end = _skip_balanced(text, i + 2, 0, "(", ")")
            return self.arithmetic(text[i + 3:end - 2], env), end
        if nxt == "(":
            end = _skip_balanced(text, i + 2, 0, "(", ")")
            return self.substitute(text[i + 2:end - 1], env, text[i:end]), end
        if nxt == "{":
            end = _skip_balanced(text, i + 2, 0, "{", "}")
            return self.parameter(text[i + 2:end - 1], env), end
        match = NAME.match(text, i + 1)
        if match:
            name = match.group(0)
            return self.variable(name, env, f"${name}"), match.end()
        if nxt.isdigit():
            return self.positional(int(nxt), env, f"${nxt}"), i + 2
        if nxt in ("@", "*"):
            return self.all_positional(env, f'"${nxt}"'), i + 2
        if nxt == "#":
            return (str(len(env.positional)) if env.positional is not None else unknown("$#")), i + 2
        if nxt in ("?", "$", "!", "-"):
            return unknown(f"${nxt}"), i + 2
        return "$", i + 1

    def variable(self, name: str, env: Env, written: str):
        if name not in env.variables and name in self.assigned:
            return ""  # set only on a path not taken (an if branch): unset on the default path
        if name in env.variables:
            self.sources.append(written)
            value = env.variables[name]
            return value[0] if isinstance(value, list) and value else ("" if isinstance(value, list) else value)
        if name == "HOME" and self.home is not None:
            return self.home
        if name == "PWD":
            return self.folder
        if name == "BASH_SOURCE":
            return str(self.path)
        return unknown(written)

    def positional(self, number: int, env: Env, written: str):
        if number == 0:
            return str(self.path)
        if env.positional is None:
            return unknown(written)
        return env.positional[number - 1] if number <= len(env.positional) else ""

    def all_positional(self, env: Env, written: str) -> list[str]:
        if env.positional is None:
            self.script.notes.append(f"{written} passes the script's own arguments on; none are known here, so "
                                     "the command was read without them")
            return []
        return list(env.positional)

    def lookup(self, name: str, env: Env) -> str | list[str] | None:
        """A parameter's value, or None when unset (positional parameters are unset here)."""
        if name.isdigit():
            if name == "0":
                return str(self.path)
            if env.positional is None:
                return None
            number = int(name)
            return env.positional[number - 1] if number <= len(env.positional) else None
        if name in env.variables:
            return env.variables[name]
        if name == "HOME" and self.home is not None:
            return self.home
        if name == "PWD":
            return self.folder
        return None

    def parameter(self, inner: str, env: Env):
        """${...}: NAME, NAME[i], NAME[@], #NAME, NAME:-word, NAME:=word, NAME:+word, NAME%pat, NAME#pat,
        NAME/pat/rep."""
        written = "${" + inner + "}"
        if inner.startswith("#") and len(inner) > 1:
            value = self.lookup(re.sub(r"\[[@*]\]$", "", inner[1:]), env)
            if value is None:
                return "0" if not inner[1:].isdigit() else unknown(written)
            return str(len(value))
        match = re.match(r"([A-Za-z_][A-Za-z0-9_]*|\d+|[@*])(\[([^\]]*)\])?", inner)
        if not match:
            return unknown(written)
        name, index, rest = match.group(1), match.group(3), inner[match.end():]
        if name in ("@", "*"):
            return self.all_positional(env, f'"${name}"')
        if name == "BASH_SOURCE":
            return str(self.path)
        value = self.lookup(name, env)
        if value is not None or rest[:2] in (":-", ":=") or rest[:1] in ("-", "="):
            self.sources.append(written)
        if index is not None and value is not None:
            if index in ("@", "*"):
                value = list(value) if isinstance(value, list) else [value]
                return value if not rest else unknown(written)
            if not isinstance(value, list):
                value = [value]
            try:
                position = int(self.arithmetic(index, env))
            except ValueError:
                return unknown(written)
            value = value[position] if -len(value) <= position < len(value) else None
        elif isinstance(value, list):
            value = value[0] if value else ""
        operator = re.match(r":?[-=+?]|%%?|##?|//?|:", rest)
        if not operator:
            if rest:
                return unknown(written)
            if value is None and name in self.assigned:
                return ""  # set only on a path not taken
            return value if value is not None else unknown(written)
        op, word = operator.group(0), rest[operator.end():]
        empty = value is None or (op.startswith(":") and value == "")
        if op in (":-", "-"):
            return "".join(self.expand(word, env, split=False)) if empty else value
        if op in (":=", "="):
            if empty:
                value = "".join(self.expand(word, env, split=False))
                if not name.isdigit():
                    env.variables[name] = value
            return value
        if op in (":+", "+"):
            return "" if empty else "".join(self.expand(word, env, split=False))
        if op in (":?", "?"):
            return unknown(written) if empty else value
        if value is None or has_unknown(value):
            return unknown(written)
        if op in ("%", "%%", "#", "##"):
            pattern = "".join(self.expand(word, env, split=False))
            return _trim(value, pattern, op)
        if op in ("/", "//"):
            pattern, _, replacement = word.partition("/")
            regex = _glob_regex("".join(self.expand(pattern, env, split=False)))
            replacement = "".join(self.expand(replacement, env, split=False))
            return re.sub(regex, lambda _: replacement, value, count=0 if op == "//" else 1)
        return unknown(written)

    def arithmetic(self, expression: str, env: Env) -> str:
        """$(( )) on integers the file sets; anything else is unknown."""
        written = f"$(({expression}))"
        text = expression

        def value_of(match):
            name = match.group(1) or match.group(2)
            value = self.lookup(name, env)
            if isinstance(value, list):
                value = value[0] if value else None
            if value is None or has_unknown(value) or not re.fullmatch(r"\s*-?\d+\s*", str(value)):
                raise ValueError(name)
            self.sources.append(f"${name}")
            return f"({int(value)})"

        try:
            text = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*|\d+)\}?|\b([A-Za-z_][A-Za-z0-9_]*)\b", value_of, text)
            return str(evaluate(text))
        except (ValueError, SyntaxError, ZeroDivisionError, TypeError, RecursionError):
            return unknown(written)

    def substitute(self, inner: str, env: Env, written: str) -> str:
        """$(...) for the few commands whose output the file itself determines (dirname, pwd, cd && pwd,
        realpath, basename, echo); any other is unknown."""
        unreadable: list[str] = []
        nodes = Parser(lex(inner, unreadable), unreadable).program()
        simple = [n for n in nodes if isinstance(n, Simple)]
        chain = nodes[0].parts if len(nodes) == 1 and isinstance(nodes[0], AndOr) else None
        if chain and len(chain) == 2 and all(isinstance(p, Simple) for _, p in chain):
            first, second = chain[0][1], chain[1][1]
            words = self.expand_all(first.words, env)
            if words[:1] == ["cd"] and self.expand_all(second.words, env)[:1] == ["pwd"]:
                target = [w for w in words[1:] if not w.startswith("-")]
                return self.absolute(target[0]) if target else self.folder
        if unreadable or len(simple) != 1 or len(nodes) != 1:
            return unknown(written)
        words = self.expand_all(simple[0].words, env)
        if not words:
            return unknown(written)
        command, args = words[0], [w for w in words[1:] if not w.startswith("-") or w == "-"]
        if command == "pwd":
            return self.folder
        if command == "dirname" and args:
            return unknown(written) if has_unknown(args[0]) else str(PurePosixPath(args[0]).parent)
        if command in ("realpath", "readlink") and args:
            return self.absolute(args[0])
        if command == "basename" and args:
            name = PurePosixPath(args[0]).name
            return name[:-len(args[1])] if len(args) > 1 and name.endswith(args[1]) else name
        if command == "echo":
            return " ".join(words[1:])
        return unknown(written)

    def absolute(self, path: str) -> str:
        if has_unknown(path) or path.startswith("/"):
            return path
        return os.path.normpath(os.path.join(self.folder, path))

    def expand_all(self, raws: list[str], env: Env) -> list[str]:
        return [w for raw in raws for w in self.expand(raw, env)]

    # ---- commands

    def run(self, nodes: list, env: Env) -> None:
        for node in nodes:
            self.run_node(node, env)

    def run_node(self, node, env: Env) -> bool | None:
        """Run one node; returns its exit status as far as known (True: success)."""
        if isinstance(node, Simple):
            return self.simple(node, env)
        if isinstance(node, AndOr):
            status = self.run_node(node.parts[0][1], env)
            for op, part in node.parts[1:]:
                if (op == "&&" and status is True) or (op == "||" and status is False):
                    status = self.run_node(part, env)
                elif status is None:
                    self.script.notes.append(f"line {getattr(part, 'line', node.line)}: runs only depending on "
                                             "a test that cannot be decided from the file; not read")
                    status = None
            return status
        if isinstance(node, If):
            return self.if_node(node, env)
        if isinstance(node, For):
            items = self.expand_all(node.items, env) if node.items is not None else (
                list(env.positional) if env.positional is not None else [])
            if items:
                env.variables[node.name] = items[0]
                if len(items) > 1:
                    self.script.notes.append(f"lines {node.line}-{node.end}: a loop over {', '.join(items)}; read "
                                             f"once, with {node.name}={items[0]} (one launch file is one job)")
                self.run(node.body, env)
            else:
                self.script.notes.append(f"lines {node.line}-{node.end}: a loop over values not known here; not read")
            return True
        if isinstance(node, Loop):
            self.script.notes.append(f"lines {node.line}-{node.end}: a {node.kind} loop; its body was read once")
            self.run(node.condition, env)
            self.run(node.body, env)
            return True
        if isinstance(node, Case):
            return self.case_node(node, env)
        if isinstance(node, Group):
            self.run(node.body, env)
            return True
        if isinstance(node, Function):
            env.functions[node.name] = node
            return True
        return None

    def if_node(self, node: If, env: Env) -> bool | None:
        for index, (condition, body, line) in enumerate(node.clauses):
            verdict = self.test(condition, env)
            if verdict is True:
                self.note_untaken(node, skip=index, why="an earlier condition holds")
                self.run(body, env)
                return True
            end = node.clauses[index + 1][2] - 1 if index + 1 < len(node.clauses) else node.end
            flags = self.flags_in(line, end)
            if verdict is None:
                # Undecidable from the file: the default path (else, or nothing) is taken.
                self.script.notes.append(f"line {line}: `if {self.condition_text(condition)}` depends on a value "
                                         f"not known here; its branch (lines {line}-{end}"
                                         f"{': ' + ' '.join(flags) if flags else ''}) was not read")
            elif flags:
                self.script.notes.append(f"line {line}: `if {self.condition_text(condition)}` is false with the "
                                         f"file's values; its branch (lines {line}-{end}: {' '.join(flags)}) was not "
                                         "read")
        if node.otherwise is not None:
            self.run(node.otherwise, env)
        return True

    def note_untaken(self, node: If, skip: int, why: str) -> None:
        if node.otherwise is not None or len(node.clauses) > 1:
            flags = self.flags_in(node.line, node.end)
            self.script.notes.append(f"lines {node.line}-{node.end}: the if's other branches were not read ({why})"
                                     + (f"; flags in the whole if: {' '.join(flags)}" if flags else ""))

    def flags_in(self, first: int, last: int) -> list[str]:
        """The --flags written on lines first..last, so a branch not read still names them."""
        text = "\n".join(self.lines[first - 1:last])
        return list(dict.fromkeys(re.findall(r"--[A-Za-z_][A-Za-z0-9_]*", text)))

    def condition_text(self, condition: list) -> str:
        first = condition[0] if condition else None
        if isinstance(first, Simple):
            return " ".join(first.words)
        return "..."

    def case_node(self, node: Case, env: Env) -> bool:
        words = self.expand(node.word, env, split=False)
        word = words[0] if words else ""
        flags = self.flags_in(node.line, node.end)
        named = f"; flags in the whole case: {' '.join(flags)}" if flags else ""
        for patterns, body in node.items:
            expanded = ["".join(self.expand(p, env, split=False)) for p in patterns]
            if has_unknown(word):
                if "*" in expanded:
                    self.script.notes.append(f"lines {node.line}-{node.end}: case on a value not known here; its "
                                             f"default branch *) was read{named}")
                    self.run(body, env)
                    return True
                continue
            if any(fnmatch.fnmatchcase(word, p) for p in expanded):
                self.run(body, env)
                return True
        if has_unknown(word):
            self.script.notes.append(f"lines {node.line}-{node.end}: case on a value not known here; no branch read")
        return True

    def test(self, condition: list, env: Env) -> bool | None:
        """A condition's outcome as far as the file tells: [ ], [[ ]], test, true/false, and && / || of them."""
        if not condition:
            return None
        result = None
        for node in condition:
            result = self.test_node(node, env)
        return result

    def test_node(self, node, env: Env) -> bool | None:
        if isinstance(node, AndOr):
            value = self.test_node(node.parts[0][1], env)
            for op, part in node.parts[1:]:
                other = self.test_node(part, env)
                if op == "&&":
                    value = False if False in (value, other) else (True if value and other else None)
                else:
                    value = True if True in (value, other) else (False if value is False and other is False else None)
            return value
        if not isinstance(node, Simple) or not node.words:
            return None
        raws = node.words
        negate = False
        if raws[0] == "!":
            negate, raws = True, raws[1:]
        if not raws:
            return None
        head = raws[0]
        if head in ("true", ":"):
            value = True
        elif head == "false":
            value = False
        elif head in ("[", "test", "[["):
            body = raws[1:-1] if head in ("[", "[[") else raws[1:]
            if head in ("[", "[[") and raws[-1] not in ("]", "]]"):
                return None
            words = []
            for raw in body:
                expanded = self.expand(raw, env, split=head != "[[")
                words.extend(expanded if expanded or head == "[[" else [])
                if head == "[[" and not expanded:
                    words.append("")
            value = _evaluate_test(words)
        else:
            return None
        if value is None:
            return None
        return (not value) if negate else value

    def simple(self, node: Simple, env: Env) -> bool | None:
        raws = list(node.words)
        assigns = []
        while raws and ASSIGN.match(raws[0]):
            assigns.append(raws.pop(0))
        if not raws:
            for raw in assigns:
                self.assign(raw, env)
            self.write_files(node, env, [])
            return True
        head = self.expand(raws[0], env)
        name = head[0] if head else ""
        if name in ("export", "declare", "typeset", "local", "readonly"):
            for raw in raws[1:]:
                if ASSIGN.match(raw):
                    self.assign(raw, env)
            return True
        if name in ("[", "[[", "test", "true", "false", ":"):
            return self.test_node(node, env)
        if name == "set" and "--" in raws:
            env.positional = self.expand_all(raws[raws.index("--") + 1:], env)
            return True
        if name == "shift":
            if env.positional:
                count = int(raws[1]) if len(raws) > 1 and raws[1].isdigit() else 1
                env.positional = env.positional[count:]
            return True
        if name in ("source", ".") and len(raws) > 1:
            return self.source(self.expand(raws[1], env), env, node.line)
        if name == "eval":
            self.script.unreadable.append(f"line {node.line}: eval runs text built at run time; the line was not read")
            return None
        if name in env.functions and self.depth < MAX_DEPTH:
            return self.call(env.functions[name], raws[1:], env)
        self.sources = []
        words, sources = [], []
        for raw in raws:
            self.sources = []
            expanded = self.expand(raw, env)
            words.extend(expanded)
            sources.extend([list(self.sources)] * len(expanded))
        self.script.commands.append(Command(words, node.line, sources))
        self.write_files(node, env, words)
        return True

    def assign(self, raw: str, env: Env) -> None:
        match = ASSIGN.match(raw)
        name, append, value = match.group(1), match.group(2), raw[match.end():]
        if value.startswith("(") and value.endswith(")"):
            unreadable: list[str] = []
            items = [t.text for t in lex(value[1:-1], unreadable) if t.kind == "word"]
            new = self.expand_all(items, env)
            old = env.variables.get(name, [])
            env.variables[name] = (list(old) if isinstance(old, list) else [old]) + new if append else new
            return
        text = "".join(self.expand(value, env, split=False))
        if append:
            old = env.variables.get(name, "")
            if isinstance(old, list):
                env.variables[name] = old + [text]
                return
            text = old + text
        env.variables[name] = text

    def call(self, function: Function, raws: list[str], env: Env) -> bool:
        arguments = self.expand_all(raws, env)
        saved = env.positional
        env.positional = arguments
        self.depth += 1
        try:
            self.run(function.body, env)
        finally:
            self.depth -= 1
            env.positional = saved
        return True

    def source(self, words: list[str], env: Env, line: int) -> bool | None:
        target = words[0] if words else ""
        path = Path(self.absolute(target)) if target and not has_unknown(target) else None
        if path is None or not path.is_file() or self.depth >= MAX_DEPTH:
            self.script.notes.append(f"line {line}: sources {target or 'a file'}, which was not found here; its "
                                     "settings are not known")
            return None
        self.depth += 1
        try:
            unreadable: list[str] = []
            self.run(Parser(lex(read_text(path), unreadable), unreadable).program(), env)
            self.script.unreadable += [f"{path.name} {u}" for u in unreadable]
        finally:
            self.depth -= 1
        return True

    def write_files(self, node: Simple, env: Env, words: list[str]) -> None:
        """cat > FILE <<EOF / tee FILE <<EOF / echo ... > FILE: the text the file would hold."""
        body = next((doc for op, _, doc in node.redirects if doc is not None), None)
        text = None
        if body is not None:
            text = body["body"] if body["quoted"] else "".join(self.expand_double(body["body"], env) or [])
        elif words and words[0] in ("echo", "printf"):
            args = [w for w in words[1:] if not (words[0] == "echo" and w in ("-e", "-n"))]
            text = " ".join(args).replace("\\n", "\n") + ("" if words[0] == "printf" else "\n")
        if text is None:
            return
        targets = [(op, "".join(self.expand(raw, env, split=False))) for op, raw, _ in node.redirects
                   if op in (">", ">>")]
        if words and words[0] == "tee":
            targets += [(">>" if "-a" in words else ">", w) for w in words[1:] if not w.startswith("-")]
        for op, target in targets:
            key = self.absolute(target)
            self.script.files[key] = (self.script.files.get(key, "") if op == ">>" else "") + text


def _trim(value: str, pattern: str, op: str) -> str:
    regex = _glob_regex(pattern)
    candidates = range(len(value) + 1)
    if op in ("%", "%%"):
        order = candidates if op == "%%" else reversed(candidates)
        for start in order:
            if re.fullmatch(regex, value[start:]):
                return value[:start]
    else:
        order = reversed(candidates) if op == "##" else candidates
        for end in order:
            if re.fullmatch(regex, value[:end]):
                return value[end:]
    return value


def _glob_regex(pattern: str) -> str:
    return fnmatch.translate(pattern).removesuffix("\\Z").removeprefix("(?s:").removesuffix(")")


def _evaluate_test(words: list[str]) -> bool | None:
    """[ ... ] / [[ ... ]] on known values; file tests and anything with an unknown value: None."""
    if any(w in ("&&", "||", "-a", "-o") for w in words):
        for op in ("||", "-o", "&&", "-a"):
            if op in words:
                index = words.index(op)
                left, right = _evaluate_test(words[:index]), _evaluate_test(words[index + 1:])
                if op in ("||", "-o"):
                    return True if True in (left, right) else (False if left is False and right is False else None)
                return False if False in (left, right) else (True if left and right else None)
    if words[:1] == ["!"]:
        value = _evaluate_test(words[1:])
        return None if value is None else not value
    if any(has_unknown(w) for w in words):
        return None
    if len(words) == 1:
        return words[0] != ""
    if len(words) == 2:
        op, value = words
        if op == "-z":
            return value == ""
        if op == "-n":
            return value != ""
        return None  # -f, -d, -e ...: this machine is not the one the script runs on
    if len(words) == 3:
        left, op, right = words
        if op in ("=", "=="):
            return fnmatch.fnmatchcase(left, right) if any(c in right for c in "*?[") else left == right
        if op == "!=":
            return left != right
        numbers = {"-eq": int.__eq__, "-ne": int.__ne__, "-lt": int.__lt__, "-le": int.__le__,
                   "-gt": int.__gt__, "-ge": int.__ge__}
        if op in numbers:
            try:
                return numbers[op](int(left), int(right))
            except ValueError:
                return None
    return None


def _assigned_names(nodes) -> set[str]:
    names: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, Simple):
            words = node.words[1:] if node.words[:1] and node.words[0] in ("export", "declare", "local", "readonly",
                                                                          "typeset") else node.words
            for word in words:
                match = ASSIGN.match(word)
                if match:
                    names.add(match.group(1))
                elif not word.startswith("-"):
                    break
        elif isinstance(node, (list, tuple)):
            for item in node:
                walk(item)
        elif dataclasses.is_dataclass(node):
            for field in dataclasses.fields(node):
                walk(getattr(node, field.name))
            if isinstance(node, For):
                names.add(node.name)

    walk(nodes)
    return names


def read_shell(text: str, path: Path) -> Script:
    """The script's commands, files and what could not be read; see the module's docstring."""
    script = Script()
    tokens = lex(text, script.unreadable)
    nodes = Parser(tokens, script.unreadable).program()
    home = os.path.expanduser("~")
    reader = Reader(Path(path).resolve(), script, home if home != "~" else None)
    reader.assigned = _assigned_names(nodes)
    reader.lines = text.split("\n")
    reader.run(nodes, Env({}, None, {}))
    script.notes = list(dict.fromkeys(script.notes))
    return script


__all__ = ["read_shell"]
