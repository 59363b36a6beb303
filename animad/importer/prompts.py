"""--sample_prompts files (.txt with --n/--w/--h/--d/--l/--s options, .toml, .json) read as sd-scripts
reads them (train_util.load_prompts and line_to_prompt_dict), for previews.prompts."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from animad.importer.sources import Flag, Sources, read_text

# sd-scripts' option letters on a prompt line -> the key it stores (and how it types it)
LINE_OPTIONS = [("w", "width", int), ("h", "height", int), ("d", "seed", int), ("s", "sample_steps", int),
                ("l", "scale", float), ("g", "guidance_scale", float), ("n", "negative_prompt", str),
                ("ss", "sample_sampler", str), ("cn", "controlnet_image", str), ("ctr", "cfg_trunc_ratio", float),
                ("rcfg", "renorm_cfg", float), ("fs", "flow_shift", float)]


def line_to_prompt(line: str) -> dict:
    """One prompt line: the text before the first ' --', then each ' --x value' option."""
    parts = line.split(" --")
    prompt = {"prompt": parts[0].strip()}
    for part in parts[1:]:
        for letter, key, kind in sorted(LINE_OPTIONS, key=lambda o: -len(o[0])):
            match = re.match(rf"{letter} (.+)", part, re.I | re.S)
            if match:
                try:
                    prompt[key] = kind(match.group(1).strip())
                except ValueError:
                    prompt.setdefault("unreadable", []).append(f"--{part.strip()}")
                break
        else:
            prompt.setdefault("unreadable", []).append(f"--{part.strip()}")
    return prompt


def read_prompts(flag: Flag, path: Path, sources: Sources) -> None:
    written = sources.written.get(str(path))
    if written is None and not path.is_file():
        sources.read_as["sample_prompts"] = f"not read: {path} is not on this machine"
        sources.notes.append(f"the prompt file named by {flag.origin} is not here; previews.prompts keeps animad's "
                             "default prompts (copy the prompts into previews.prompts by hand)")
        return
    text = written if written is not None else read_text(path)
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
            base = {k: v for k, v in data.get("prompt", {}).items() if k != "subset"}
            prompts = [dict(base, **subset) for subset in data.get("prompt", {}).get("subset", [])]
        elif path.suffix.lower() == ".json":
            prompts = json.loads(text)
            if not isinstance(prompts, list):
                raise ValueError("not a list of prompts")
        else:
            prompts = [line.strip() for line in text.split("\n") if line.strip() and not line.startswith("#")]
    except (ValueError, tomllib.TOMLDecodeError, AttributeError, TypeError) as error:
        sources.read_as["sample_prompts"] = f"not read: {path.name} could not be read ({error})"
        sources.problems.append(f"{path.name} (named by {flag.origin}): its prompts could not be read ({error}); "
                                "previews.prompts keeps animad's default prompts")
        return
    sources.prompts = [line_to_prompt(p) if isinstance(p, str) else dict(p) for p in prompts]
    sources.prompts = [p for p in sources.prompts if isinstance(p, dict) and str(p.get("prompt", "")).strip()]
    sources.read_as["sample_prompts"] = f"read: {len(sources.prompts)} prompt(s) of {path.name} are previews.prompts"
