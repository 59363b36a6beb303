"""On-disk caches for VAE latents and text embeddings, keyed by content and model.

A cache entry's name is a hash of everything that determines it (image bytes, bucket size, the VAE
file, the crop rule; or caption text, the text encoder and tokenizer files), so the same images and
model seen again by any job reuse it, and a changed image or model can never hit a stale entry.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from animad.fsutil import file_sha256

CACHE_VERSION = "1"  # bump when the way entries are computed changes


def model_fingerprint(path: Path, cache_dir: Path) -> str:
    """sha256 of a model file, computed once per (path, size, mtime) and remembered in the cache dir."""
    path = Path(path).resolve()
    stat = path.stat()
    index_file = Path(cache_dir) / "model_hashes.json"
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = {}
    if key not in index:
        index[key] = file_sha256(path)
        from animad.fsutil import write_atomic

        write_atomic(index_file, json.dumps(index, indent=1).encode())
    return index[key]


def dir_fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(directory).iterdir()):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def entry_key(*parts) -> str:
    return hashlib.sha256("|".join([CACHE_VERSION, *map(str, parts)]).encode()).hexdigest()[:40]


class TensorCache:
    """A folder of small safetensors files, two-level fanned out; writes are atomic."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))
        except Exception:  # a torn or damaged entry is simply recomputed
            return None

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save

        from animad.fsutil import write_atomic

        # Bytes through write_atomic so a full disk is an OSError (ENOSPC) and leaves no temp file;
        # no fsync: a torn entry is detected on read and recomputed.
        data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
        write_atomic(self.path(key), data, durable=False)
