"""Find the model files and tokenizers a job needs, offline, and say clearly what is missing."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from animad.config.problems import Problems
from animad.fsutil import safe_exists, safe_is_dir, safe_is_file

QWEN_DIR_NAMES = ("qwen3", "qwen3_06b", "qwen25_tokenizer", "qwen_tokenizer", "qwen")
T5_DIR_NAMES = ("t5", "t5_tokenizer", "t5_old", "t5xxl")

TOKENIZER_HELP = (
    "animad needs the Qwen3 tokenizer (vocab.json + merges.txt, or tokenizer.json) and the T5 tokenizer "
    "(spiece.model or tokenizer.json). They ship with ComfyUI (comfy/text_encoders/qwen25_tokenizer and "
    "t5_tokenizer) and sd-scripts (configs/qwen3_06b and configs/t5_old). Point 'comfyui:' or 'tokenizers:' "
    "in animad.yaml at one of them, or set ANIMAD_TOKENIZERS=/path/to/dir."
)


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    dit: Path
    text_encoder: Path
    vae: Path
    qwen_tokenizer: Path
    t5_tokenizer: Path

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in dataclasses.asdict(self).items()}


def is_qwen_tokenizer_dir(path: Path) -> bool:
    return safe_is_file(path / "vocab.json") and safe_is_file(path / "merges.txt") or (
        safe_is_file(path / "tokenizer.json") and "t5" not in path.name.lower())


def is_t5_tokenizer_dir(path: Path) -> bool:
    return safe_is_file(path / "spiece.model") or (
        safe_is_file(path / "tokenizer.json") and "qwen" not in path.name.lower()
        and not safe_exists(path / "merges.txt"))


def _candidates_in(root: Path):
    """Yield (kind, dir) tokenizer candidates inside a folder that a user pointed us at."""
    if not safe_is_dir(root):
        return
    if safe_is_file(root / "vocab.json") and safe_is_file(root / "merges.txt"):
        yield "qwen", root
    if safe_is_file(root / "spiece.model"):
        yield "t5", root
    for sub in ("", "comfy/text_encoders", "text_encoders", "configs", "tokenizers"):
        base = root / sub if sub else root
        for name in QWEN_DIR_NAMES:
            if is_qwen_tokenizer_dir(base / name):
                yield "qwen", base / name
        for name in T5_DIR_NAMES:
            if is_t5_tokenizer_dir(base / name):
                yield "t5", base / name


def _hf_cache_candidates():
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" /
                                                                       "huggingface")) / "hub")
    for pattern, kind in (("models--Qwen--Qwen3-0.6B*", "qwen"), ("models--google--t5-v1_1-*", "t5"),
                          ("models--google--t5-*", "t5")):
        for repo in sorted(hub.glob(pattern)):
            for snapshot in sorted((repo / "snapshots").glob("*")):
                ok = is_qwen_tokenizer_dir(snapshot) if kind == "qwen" else (
                    safe_is_file(snapshot / "spiece.model") or safe_is_file(snapshot / "tokenizer.json"))
                if ok:
                    yield kind, snapshot


def _comfy_roots_near(paths: list[Path]):
    """A ComfyUI install is usually a few levels above models/diffusion_models/x.safetensors."""
    for path in paths:
        for parent in list(Path(path).expanduser().parents)[:5]:
            if safe_is_dir(parent / "comfy" / "text_encoders"):
                yield parent


def find_tokenizers(search_dirs: list[Path], model_paths: list[Path] = (),
                    comfyui: Path | None = None, sd_scripts: Path | None = None) -> tuple[Path | None, Path | None]:
    """Return (qwen_dir, t5_dir): configured dirs first, then ComfyUI, sd-scripts and the HF cache."""
    roots = [Path(p).expanduser() for p in search_dirs if p]
    if os.environ.get("ANIMAD_TOKENIZERS"):
        roots.insert(0, Path(os.environ["ANIMAD_TOKENIZERS"]).expanduser())
    if comfyui:
        roots.append(Path(comfyui).expanduser())
    roots.extend(_comfy_roots_near(list(model_paths)))
    if sd_scripts:
        roots.append(Path(sd_scripts).expanduser())
    found = {"qwen": None, "t5": None}
    for root in roots:
        for kind, path in _candidates_in(root):
            found[kind] = found[kind] or path
    for kind, path in _hf_cache_candidates():
        found[kind] = found[kind] or path
    return found["qwen"], found["t5"]


def resolve_model_files(config, daemon, job_dir: Path, problems: Problems, job_file) -> ModelFiles | None:
    """Pick the DiT/text-encoder/VAE files for a job and find the tokenizers; record what is missing."""
    from animad.config.daemon import resolve_path

    explicit = config.model_files
    named = daemon.model_set(config.base_model) if (config.base_model or not all(
        [explicit.dit, explicit.text_encoder, explicit.vae])) else None
    if config.base_model and named is None:
        known = ", ".join(daemon.config.models) or "(none)"
        problems.error(job_file, "base_model", f"no model set '{config.base_model}' in "
                       f"{daemon.path or 'animad.yaml'}", f"use one of: {known}, or give model_files")
        return None
    chosen = {}
    for key in ("dit", "text_encoder", "vae"):
        value = getattr(explicit, key)
        if value:
            chosen[key] = (resolve_path(job_dir, value), f"model_files.{key}", job_file)
        elif named and named.get(key):
            set_name = config.base_model or daemon.config.default_model
            chosen[key] = (named[key], f"models.{set_name}.{key}", daemon.path or "animad.yaml")
        else:
            problems.error(job_file, f"model_files.{key}", "no file given and no model set provides one",
                           f"set model_files.{key} or define a model set in animad.yaml (animad init)")
    missing = False
    for key, (path, where, file) in chosen.items():
        try:
            found, readable = path.is_file(), os.access(path, os.R_OK)
        except OSError:  # a folder on the way may not be entered
            found, readable = True, False
        if not found:
            missing = True
            problems.error(file, where, f"model file not found: {path}",
                           "download it from huggingface.co/circlestone-labs/Anima (split_files/) or fix the path")
        elif not readable:
            missing = True
            problems.error(file, where, f"model file is not readable (permission denied): {path}",
                           "let the user running animad read it (chmod/chown), or copy it somewhere readable")
    if len(chosen) < 3 or missing:
        return None
    c = daemon.config
    qwen, t5 = find_tokenizers(daemon.tokenizer_dirs(), [chosen["dit"][0], chosen["text_encoder"][0]],
                               resolve_path(daemon.base, c.comfyui), resolve_path(daemon.base, c.sd_scripts))
    if qwen is None or t5 is None:
        which = " and ".join(n for n, p in (("Qwen3", qwen), ("T5", t5)) if p is None)
        problems.error(daemon.path or "animad.yaml", "tokenizers", f"{which} tokenizer files not found",
                       TOKENIZER_HELP)
        return None
    return ModelFiles(chosen["dit"][0], chosen["text_encoder"][0], chosen["vae"][0], qwen, t5)
