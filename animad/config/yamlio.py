"""Safe YAML reading with size limits and clear errors."""

from __future__ import annotations

import stat
from pathlib import Path

import yaml

from animad.config.problems import Problems

MAX_YAML_BYTES = 1 << 20  # a job.yaml is a few KB; anything near 1 MB is a mistake or hostile


MAX_NODES = 100_000  # aliases can make a tiny file expand exponentially ("billion laughs")


def _too_big(data) -> bool:
    budget = MAX_NODES
    stack = [data]
    while stack:
        item = stack.pop()
        budget -= 1
        if budget < 0:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (a silent override is a classic YAML trap)."""


def _construct_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, f"unhashable key {key!r}", key_node.start_mark)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_text(text: str, file, problems: Problems):
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(error, "problem", None) or str(error).splitlines()[0]
        if getattr(error, "context", None):
            reason = f"{error.context}; {reason}"
        problems.error(file, where, f"not valid YAML: {reason}",
                       "check the indentation (spaces, not tabs) and that every 'key: value' has a space after ':'")
        return None
    except RecursionError:
        problems.error(file, "", "YAML nests too deeply", "write a plain job.yaml (see inbox/README.md)")
        return None
    if data is None:
        return {}
    if _too_big(data):
        problems.error(file, "", f"expands to more than {MAX_NODES} values (YAML aliases?)",
                       "write a plain job.yaml without '&anchor'/'*alias' tricks")
        return None
    if not isinstance(data, dict):
        problems.error(file, "", f"the top level must be a mapping of keys, got {type(data).__name__}",
                       "start with keys such as 'trigger: mytag' (see inbox/README.md)")
        return None
    return data


def load_yaml_file(path: Path, problems: Problems):
    path = Path(path)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            # A FIFO would block the read for ever (`animad check` hung on one); a device never ends.
            what = "a folder" if stat.S_ISDIR(st.st_mode) else \
                "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
            problems.error(path, "", f"is {what}, not a regular file", "replace it with a plain text file "
                           "(an empty file means all defaults)")
            return None
        size = st.st_size
        if size > MAX_YAML_BYTES:
            problems.error(path, "", f"file is {size} bytes; the limit is {MAX_YAML_BYTES}",
                           "a config file is a few KB: check that this is the right file")
            return None
        raw = path.read_bytes()
    except FileNotFoundError:
        problems.error(path, "", "file not found", "create it (an empty file means all defaults)")
        return None
    except OSError as error:
        problems.error(path, "", f"cannot read: {error.strerror}", "check the file's permissions")
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        problems.error(path, f"byte {error.start}", "not UTF-8 text", "save the file as UTF-8")
        return None
    return load_yaml_text(text, path, problems)
