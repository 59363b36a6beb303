"""Shortlist the epochs worth rendering, and say why, from the floor decision (train/floor.py).

The floor itself (cleaning, noise, candidate, confirmation) is decided in train/floor.py, the same
function stop-at-floor asks during training. Here:
5. Shortlist: the exact argmin, then the floor epoch, the earliest and then the lowest of the
   earlier local dips within 2 sigma of the lowest loss (the one-standard-error rule), at least
   `gap` epochs apart, at most `shortlist_size`, ascending, each with the reason it was picked.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from animad.train.floor import MIN_POINTS, RELATIVE_MARGIN, Floor, decide_floor, level_width, sort_curve

BAND_SIGMAS = 2.0  # a dip this close to the lowest loss is "as good, within noise"


@dataclasses.dataclass
class Pick:
    epoch: int
    loss: float
    kind: str  # "lowest", "floor" (the confirmed floor epoch) or "dip"
    reason: str


@dataclasses.dataclass
class FloorAnalysis:
    status: str  # "floor", "no_floor_yet", "too_short" or "empty"
    floor_epoch: int | None
    candidate_epoch: int | None
    lowest_epoch: int | None
    shortlist: list[int]
    picks: list[Pick]
    noise: float
    epochs: list[int]  # every epoch given, ascending; the ones left out are in ignored_epochs
    losses: list[float]
    smoothed: list[float]
    ignored_epochs: list[int]
    message: str

    def to_dict(self) -> dict:
        """Given the analysis, return a JSON-ready dict (non-finite losses become None)."""
        out = dataclasses.asdict(self)
        out["losses"] = [value if math.isfinite(value) else None for value in self.losses]
        out["smoothed"] = [value if math.isfinite(value) else None for value in self.smoothed]
        return out


def choose_picks(floor: Floor, size: int, min_epoch: int) -> list[Pick]:
    """Given the floor decision, return the shortlist picks in ascending epoch order.

    Preference: the lowest loss; the floor epoch; the earliest dip before the lowest that is as
    good within noise (the least-trained epoch not measurably worse: the one-standard-error rule);
    then the other such dips, lowest loss first. A pick closer than `gap` epochs to an earlier one
    is skipped, so the shortlist spreads over the run instead of clustering at its bottom.
    """
    epochs, losses = floor.epochs, floor.losses
    eligible = epochs >= min_epoch
    if size < 1 or not eligible.any():
        return []
    lowest = int(np.argmin(np.where(eligible, losses, np.inf)))  # the first on ties: the earliest epoch
    lowest_loss = float(losses[lowest])
    band = max(BAND_SIGMAS * floor.noise, RELATIVE_MARGIN * abs(lowest_loss))
    span = int(epochs[eligible][-1] - epochs[eligible][0])
    gap = max(2, math.ceil(span / (2 * size)))
    picks = [Pick(int(epochs[lowest]), lowest_loss, "lowest", f"lowest loss of the run ({lowest_loss:.5g})")]

    def add(index: int, kind: str, why: str) -> None:
        epoch, loss = int(epochs[index]), float(losses[index])
        if len(picks) < size and all(abs(epoch - pick.epoch) >= gap for pick in picks):
            picks.append(Pick(epoch, loss, kind, f"{why}, {loss - lowest_loss:.3g} above the lowest loss, "
                                                 f"within the noise band (±{band:.3g})"))

    in_band = eligible & (losses <= lowest_loss + band) & (np.arange(len(losses)) < lowest)
    if floor.floor_epoch is not None:
        index = int(np.searchsorted(epochs, floor.floor_epoch))
        if in_band[index]:
            add(index, "floor", f"floor onset at epoch {floor.floor_epoch}, where progress stopped beyond the noise")
    higher_before = losses <= np.concatenate([[np.inf], losses[:-1]])
    higher_after = losses <= np.concatenate([losses[1:], [np.inf]])
    dips = np.flatnonzero(in_band & higher_before & higher_after)
    if len(dips):
        add(int(dips[0]), "dip", f"earliest dip as good as the lowest (epoch {int(epochs[dips[0]])}; less trained)")
    for index in dips[np.argsort(losses[dips], kind="stable")]:
        add(int(index), "dip", f"earlier dip at epoch {int(epochs[index])}")
    return sorted(picks, key=lambda pick: pick.epoch)


def describe_floor(floor: Floor, picks: list[Pick], patience: int, min_epoch: int) -> str:
    """Given the floor decision and the picks, return a one-paragraph explanation for the user."""
    epochs = floor.epochs
    noise = f"noise sigma {floor.noise:.3g}, so changes under {floor.margin:.3g} do not count"
    if floor.status == "empty":
        text = "No finite loss values: nothing to analyse."
    elif floor.status == "too_short" and len(epochs) >= MIN_POINTS:
        text = f"No usable epoch at or after min_epoch {min_epoch} yet (the last is {int(epochs[-1])})."
    elif floor.status == "too_short":
        text = f"Only {len(epochs)} usable epochs: too few to tell a floor from noise."
    elif floor.status == "floor":
        text = (f"The loss stopped improving beyond its noise at epoch {floor.floor_epoch} ({noise}); the "
                f"{int(epochs[-1]) - floor.floor_epoch} epochs after it confirm the floor (patience {patience}).")
    elif floor.candidate_epoch is None or epochs[-1] - floor.candidate_epoch < patience / 2:
        text = f"The loss is still falling at the last epoch, {int(epochs[-1])} ({noise}): no floor yet."
    elif floor.trend_drop is not None:
        text = (f"The loss looks flat from epoch {floor.candidate_epoch}, but its trend over the last "
                f"{2 * patience} epochs still falls by {floor.trend_drop:.3g}, more than noise explains ({noise}): "
                "no floor yet.")
    elif epochs[-1] - floor.candidate_epoch < patience:
        text = (f"Possible floor at epoch {floor.candidate_epoch}, but only {int(epochs[-1]) - floor.candidate_epoch} "
                f"of the {patience} epochs of patience have passed ({noise}): no floor yet.")
    else:
        text = (f"Possible floor at epoch {floor.candidate_epoch}, but confirming it takes a curve of "
                f"{2 * patience} epochs (twice the patience) and this one spans {int(epochs[-1] - epochs[0])}: "
                "no floor yet.")
    if floor.ignored:
        text += " Left out: " + "; ".join(f"epoch {e} ({why})" for e, why in sorted(floor.ignored.items())) + "."
    if picks:
        text += f" Shortlisted epochs: {', '.join(str(pick.epoch) for pick in picks)}."
        if floor.status != "floor":
            text += " If the run has ended, it ended before a floor; the shortlist is still worth a look."
        text += " Low loss only shortlists: the previews decide."
    return text


def analyze_curve(epochs, losses, *, patience: int = 15, shortlist_size: int = 4, min_epoch: int = 1) -> FloorAnalysis:
    """Given a per-epoch loss curve, return the floor analysis, the shortlist and a message."""
    floor = decide_floor(epochs, losses, patience=patience, min_epoch=min_epoch)
    picks = choose_picks(floor, shortlist_size, min_epoch)
    lowest = next((pick.epoch for pick in picks if pick.kind == "lowest"), None)
    all_epochs, all_losses = sort_curve(epochs, losses)
    smoothed = np.full(len(all_epochs), math.nan)
    if len(floor.epochs):
        smoothed = np.interp(all_epochs, floor.epochs, floor.level)  # left-out epochs get the level around them
        # The running mean's window is cut short at the start, where the curve falls fastest: there
        # it would be drawn well below the curve it smooths. Show it only where its window is whole.
        half = level_width(len(floor.epochs)) // 2
        if len(floor.epochs) > 2 * half:
            smoothed[all_epochs < floor.epochs[half]] = math.nan
    return FloorAnalysis(floor.status, floor.floor_epoch, floor.candidate_epoch, lowest, [p.epoch for p in picks],
                         picks, floor.noise, [int(e) for e in all_epochs], [float(v) for v in all_losses],
                         [float(v) for v in smoothed], sorted(floor.ignored),
                         describe_floor(floor, picks, patience, min_epoch))
