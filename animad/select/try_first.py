"""Which shortlisted epoch to render first, and the order of the rest, with the reason in words.

The rule (the guide's own reasoning, the one-standard-error rule): start with the earliest
shortlisted epoch whose loss is within the noise of the lowest (as good within noise, and less
trained, so it often generalises better); then the lowest-loss epoch; then the annealed one (the
last cooldown epoch); then the rest by loss. "Within the noise" is the same band the pick cards
say "(within the noise band)" for: BAND_SIGMAS noise sigmas above the lowest loss.

Everything is computed from the picks and the noise the shortlist was built from, so the words
(`reason`, `rule`) cannot disagree with the numbers on the page.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

from animad.train.floor import RELATIVE_MARGIN

BAND_SIGMAS = 2.0  # as select/shortlist.py's: a loss this close to the lowest is "as good, within noise"
RULE = ("Start with the earliest shortlisted epoch whose loss is within the noise of the lowest (an epoch as "
        "good within noise but less trained often generalises better: the one-standard-error rule), then the "
        "lowest-loss epoch, then the annealed one, then the rest by loss.")


@dataclasses.dataclass
class TryFirst:
    epoch: int
    reason: str  # why this epoch first, with its numbers: "Try epoch N first: " + reason reads as a sentence
    order: list[int]  # every shortlisted epoch, the one to try first first
    loss: float  # the numbers the reason is written from
    lowest_epoch: int
    above_lowest: float
    band: float  # "within the noise": less than this above the lowest loss
    rule: str = RULE

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def noise_band(noise: float, lowest_loss: float) -> float:
    """Given the noise sigma and the lowest loss, return how far above the lowest still counts as within noise."""
    return max(BAND_SIGMAS * noise, RELATIVE_MARGIN * abs(lowest_loss))


def choose_try_first(picks: list[dict], noise: float) -> TryFirst | None:
    """Given the picks (dicts with epoch, loss and kind) and the noise sigma, return what to try first (None: no picks)."""
    usable = [p for p in picks if isinstance(p.get("loss"), (int, float)) and math.isfinite(p["loss"])]
    if not usable:
        return None
    lowest = min(usable, key=lambda p: (p["loss"], p["epoch"]))
    band = noise_band(noise if math.isfinite(noise) else 0.0, lowest["loss"])
    within = [p for p in usable if p["loss"] - lowest["loss"] <= band]
    first = min(within, key=lambda p: p["epoch"])
    annealed = [p for p in usable if p.get("kind") == "annealed"]
    ranked = [first, lowest] + sorted(annealed, key=lambda p: -p["epoch"])[:1]
    ranked += sorted(usable, key=lambda p: (p["loss"], p["epoch"]))
    order = list(dict.fromkeys(int(p["epoch"]) for p in ranked))
    order += [int(p["epoch"]) for p in picks if int(p["epoch"]) not in order]  # a pick without a loss goes last
    above = float(first["loss"] - lowest["loss"])
    if first is lowest:
        earlier = [p for p in usable if p["epoch"] < lowest["epoch"]]
        why = ("no earlier shortlisted epoch is within the noise of it" if earlier else
               "no shortlisted epoch comes before it")
        reason = f"the lowest loss of the run ({lowest['loss']:.5g}), and {why}."
    else:
        wobble = (f"{BAND_SIGMAS:g} times the loss's epoch-to-epoch wobble of {noise:.3g}"
                  if band == BAND_SIGMAS * noise else f"{RELATIVE_MARGIN:.2%} of the loss, more than its wobble")
        reason = (f"the earliest shortlisted epoch whose loss is within the noise of the lowest: {first['loss']:.5g}, "
                  f"{above:.3g} above epoch {lowest['epoch']}'s {lowest['loss']:.5g}, less than {band:.3g} ({wobble}). "
                  f"It is {lowest['epoch'] - first['epoch']} epochs less trained: an epoch as good within noise but "
                  "less trained often generalises better.")
    return TryFirst(int(first["epoch"]), reason, order, float(first["loss"]), int(lowest["epoch"]), above, band)


def try_first_line(try_first: dict | None) -> str:
    """Given summary.json's try_first, return the one line `animad train` and `animad status` print ('' if none)."""
    if not isinstance(try_first, dict) or "epoch" not in try_first:
        return ""
    rest = [str(e) for e in try_first.get("order") or [] if e != try_first["epoch"]]
    then = f"; then {', '.join(rest)}" if rest else ""
    return f"try epoch {try_first['epoch']} first: {try_first.get('reason', '')}".rstrip(". ") + then


def package_try_first(row: dict) -> str:
    """Given a queue row, return " (try epoch N first)" when it is done and its package names one, else ''.

    What `animad status` adds to a finished job's line: read from the package's own summary.json, so
    the status says what the page says. A missing or unreadable summary says nothing.
    """
    if row.get("status") != "done" or not row.get("outbox_dir"):
        return ""
    path = Path(row["outbox_dir"]) / "summary.json"
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return ""
    return summary_try_first(str(path), stamp)


@functools.lru_cache(maxsize=512)
def summary_try_first(path: str, stamp: int) -> str:
    # Cached by the file's mtime: the dashboard asks every 2 s for every done job; a package is written once.
    try:
        summary = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    first = summary.get("try_first") if isinstance(summary, dict) else None
    return f" (try epoch {first['epoch']} first)" if isinstance(first, dict) and "epoch" in first else ""


def package_try_first_line(package: Path) -> str:
    """Given a review package folder, return the try-first line `animad train` ends with ('' if none)."""
    try:
        summary = json.loads((Path(package) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return try_first_line(summary.get("try_first") if isinstance(summary, dict) else None)
