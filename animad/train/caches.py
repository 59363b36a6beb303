"""On-disk caches for VAE latents and text embeddings, keyed by content and model, and filling them.

A cache entry's name is a hash of everything that determines it (image bytes, bucket size, the VAE
file, the crop rule; or caption text, the text encoder and tokenizer files), so the same images and
model seen again by any job reuse it, and a changed image or model can never hit a stale entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save

from animad.anima.text import TextEmbedding
from animad.fsutil import file_sha256, write_atomic
from animad.intake.dataset import Dataset
from animad.train.buckets import load_image

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
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))
        except Exception:  # a torn or damaged entry is simply recomputed
            return None

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        # Bytes through write_atomic so a full disk is an OSError (ENOSPC) and leaves no temp file;
        # no fsync: a torn entry is detected on read and recomputed.
        data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
        write_atomic(self.path(key), data, durable=False)


@dataclasses.dataclass
class LatentEntry:
    latents: torch.Tensor  # (16, h, w) fp32, normalised
    flipped: torch.Tensor | None  # latents of the mirrored image, when flip augmentation is on
    mask: torch.Tensor | None  # (1, h, w) alpha at latent resolution, when alpha_mask is on


def latent_key(item, size, vae_hash: str, flip: bool, alpha: bool) -> str:
    # Transparent pixels are composited on white unless the alpha is a loss mask (they were black
    # before): those entries get a new key so an old cache is not reused; every other entry keeps its key.
    composite = ["on-white"] if getattr(item, "transparent", False) and not alpha else []
    return entry_key("latent", item.sha256, size[0], size[1], vae_hash, "centre-crop-lanczos", flip, alpha,
                     *composite)


def cache_latents(dataset: Dataset, buckets, vae_loader, vae_hash: str, cache: TensorCache,
                  on_item=None) -> list[LatentEntry]:
    """Latents for every item, from the cache when possible; the VAE is only loaded if something is missing."""
    entries: list[LatentEntry | None] = [None] * len(dataset.items)
    missing = []
    for index, item in enumerate(dataset.items):
        subset = dataset.subsets[item.subset]
        key = latent_key(item, buckets[index], vae_hash, subset.flip, subset.alpha_mask)
        found = cache.get(key)
        if found is not None:
            entries[index] = LatentEntry(found["latents"], found.get("flipped"), found.get("mask"))
        else:
            missing.append((index, key))
    if missing:
        vae = vae_loader()
        for done, (index, key) in enumerate(missing):
            item = dataset.items[index]
            subset = dataset.subsets[item.subset]
            pixels, alpha = load_image(dataset.path(item), buckets[index], subset.alpha_mask)
            batch = torch.stack([pixels, pixels.flip(-1)]) if subset.flip else pixels[None]
            latents = vae.encode(batch)
            tensors = {"latents": latents[0]}
            if subset.flip:
                tensors["flipped"] = latents[1]
            if subset.alpha_mask:
                if alpha is None:
                    alpha = torch.ones(1, pixels.shape[1], pixels.shape[2])
                tensors["mask"] = F.adaptive_avg_pool2d(alpha, latents.shape[-2:])
            cache.put(key, tensors)
            entries[index] = LatentEntry(tensors["latents"], tensors.get("flipped"), tensors.get("mask"))
            if on_item:
                on_item(done + 1, len(missing))
        del vae
    return entries


def text_key(caption: str, te_hash: str, tokenizer_hash: str) -> str:
    return entry_key("text", caption, te_hash, tokenizer_hash)


def cache_texts(captions: list[str], encoder_loader, te_hash: str, tokenizer_hash: str,
                cache: TensorCache, batch_size: int = 16) -> dict[str, TextEmbedding]:
    """Embeddings for each distinct caption (always including the empty prompt)."""
    unique = sorted(set(captions) | {""})
    out: dict[str, TextEmbedding] = {}
    missing = []
    for caption in unique:
        found = cache.get(text_key(caption, te_hash, tokenizer_hash))
        if found is not None:
            out[caption] = TextEmbedding.from_tensors(found)
        else:
            missing.append(caption)
    if missing:
        encoder = encoder_loader()
        with torch.no_grad():
            for start in range(0, len(missing), batch_size):
                chunk = missing[start:start + batch_size]
                for caption, emb in zip(chunk, encoder.encode(chunk)):
                    tensors = emb.to_tensors()
                    cache.put(text_key(caption, te_hash, tokenizer_hash), tensors)
                    out[caption] = TextEmbedding.from_tensors(tensors)
    return out

