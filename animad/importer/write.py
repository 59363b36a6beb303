"""Write an import's job.yaml (every line commented with the flag it came from) and its IMPORT.txt."""

from __future__ import annotations

import json
import math
import re

from animad.importer.flags import GUI_FIELD, NO_EFFECT, NO_EQUIVALENT, OTHER_MODEL, READ, SAME, SHADOWED, SUPERSEDED
from animad.importer.records import Entry, Translation

KIND_ORDER = (NO_EFFECT, NO_EQUIVALENT, SHADOWED, SUPERSEDED, READ, "not an sd-scripts option", GUI_FIELD,
              OTHER_MODEL, SAME)


def yaml_scalar(value) -> str:
    """One value in flow style that YAML reads back as the same type (1e-05 needs a dot to be a float)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return ".inf" if value > 0 else ("-.inf" if value < 0 else ".nan")
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_scalar(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a double-quoted YAML string


def job_text(entries: list[Entry], header: list[str], order: list[str]) -> str:
    """job.yaml: the entries nested by key, sections in the schema's order, each line with its comment."""
    tree: dict = {}
    for entry in entries:
        node = tree
        for part in entry.key[:-1]:
            node = node.setdefault(part, {})
        node[entry.key[-1]] = entry
    rank = {key: index for index, key in enumerate(order)}
    lines = [f"# {line}" if line else "#" for line in header] + [""]

    def emit(node: dict, depth: int) -> None:
        keys = list(node)
        if depth == 0:
            keys.sort(key=lambda k: rank.get(k, len(rank)))
        for key in keys:
            # Subset folder names are the user's: quoted unless they are a plain word.
            plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) and key not in ("true", "false", "null", "yes", "no")
            item, pad, name = node[key], "  " * depth, key if plain else yaml_scalar(key)
            if isinstance(item, dict):
                lines.append(f"{pad}{name}:")
                emit(item, depth + 1)
            else:
                lines.append(f"{pad}{name}: {yaml_scalar(item.value)}  # {item.comment}")

    emit(tree, 0)
    return "\n".join(lines) + "\n"


def import_text(translation: Translation, file_names: list[str], layout: list[str], models: list[str],
                job_name: str = "job.yaml") -> str:
    """IMPORT.txt: problems first, then every flag not mapped grouped by why, the layout, models, chaining."""
    out = [f"animad import of {', '.join(file_names)}", ""]
    mapped = len(translation.entries)
    defaults = sum(1 for e in translation.entries if not any(e.comment.startswith(n) for n in file_names))
    out.append(f"{job_name}: {mapped} settings; {defaults} of them are not in the files: sd-scripts' own defaults "
               "(or what its flags imply) written out where animad's differ. Each line's comment says where it came "
               "from.")
    out.append("")
    if translation.problems:
        out.append(f"PROBLEMS ({len(translation.problems)}): read these first, the run differs until they are fixed")
        out += [f"  - {p}" for p in translation.problems]
        out.append("")
    out.append(f"NOT MAPPED ({len(translation.unmapped)}): every flag that is not in job.yaml, and why")
    for kind in KIND_ORDER:
        rows = [u for u in translation.unmapped if u.kind == kind]
        if rows:
            out.append(f"  {kind}:")
            out += [f"    {u.flag}  ({u.origin}): {u.reason}" for u in rows]
    for kind in sorted({u.kind for u in translation.unmapped} - set(KIND_ORDER)):
        out.append(f"  {kind}:")
        out += [f"    {u.flag}  ({u.origin}): {u.reason}" for u in translation.unmapped if u.kind == kind]
    out.append("")
    if translation.notes:
        out.append("NOTES")
        out += [f"  - {n}" for n in translation.notes]
        out.append("")
    if layout:
        out.append("DATASET")
        out += [f"  {line}" for line in layout]
        out.append("")
    if models:
        out.append("MODEL FILES")
        out += [f"  {line}" for line in models]
        out.append("")
    out += [
        "CHAINED RUNS",
        "  One launch file is one job. The guide's multi-outfit LoRA is several runs, each continuing from the",
        "  previous one's file (sd-scripts' --network_weights): import each launch file into its own folder, and",
        "  in each later job.yaml set network.init_from to the LoRA file it continues (a path), or to",
        "  'job:NAME' to wait in the queue for job NAME and continue from its result.",
        "",
    ]
    return "\n".join(out)
