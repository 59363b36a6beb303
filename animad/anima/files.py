"""Find the model files and tokenizers a job needs, offline, and say clearly what is missing."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

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
