"""The syntax of a POSIX shell script, as bash reads it before running anything: one lexer over the whole
file (quotes and $( ) may span lines, a heredoc's body is not commands, a backslash-newline joins
lines) and a parser into commands, and/or lists, if/for/while/case, groups and functions.

A line that cannot be lexed or parsed (an unclosed quote) is listed by its number and reading goes
on with the next line. importer/shell.py walks what comes out.
"""

from __future__ import annotations

import dataclasses
import re

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\+?)=")
OPERATORS = ("&&", "||", ";;", "<<-", "<<", ">>", ">&", "<&", "&>", ";", "&", "|", "(", ")", ">", "<")
RESERVED = {"if", "then", "elif", "else", "fi", "for", "in", "do", "done", "while", "until", "case", "esac",
            "{", "}", "function", "!"}


class ShellError(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


# ------------------------------------------------------------------ lexing

@dataclasses.dataclass
class Token:
    kind: str  # "word", "op", "nl"
    text: str
    line: int
    heredoc: dict | None = None  # for << and <<-: {"delimiter", "quoted", "body"} (the body filled at the newline)


def _skip_balanced(text: str, i: int, line: int, opening: str, closing: str) -> int:
    """Index just past the `closing` that matches the `opening` at text[i-1], skipping quotes inside."""
    depth = 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ShellError(line, "a ' quote is not closed")
            i = end + 1
            continue
        if c == '"':
            i = _skip_double(text, i + 1, line)
            continue
        if c == "`":
            i = _skip_backtick(text, i + 1, line)
            continue
        if c == opening:
            depth += 1
        elif c == closing:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ShellError(line, f"a '{opening}' is not closed")


def _skip_double(text: str, i: int, line: int) -> int:
    """Index just past the closing " of a double-quoted string whose content starts at i."""
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
        elif c == '"':
            return i + 1
        elif c == "$" and text[i + 1:i + 2] in ("(", "{"):
            i = _skip_balanced(text, i + 2, line, text[i + 1], ")" if text[i + 1] == "(" else "}")
        elif c == "`":
            i = _skip_backtick(text, i + 1, line)
        else:
            i += 1
    raise ShellError(line, 'a " quote is not closed')


def _skip_backtick(text: str, i: int, line: int) -> int:
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == "`":
            return i + 1
        else:
            i += 1
    raise ShellError(line, "a ` quote is not closed")


def _read_word(text: str, i: int, line: int) -> int:
    """Index just past the word starting at i (quotes, $(..), ${..}, `..` and NAME=( ... ) kept whole)."""
    start = i
    while i < len(text):
        c = text[i]
        if c in " \t\n" or c in ";&|<>":
            break
        if c in "()":
            # NAME=( ... ) is an array assignment, part of the word; any other paren ends it.
            if c == "(" and ASSIGN.match(text[start:i]) and text[start:i].endswith("="):
                i = _skip_balanced(text, i + 1, line, "(", ")")
                continue
            break
        if c == "\\":
            i += 2
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ShellError(line, "a ' quote is not closed")
            i = end + 1
        elif c == '"':
            i = _skip_double(text, i + 1, line)
        elif c == "`":
            i = _skip_backtick(text, i + 1, line)
        elif c == "$" and text[i + 1:i + 2] in ("(", "{"):
            i = _skip_balanced(text, i + 2, line, text[i + 1], ")" if text[i + 1] == "(" else "}")
        else:
            i += 1
    return i


def lex(text: str, unreadable: list[str]) -> list[Token]:
    """Tokens of the whole script. An unreadable line (an unclosed quote) is listed and skipped."""
    tokens: list[Token] = []
    pending: list[Token] = []  # here-documents whose body starts after the next newline
    i, line = 0, 1
    while i < len(text):
        c = text[i]
        try:
            if c in " \t":
                i += 1
            elif c == "\\" and text[i + 1:i + 2] == "\n":
                i, line = i + 2, line + 1
            elif c == "#":
                while i < len(text) and text[i] != "\n":
                    i += 1
            elif c == "\n":
                tokens.append(Token("nl", "\n", line))
                i, line = i + 1, line + 1
                for doc in pending:
                    i, line = _read_heredoc(text, i, line, doc.heredoc)
                pending = []
            else:
                op = next((o for o in OPERATORS if text.startswith(o, i)), None)
                if op is not None:
                    tokens.append(Token("op", op, line))
                    i += len(op)
                    if op in ("<<", "<<-"):
                        while i < len(text) and text[i] in " \t":
                            i += 1
                        end = _read_word(text, i, line)
                        raw = text[i:end]
                        tokens[-1].heredoc = {"delimiter": re.sub(r"[\"'\\]", "", raw), "quoted": bool(
                            re.search(r"[\"'\\]", raw)), "strip_tabs": op == "<<-", "body": "", "line": line}
                        pending.append(tokens[-1])
                        i = end
                    continue
                end = _read_word(text, i, line)
                word = text[i:end]
                tokens.append(Token("word", word, line))
                line += word.count("\n")
                i = end
                # a file descriptor before a redirection (2>&1, 2> log) belongs to the operator
                if word.isdigit() and text[i:i + 1] in "<>" and text[i:i + 1]:
                    tokens.pop()
        except ShellError as error:
            # Drop what the broken line started and go on after it: the rest of the file still counts.
            unreadable.append(f"line {error.line}: {error}; the line was not read")
            while tokens and tokens[-1].kind != "nl":
                tokens.pop()
            pending = [doc for doc in pending if doc in tokens]
            i, line = _line_end(text, error.line), error.line
    tokens.append(Token("nl", "\n", line))
    return tokens


def _line_end(text: str, line: int) -> int:
    """Index of the newline that ends `line` (1-based), or the end of the text."""
    index = -1
    for _ in range(line):
        index = text.find("\n", index + 1)
        if index < 0:
            return len(text)
    return index


def _read_heredoc(text: str, i: int, line: int, doc: dict) -> tuple[int, int]:
    body = []
    while i < len(text):
        end = text.find("\n", i)
        end = len(text) if end < 0 else end
        raw = text[i:end]
        i, line = end + 1, line + 1
        check = raw.lstrip("\t") if doc["strip_tabs"] else raw
        if check == doc["delimiter"]:
            doc["body"] = "".join(body)
            return i, line
        body.append(check + "\n")
    doc["body"] = "".join(body)  # bash reads to the end of the file, with a warning
    return min(i, len(text)), line


# ------------------------------------------------------------------ parsing

@dataclasses.dataclass
class Simple:
    words: list[str]  # raw words (assignments before the command name included)
    redirects: list[tuple[str, str, dict | None]]  # (operator, raw target, heredoc)
    line: int


@dataclasses.dataclass
class AndOr:
    parts: list[tuple[str, object]]  # ("", first), ("&&", next), ("||", next)
    line: int


@dataclasses.dataclass
class If:
    clauses: list[tuple[list, list, int]]  # (condition, body, line)
    otherwise: list | None
    line: int
    end: int


@dataclasses.dataclass
class For:
    name: str
    items: list[str] | None
    body: list
    line: int
    end: int


@dataclasses.dataclass
class Loop:
    kind: str
    condition: list
    body: list
    line: int
    end: int


@dataclasses.dataclass
class Case:
    word: str
    items: list[tuple[list[str], list]]
    line: int
    end: int


@dataclasses.dataclass
class Group:
    body: list
    line: int


@dataclasses.dataclass
class Function:
    name: str
    body: list
    line: int


class Parser:
    def __init__(self, tokens: list[Token], unreadable: list[str]):
        self.tokens, self.i, self.unreadable = tokens, 0, unreadable

    def peek(self) -> Token:
        return self.tokens[self.i] if self.i < len(self.tokens) else Token("nl", "\n", self.last_line())

    def last_line(self) -> int:
        return self.tokens[-1].line if self.tokens else 1

    def take(self) -> Token:
        token = self.peek()
        self.i += 1
        return token

    def is_word(self, *texts: str) -> bool:
        token = self.peek()
        return token.kind == "word" and token.text in texts

    def expect_word(self, text: str) -> Token:
        token = self.take()
        if token.kind != "word" or token.text != text:
            raise ShellError(token.line, f"'{text}' expected, found {token.text.strip() or 'the end of the line'!r}")
        return token

    def skip_newlines(self) -> None:
        while self.i < len(self.tokens) and (self.peek().kind == "nl" or (
                self.peek().kind == "op" and self.peek().text == ";")):
            self.take()

    def program(self) -> list:
        nodes = []
        while self.i < len(self.tokens):
            start = self.i
            try:
                self.skip_newlines()
                if self.i >= len(self.tokens):
                    break
                nodes.append(self.and_or())
                self.separator()
            except ShellError as error:
                self.unreadable.append(f"line {error.line}: {error}; the line was not read")
                self.i = max(self.i, start + 1)
                while self.i < len(self.tokens) and self.tokens[self.i].kind != "nl":
                    self.i += 1
        return nodes

    def separator(self) -> None:
        token = self.peek()
        if token.kind == "nl" or (token.kind == "op" and token.text in (";", "&")):
            self.take()
        elif not (token.kind == "op" and token.text in (")", ";;")) and not self.is_word(
                "then", "fi", "else", "elif", "do", "done", "esac", "}"):
            raise ShellError(token.line, f"unexpected {token.text!r}")

    def body(self, *ends: str) -> list:
        """Commands up to one of the reserved words in `ends` (not consumed)."""
        nodes = []
        while True:
            self.skip_newlines()
            token = self.peek()
            if self.i >= len(self.tokens):
                raise ShellError(token.line, f"'{ends[0]}' expected before the end of the file")
            if token.kind == "word" and token.text in ends:
                return nodes
            if token.kind == "op" and token.text in (")", ";;") and (")" in ends or ";;" in ends):
                return nodes
            nodes.append(self.and_or())
            self.separator()

    def and_or(self):
        line = self.peek().line
        parts = [("", self.pipeline())]
        while self.peek().kind == "op" and self.peek().text in ("&&", "||"):
            op = self.take().text
            while self.i < len(self.tokens) and self.peek().kind == "nl":
                self.take()
            parts.append((op, self.pipeline()))
        return parts[0][1] if len(parts) == 1 else AndOr(parts, line)

    def pipeline(self):
        if self.is_word("!"):
            self.take()
        node = self.command()
        commands = [node]
        while self.peek().kind == "op" and self.peek().text == "|":
            self.take()
            while self.i < len(self.tokens) and self.peek().kind == "nl":
                self.take()
            commands.append(self.command())
        return commands[0] if len(commands) == 1 else Group(commands, commands[0].line if hasattr(
            commands[0], "line") else 0)

    def command(self):
        token = self.peek()
        if token.kind == "word":
            if token.text == "if":
                return self.redirected(self.if_clause())
            if token.text in ("for", "select"):
                return self.redirected(self.for_clause())
            if token.text in ("while", "until"):
                return self.redirected(self.loop_clause())
            if token.text == "case":
                return self.redirected(self.case_clause())
            if token.text == "{":
                self.take()
                body = self.body("}")
                self.expect_word("}")
                return self.redirected(Group(body, token.line))
            if token.text == "function":
                self.take()
                name = self.take().text
                if self.peek().kind == "op" and self.peek().text == "(":
                    self.take()
                    self.take()
                return self.function(name, token.line)
            nxt = self.tokens[self.i + 1] if self.i + 1 < len(self.tokens) else None
            if NAME.fullmatch(token.text) and nxt and nxt.kind == "op" and nxt.text == "(":
                after = self.tokens[self.i + 2] if self.i + 2 < len(self.tokens) else None
                if after and after.kind == "op" and after.text == ")":
                    self.i += 3
                    return self.function(token.text, token.line)
        if token.kind == "op" and token.text == "(":
            self.take()
            body = self.body(")")
            closing = self.take()
            if closing.text != ")":
                raise ShellError(closing.line, "')' expected")
            return self.redirected(Group(body, token.line))
        return self.simple()

    def function(self, name: str, line: int) -> Function:
        while self.i < len(self.tokens) and self.peek().kind == "nl":
            self.take()
        node = self.command()
        return Function(name, node.body if isinstance(node, Group) else [node], line)

    def redirected(self, node):
        while self.peek().kind == "op" and self.peek().text in ("<", ">", ">>", "<<", "<<-", ">&", "<&", "&>"):
            self.take()
            if self.peek().kind == "word":
                self.take()
        return node

    def simple(self) -> Simple:
        words, redirects, line = [], [], self.peek().line
        while True:
            token = self.peek()
            if token.kind == "word" and not (words == [] and token.text in RESERVED - {"!", "{", "}", "in"}):
                words.append(self.take().text)
            elif token.kind == "op" and token.text in ("<", ">", ">>", "<<", "<<-", ">&", "<&", "&>"):
                op = self.take()
                target = self.take() if self.peek().kind == "word" else Token("word", "", op.line)
                redirects.append((op.text, target.text, op.heredoc))
            else:
                break
        if not words and not redirects:
            raise ShellError(line, f"unexpected {self.peek().text.strip() or 'end of line'!r}")
        return Simple(words, redirects, line)

    def if_clause(self) -> If:
        line = self.take().line
        clauses, otherwise = [], None
        condition = self.body("then")
        self.expect_word("then")
        clauses.append((condition, self.body("elif", "else", "fi"), line))
        while self.is_word("elif"):
            clause_line = self.take().line
            condition = self.body("then")
            self.expect_word("then")
            clauses.append((condition, self.body("elif", "else", "fi"), clause_line))
        if self.is_word("else"):
            self.take()
            otherwise = self.body("fi")
        end = self.expect_word("fi").line
        return If(clauses, otherwise, line, end)

    def for_clause(self) -> For:
        line = self.take().line
        if self.peek().kind == "op" and self.peek().text == "(":  # for (( ... )): arithmetic loop
            raise ShellError(line, "an arithmetic for loop cannot be read without running it")
        name = self.take().text
        items = None
        while self.i < len(self.tokens) and self.peek().kind == "nl":
            self.take()
        if self.is_word("in"):
            self.take()
            items = []
            while self.peek().kind == "word":
                items.append(self.take().text)
        self.skip_newlines()
        self.expect_word("do")
        body = self.body("done")
        end = self.expect_word("done").line
        return For(name, items, body, line, end)

    def loop_clause(self) -> Loop:
        token = self.take()
        condition = self.body("do")
        self.expect_word("do")
        body = self.body("done")
        end = self.expect_word("done").line
        return Loop(token.text, condition, body, token.line, end)

    def case_clause(self) -> Case:
        line = self.take().line
        word = self.take().text
        while self.i < len(self.tokens) and self.peek().kind == "nl":
            self.take()
        self.expect_word("in")
        items = []
        while True:
            self.skip_newlines_only()
            if self.is_word("esac"):
                break
            if self.peek().kind == "op" and self.peek().text == "(":
                self.take()
            patterns = []
            while True:
                token = self.take()
                if token.kind != "word":
                    raise ShellError(token.line, "a case pattern expected")
                patterns.append(token.text)
                nxt = self.take()
                if nxt.kind == "op" and nxt.text == ")":
                    break
                if not (nxt.kind == "op" and nxt.text == "|"):
                    raise ShellError(nxt.line, "')' expected after a case pattern")
            body = self.body("esac", ";;")
            items.append((patterns, body))
            if self.peek().kind == "op" and self.peek().text == ";;":
                self.take()
        end = self.expect_word("esac").line
        return Case(word, items, line, end)

    def skip_newlines_only(self) -> None:
        while self.i < len(self.tokens) and self.peek().kind == "nl":
            self.take()
