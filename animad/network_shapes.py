"""Each network kind's tensors on one linear: their keys in a file and their shapes, so its size.

The memory model (anima/memory.py), the disk and VRAM checks (intake/), the help texts (config/) and
the modules themselves (train/networks/) all need it before anything is built, and the layers below
train/ may not import it, so it lives here, torch-free. The rules are sd-scripts' networks/lokr.py
and networks/loha.py (PR #2275) and LyCORIS', so a file of the same dim/alpha/factor has the same
tensors in all three:

* lora: down (dim x in) and up (out x dim).
* lokr: out = a*b and in = c*d split by `factorization`; w1 is the full (a x c) matrix; w2 is
  (b x d), either full (`lokr_w2`) when dim >= max(b, d) / 2, or low-rank
  `lokr_w2_a` (b x dim) @ `lokr_w2_b` (dim x d). A huge dim (sd-scripts configs say 100000) asks
  for the full w2.
* loha: two low-rank pairs, hada_w1_a (out x dim) @ hada_w1_b (dim x in) and the same for w2.
"""

from __future__ import annotations

KINDS = ("lora", "lokr", "loha")
TITLES = {"lora": "LoRA", "lokr": "LoKr", "loha": "LoHa"}  # as people write them


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(m, n) with m * n == dimension and m <= n, as LyCORIS and sd-scripts split a LoKr side.

    factor > 0 dividing the dimension: (factor, dimension / factor), smaller first. Otherwise the
    divisor pair nearest the square root, walking divisors up from 1 and never past `factor` when it
    is positive (-1: no limit, the balanced split: 2048 -> (32, 64), 1024 -> (32, 32))."""
    if factor > 0 and dimension % factor == 0:
        return min(factor, dimension // factor), max(factor, dimension // factor)
    limit = dimension if factor < 0 else factor
    m, n = 1, dimension
    while m < n:
        candidate = m + 1
        while dimension % candidate:
            candidate += 1
        if candidate > limit:
            break
        # The reference walk takes this pair even when it crosses the square root, then orders it.
        m, n = candidate, dimension // candidate
    return min(m, n), max(m, n)


def lokr_shapes(out_features: int, in_features: int, dim: int, factor: int) -> dict[str, tuple[int, ...]]:
    """The LoKr tensors of one linear, by their key in the file."""
    in_m, in_n = factorization(in_features, factor)
    out_l, out_k = factorization(out_features, factor)
    shapes = {"lokr_w1": (out_l, in_m)}
    if lokr_full_w2(out_features, in_features, dim, factor):
        shapes["lokr_w2"] = (out_k, in_n)
    else:
        shapes.update(lokr_w2_a=(out_k, dim), lokr_w2_b=(dim, in_n))
    return shapes


def lokr_full_w2(out_features: int, in_features: int, dim: int, factor: int) -> bool:
    """Whether w2 is one full matrix (dim at least half its larger side), which then trains at scale 1."""
    _, in_n = factorization(in_features, factor)
    _, out_k = factorization(out_features, factor)
    return dim >= max(out_k, in_n) / 2


def shapes(kind: str, out_features: int, in_features: int, dim: int, factor: int = -1) -> dict[str, tuple[int, ...]]:
    """The trained tensors a kind puts on an (out x in) linear, by key (the file's part after the module name)."""
    if kind == "lora":
        return {"lora_down.weight": (dim, in_features), "lora_up.weight": (out_features, dim)}
    if kind == "lokr":
        return lokr_shapes(out_features, in_features, dim, factor)
    if kind == "loha":
        return {"hada_w1_a": (out_features, dim), "hada_w1_b": (dim, in_features),
                "hada_w2_a": (out_features, dim), "hada_w2_b": (dim, in_features)}
    raise ValueError(f"unknown network kind {kind!r}; one of {', '.join(KINDS)}")


# A key every module of the kind has: it tells a file's kind.
MARKERS = {"lora": "lora_down.weight", "lokr": "lokr_w1", "loha": "hada_w1_a"}


def file_kind(keys) -> str | None:
    """The kind of a network file from its keys (sd-scripts names, `<module>.<part>`); None for none
    of ours. A file mixing kinds is named by the first found (build_network refuses what it cannot use)."""
    parts = {key.split(".", 1)[1] for key in keys if "." in key}
    return next((kind for kind in KINDS if MARKERS[kind] in parts), None)


def parameter_count(kind: str, out_features: int, in_features: int, dim: int, factor: int = -1) -> int:
    """Trained values on one linear (the `.alpha` scalar each module also stores is not counted)."""
    total = 0
    for shape in shapes(kind, out_features, in_features, dim, factor).values():
        count = 1
        for side in shape:
            count *= side
        total += count
    return total


def file_bytes(kind: str, linear_shapes, dim: int, factor: int, bytes_per_value: int) -> int:
    """Tensor bytes of a network file over these (out, in) linears: the values plus one alpha each
    (the safetensors header, a few hundred bytes a module, is not counted)."""
    linear_shapes = list(linear_shapes)
    values = sum(parameter_count(kind, out, inp, dim, factor) for out, inp in linear_shapes)
    return (values + len(linear_shapes)) * bytes_per_value
