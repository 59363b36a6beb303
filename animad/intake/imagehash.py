"""A perceptual hash (pHash) and a colour signature in numpy, and near-duplicate groups found with them.

pHash: the image in grey at 32x32, its 2-D DCT, and one bit per low-frequency coefficient (the 8x8
corner, DC left out) saying whether it is above their median. Resizing, re-encoding as JPEG and
small colour changes move few bits; a different picture flips about half of them. dHash (adjacent
pixel differences) is cheaper but reads a flat background as all-zero bits, and anime art has many.
The hash sees grey only, so the same drawing in another colour (a recoloured outfit: a different
thing to learn) matches it; a 4x4 colour thumbnail tells those apart.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIDE = 32  # the grey thumbnail the DCT runs on
BITS_SIDE = 8  # the low-frequency corner kept: 8x8 = 64 bits
# Near-duplicate when at most this many of the 64 bits differ. Measured by `bench/check_bench.py
# --hash` on generated pictures (flat shapes on flat backgrounds, the hard case): the same picture
# resized 0.5x-2x and re-encoded as JPEG (quality 70-95) differs by 0-4 bits; 44,850 pairs of
# distinct pictures by 12 or more (mean 31). 8 sits in the gap with room on both sides.
NEAR_BITS = 8
COLOUR_SIDE = 4
# ...and when their 4x4 colour thumbnails differ by at most this much on average (0-255 a channel).
# The resized and re-encoded copies above differ by under 2; the demo's red and green circle on the
# same background (pHash 4 bits apart) by 51.
NEAR_COLOUR = 12


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2 / n)
    matrix[0] /= np.sqrt(2)
    return matrix


LOW_DCT = _dct_matrix(SIDE)[:BITS_SIDE]  # only the low-frequency rows are ever used


def fingerprint(image: Image.Image) -> tuple[int, bytes]:
    """(pHash, colour signature) of a decoded image, from one 32x32 RGB thumbnail. This is the whole
    per-image cost of the near-duplicate check (bench/check_bench.py), so it stays in Pillow's C
    code where it can: integer box reductions, one small resize, and numpy only on 32x32 values."""
    if image.mode != "RGB":
        image = image.convert("RGB")  # transparency is read as stored; only a hint of layout is wanted
    factor = min(image.size) // SIDE
    if factor > 1:
        image = image.reduce(factor)  # a box average, and much faster than resize() on a large image
    # BOX averages every pixel a thumbnail pixel covers, so fine detail and JPEG noise cancel out.
    thumb = image.resize((SIDE, SIDE), Image.Resampling.BOX)
    grey = np.asarray(thumb.convert("L"), dtype=np.float64)
    coefficients = (LOW_DCT @ grey @ LOW_DCT.T).ravel()
    low = coefficients[1:]  # the DC term is the overall brightness, not the picture's layout
    bits = np.concatenate([[False], low > np.sort(low)[len(low) // 2]])  # above the median
    colours = thumb.reduce(SIDE // COLOUR_SIDE).tobytes()
    return int.from_bytes(np.packbits(bits).tobytes(), "big"), colours


def phash(image: Image.Image) -> int:
    return fingerprint(image)[0]


def colour_signature(image: Image.Image) -> bytes:
    """The image as a 4x4 RGB thumbnail: 48 bytes, enough to see a recolour."""
    return fingerprint(image)[1]


def colour_distance(a: bytes, b: bytes) -> float:
    return float(np.abs(np.frombuffer(a, np.uint8).astype(np.int16) - np.frombuffer(b, np.uint8)).mean())


def distance(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def near_groups(hashes: list[int | None], colours: list[bytes | None], limit: int = NEAR_BITS,
                colour_limit: float = NEAR_COLOUR) -> list[list[int]]:
    """Indices grouped by near-equal hashes and colours (a chain a~b~c is one group); groups of one
    are left out.

    All pairs at once in numpy: 3,000 images are 4.5 million pairs, a fraction of a second.
    """
    known = [i for i, h in enumerate(hashes) if h is not None]
    if len(known) < 2:
        return []
    values = np.array([hashes[i] for i in known], dtype=np.uint64)
    parent = list(range(len(known)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    chunk = 1024  # rows at a time: bounds the pair matrix to chunk x n (8 MB for 1,024 x 1,000)
    for start in range(0, len(values), chunk):
        block = np.bitwise_count(values[start:start + chunk, None] ^ values[None, :])
        rows, cols = np.nonzero(block <= limit)
        for row, col in zip(rows.tolist(), cols.tolist()):
            a, b = start + row, col
            if a < b and colour_distance(colours[known[a]], colours[known[b]]) <= colour_limit:
                parent[root(b)] = root(a)
    groups: dict[int, list[int]] = {}
    for i in range(len(known)):
        groups.setdefault(root(i), []).append(known[i])
    return [members for members in groups.values() if len(members) > 1]
