"""A tiny declarative schema on top of dataclasses.

Config sections are dataclasses whose fields are declared with `option(...)`: a default, a help text
and simple constraints. `parse` turns a YAML mapping into those dataclasses and records *every*
problem it meets (wrong type, out of range, unknown key with a "did you mean" hint) instead of
stopping at the first. A type may be a union with a literal word (`int | Literal["auto"]`): the
value is judged by the member of its kind, so a bad number gets the range error and a bad word the
list of what is allowed. `to_dict` gives the resolved plain mapping back, and `template` writes a
commented example file from the same help texts, so the docs cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import difflib
import textwrap
import types
import typing
from typing import Any

import yaml

from animad.config.aliases import alias_hint
from animad.config.problems import Problems

_MISSING = dataclasses.MISSING


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None,
           choices: typing.Sequence[Any] | None = None, example: Any = None):
    """Declare a config field. Mutable defaults are copied per instance."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "example": example}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        factory = (lambda d=default: _copy(d))
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _copy(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value)
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def section(cls, help: str):
    """A nested section field whose default is the section with all its defaults."""
    return dataclasses.field(default_factory=cls, metadata={"help": help, "section": True})


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}s"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true/false", int: "a whole number", float: "a number", str: "text"}.get(tp, str(tp))


def _kind_fits(value, tp) -> bool:
    """Whether value is of tp's kind at all, ranges and choices aside (to pick a union member)."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin is list:
        return isinstance(value, list)
    if origin is dict or dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    if isinstance(value, bool) or tp is bool:
        return tp is bool and isinstance(value, bool)
    return isinstance(value, {int: int, float: (int, float), str: str}.get(tp, ()))


def _coerce(value, tp, where: str, file, problems: Problems, meta: dict):
    """Return (ok, value) after checking value against tp; records a problem when not ok."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return True, value
        problems.error(file, where, f"{value!r} is not {_type_name(tp)}", _fix_hint(meta, tp))
        return False, None
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return True, None
        # A value of one member's kind is judged by that member alone, so `batch_size: 0` says
        # "below the minimum 1" rather than "not a whole number or 'auto'".
        for arg in args:
            if _kind_fits(value, arg):
                return _coerce(value, arg, where, file, problems, meta)
        scratch = Problems()
        for arg in args:
            if arg is type(None):
                continue
            ok, out = _coerce(value, arg, where, file, scratch, meta)
            if ok:
                return True, out
        problems.error(file, where, f"{value!r} is not {_type_name(tp)}", _fix_hint(meta, tp))
        return False, None
    if dataclasses.is_dataclass(tp):
        if value is None:  # "network:" with nothing under it means all defaults
            value = {}
        if not isinstance(value, dict):
            problems.error(file, where, f"expected a mapping of settings, got {value!r}",
                           f"write '{where.rsplit('.', 1)[-1]}:' followed by indented keys")
            return False, None
        return True, parse(tp, value, file, problems, where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            value = [value]  # a single value where a list is allowed is a one-element list
        out, ok_all = [], True
        for index, item in enumerate(value):
            ok, coerced = _coerce(item, item_tp, f"{where}[{index}]", file, problems, meta)
            ok_all &= ok
            out.append(coerced)
        return ok_all, out
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            problems.error(file, where, f"expected a mapping, got {value!r}")
            return False, None
        out, ok_all = {}, True
        for key, item in value.items():
            ok, coerced = _coerce(item, value_tp, f"{where}.{key}", file, problems, meta)
            ok_all &= ok
            out[str(key)] = coerced
        return ok_all, out
    if tp is bool:
        if isinstance(value, bool):
            return True, value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return _check_range(value, where, file, problems, meta)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _check_range(float(value), where, file, problems, meta)
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = str(value)
            choices = meta.get("choices")
            if choices and value not in choices:
                close = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                problems.error(file, where, f"'{value}' is not one of: {', '.join(map(str, choices))}",
                               f"{hint}use one of the listed values")
                return False, None
            return True, value
    problems.error(file, where, f"{value!r} is not {_type_name(tp)}", _fix_hint(meta, tp))
    return False, None


def _fix_hint(meta: dict, tp) -> str:
    example = meta.get("example")
    if example is not None:
        return f"for example: {example!r}"
    return f"write {_type_name(tp)}"


def _check_range(value, where, file, problems: Problems, meta: dict):
    low, high = meta.get("min"), meta.get("max")
    if low is not None and value < low:
        problems.error(file, where, f"{value} is below the minimum {low}", f"use a value >= {low}")
        return False, None
    if high is not None and value > high:
        problems.error(file, where, f"{value} is above the maximum {high}", f"use a value <= {high}")
        return False, None
    return True, value


def parse(cls, data: dict | None, file, problems: Problems, prefix: str = ""):
    """Build cls from a mapping, filling defaults; every bad key becomes a problem, not an exception."""
    data = data or {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, raw in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            # An sd-scripts/kohya_ss name gets its real key: difflib guesses by spelling and sent
            # caption_tag_dropout_rate to caption_dropout (it is data.tag_dropout).
            fix = alias_hint(str(key))
            if fix is None:
                close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
                fix = f"did you mean '{close[0]}'?" if close else f"known keys here: {', '.join(fields)}"
            problems.error(file, where, "unknown key", fix)
            continue
        ok, value = _coerce(raw, hints[key], where, file, problems, dict(fields[key].metadata))
        if ok:
            values[key] = value
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    """One option as declared: its dotted key, default and help (what a command-line flag reuses)."""

    key: str  # e.g. "selection.patience"
    default: Any
    help: str


def option_info(cls, key: str) -> OptionInfo:
    """The option at a dotted key of a config class (`option_info(JobConfig, "selection.patience")`)."""
    *sections, name = key.split(".")
    for part in sections:
        cls = typing.get_type_hints(cls)[part]
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    default = field.default if field.default is not _MISSING else field.default_factory()
    return OptionInfo(key, default, field.metadata["help"])


def to_dict(instance) -> dict:
    """The resolved config as a plain mapping (for job.resolved.yaml and LoRA metadata)."""
    return dataclasses.asdict(instance)


def _comment(help_text: str, pad: str, width: int = 100) -> list[str]:
    """Help text as YAML comment lines; explicit newlines are kept, long lines are wrapped."""
    lines = []
    for chunk in help_text.split("\n"):
        wrapped = textwrap.wrap(chunk, width - len(pad) - 2, break_on_hyphens=False) or [""]
        lines += [f"{pad}# {line}" if line else f"{pad}#" for line in wrapped]
    return lines


def template(cls, indent: int = 0, skip: typing.Collection[str] = ()) -> str:
    """A commented YAML document listing every key with its default and its help text."""
    pad = " " * indent
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        lines += _comment(f.metadata.get("help", ""), pad)
        tp = hints[f.name]
        if f.metadata.get("section") or dataclasses.is_dataclass(tp):
            lines.append(f"{pad}{f.name}:")
            lines.append(template(tp, indent + 2))
            continue
        default = f.default if f.default is not _MISSING else f.default_factory()
        if isinstance(default, dict):
            default = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in default.items()}
        if f.metadata.get("example") is not None and default in (None, [], {}, ""):
            shown = yaml.safe_dump({f.name: f.metadata["example"]}, default_flow_style=True).strip()[1:-1]
            lines.append(f"{pad}#{shown}")
        else:
            flow = not isinstance(default, dict) or not default
            shown = yaml.safe_dump({f.name: default}, default_flow_style=flow, allow_unicode=True, sort_keys=False)
            shown = shown.strip()[1:-1] if flow else shown.rstrip()
            lines.append("\n".join(pad + line for line in shown.splitlines()))
    return "\n".join(lines)
