"""Find the loss floor of a per-epoch curve and shortlist the epochs worth rendering.

The rule, in five lines:
1. Drop NaN/inf epochs and upward outlier spikes (far above a running median, in units of the noise).
2. Estimate the curve's own noise sigma robustly (MAD of the residuals around a running median).
3. Smooth the curve lightly (to read it) and heavily (to read the level it later reaches).
4. The floor is the first epoch after which the curve never gets more than 1.5 sigma lower: from
   there on, progress is within noise. It is confirmed once `patience` epochs have followed it;
   until then the answer is "no floor yet" (never invented).
5. The shortlist is the exact argmin, the floor epoch, and earlier local dips within two sigma of the
   lowest loss, spread out, at most `shortlist_size`, ascending, each with its reason.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SPIKE_SIGMAS = 6.0  # how far above the running median (in noise sigmas) an epoch must be to be a spike
MARGIN_SIGMAS = 1.5  # improvement smaller than this (after the floor) is "within noise"
BAND_SIGMAS = 2.0  # dips within this many sigmas of the lowest loss are "as good, within noise"


@dataclasses.dataclass
class Pick:
    epoch: int
    loss: float
    kind: str  # "lowest", "floor" or "dip"
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
    epochs: list[int]
    losses: list[float]
    smoothed: list[float]
    ignored_epochs: list[int]
    message: str

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["smoothed"] = [None if not math.isfinite(v) else v for v in self.smoothed]
        out["losses"] = [None if not math.isfinite(v) else v for v in self.losses]
        return out


def running_median(values: np.ndarray, width: int) -> np.ndarray:
    half = width // 2
    return np.array([np.median(values[max(0, i - half): i + half + 1]) for i in range(len(values))])


def running_mean(values: np.ndarray, width: int) -> np.ndarray:
    half = width // 2
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    out = np.empty(len(values))
    for i in range(len(values)):
        lo, hi = max(0, i - half), min(len(values), i + half + 1)
        out[i] = (cumulative[hi] - cumulative[lo]) / (hi - lo)
    return out


def robust_std(values: np.ndarray) -> float:
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def estimate_noise(values: np.ndarray) -> float:
    """Robust noise sigma, the larger of two estimates.

    Residuals around a 5-wide running median see fast noise but miss slow, autocorrelated wander;
    residuals around a parabola through the last third of the curve (usually its flattest part)
    see the wander too.
    """
    if len(values) < 4:
        return float(np.std(values)) if len(values) > 1 else 0.0
    fast = robust_std(values - running_median(values, 5)) * 1.25  # the median absorbs part of the noise
    tail = values[-max(10, len(values) // 3):]
    x = np.arange(len(tail), dtype=float)
    fit = np.polyval(np.polyfit(x, tail, 2), x) if len(tail) >= 5 else np.full(len(tail), np.mean(tail))
    slow = robust_std(tail - fit)
    sigma = max(fast, slow)
    if sigma == 0.0:
        sigma = float(np.std(np.diff(values))) / math.sqrt(2)
    return sigma


def smoothing_width(count: int) -> int:
    width = max(3, min(15, count // 12))
    return width if width % 2 else width + 1


def find_spikes(values: np.ndarray, sigma: float) -> np.ndarray:
    """Upward outliers: far above the local median *and* above the nearest ordinary epoch on each side.

    Needing an ordinary epoch on the left keeps the steep first epochs of a falling curve from
    looking like spikes; looking past neighbouring candidates catches two spikes in a row.
    """
    count = len(values)
    if count < 5 or sigma <= 0:
        return np.zeros(count, dtype=bool)
    candidate = values - running_median(values, 7) > SPIKE_SIGMAS * sigma
    spikes = np.zeros(count, dtype=bool)
    for i in np.flatnonzero(candidate):
        left = next((values[j] for j in range(i - 1, -1, -1) if not candidate[j]), None)
        right = next((values[j] for j in range(i + 1, count) if not candidate[j]), None)
        if left is None:
            continue
        neighbours = [left] if right is None else [left, right]
        spikes[i] = values[i] - max(neighbours) > SPIKE_SIGMAS / 2 * sigma
    return spikes


def floor_onset(epochs: np.ndarray, light: np.ndarray, heavy: np.ndarray, delta: float, min_epoch: int) -> int | None:
    """The first epoch after which the curve never gets more than delta below its (lightly smoothed) value.

    The future level is read from a heavily smoothed curve: the minimum of a noisy curve is biased low
    by its noise, which would push the floor late.
    """
    future_min = np.minimum.accumulate(heavy[::-1])[::-1]
    for epoch, value, level in zip(epochs, light, future_min):
        if epoch >= min_epoch and value <= level + delta:
            return int(epoch)
    return None


def analyze_curve(epochs, losses, *, patience: int = 15, shortlist_size: int = 4, min_epoch: int = 1) -> FloorAnalysis:
    """Given a per-epoch loss curve, return the floor analysis and the shortlist."""
    epochs = [int(e) for e in epochs]
    losses = [float(v) if v is not None else math.nan for v in losses]
    order = np.argsort(epochs, kind="stable")
    all_epochs = np.array(epochs, dtype=int)[order]
    all_losses = np.array(losses, dtype=float)[order]
    finite = np.isfinite(all_losses)
    ignored = [int(e) for e in all_epochs[~finite]]
    e, y = all_epochs[finite], all_losses[finite]
    if len(e) == 0:
        return FloorAnalysis("empty", None, None, None, [], [], 0.0, list(map(int, all_epochs)),
                             list(all_losses), [], ignored, "No finite loss values: nothing to analyse.")
    spikes = find_spikes(y, estimate_noise(y))
    ignored += [int(x) for x in e[spikes]]
    e_clean, y_clean = e[~spikes], y[~spikes]
    sigma = estimate_noise(y_clean)  # again without the spikes, which inflate any estimate
    smoothed_clean = running_mean(running_median(y_clean, 3), smoothing_width(len(y_clean)))
    heavy = running_mean(running_median(y_clean, 5), max(7, patience | 1))
    smoothed = np.interp(all_epochs, e_clean, smoothed_clean) if len(e_clean) else np.full(len(all_epochs), np.nan)

    eligible = e_clean >= min_epoch
    if not eligible.any():
        eligible = np.ones(len(e_clean), dtype=bool)
    low_index = int(np.argmin(np.where(eligible, y_clean, np.inf)))
    lowest_epoch, lowest_loss = int(e_clean[low_index]), float(y_clean[low_index])

    if len(e_clean) < 5:
        status, floor_epoch, candidate = "too_short", None, None
        message = f"Only {len(e_clean)} usable epochs: too few to tell a floor from noise."
    else:
        candidate = floor_onset(e_clean, smoothed_clean, heavy, MARGIN_SIGMAS * sigma, min_epoch)
        after = int(e_clean[-1]) - candidate if candidate is not None else 0
        if candidate is not None and after >= patience:
            status, floor_epoch = "floor", candidate
            message = (f"The loss stopped improving by more than its noise (sigma {sigma:.3g}) at epoch {candidate}; "
                       f"{after} epochs after it confirm the floor (patience {patience}).")
        else:
            status, floor_epoch = "no_floor_yet", None
            if candidate is None or after < patience / 2:
                message = f"The loss was still falling at the last epochs (up to {int(e_clean[-1])}): no floor yet."
            else:
                message = (f"Possible floor at epoch {candidate}, but only {after} of the {patience} epochs of "
                           "patience have passed: no floor yet (not confirmed).")
    if ignored:
        message += f" Ignored epochs (NaN or outlier spikes): {', '.join(map(str, sorted(ignored)))}."

    picks = shortlist(e_clean, y_clean, smoothed_clean, sigma, lowest_epoch, lowest_loss, floor_epoch or candidate,
                      shortlist_size, min_epoch, status == "floor")
    if status != "floor" and picks:
        message += " The shortlist below is still worth a look."
    return FloorAnalysis(status, floor_epoch, candidate, lowest_epoch, [p.epoch for p in picks], picks, sigma,
                         list(map(int, all_epochs)), list(map(float, all_losses)), list(map(float, smoothed)),
                         sorted(set(ignored)), message)


def shortlist(epochs, losses, smoothed, sigma, lowest_epoch, lowest_loss, floor_epoch, size, min_epoch,
              confirmed) -> list[Pick]:
    """The argmin, the floor epoch and earlier dips within the noise band, spread out."""
    band = BAND_SIGMAS * sigma
    picks = [Pick(lowest_epoch, lowest_loss, "lowest", f"lowest loss of the run ({lowest_loss:.5g})")]
    span = max(1, lowest_epoch - int(epochs[0]))
    gap = max(2, math.ceil(span / (2 * max(1, size))))
    index_of = {int(ep): i for i, ep in enumerate(epochs)}

    def spaced(epoch: int) -> bool:
        return all(abs(epoch - p.epoch) >= gap for p in picks)

    if floor_epoch is not None and floor_epoch in index_of and len(picks) < size:
        loss = float(losses[index_of[floor_epoch]])
        if floor_epoch != lowest_epoch and spaced(floor_epoch) and loss <= lowest_loss + band:
            where = "where" if confirmed else "where (so far)"
            picks.append(Pick(floor_epoch, loss, "floor", f"floor onset, {where} progress stopped beyond noise; "
                              f"{loss - lowest_loss:.3g} above the lowest, within the noise band (±{band:.3g})"))
    dips = []
    for i in range(len(epochs)):
        epoch = int(epochs[i])
        if epoch >= lowest_epoch or epoch < min_epoch:
            continue
        left = losses[i - 1] if i > 0 else math.inf
        right = losses[i + 1] if i + 1 < len(losses) else math.inf
        if losses[i] <= left and losses[i] <= right and losses[i] <= lowest_loss + band:
            dips.append((float(losses[i]), epoch))
    for loss, epoch in sorted(dips):
        if len(picks) >= size:
            break
        if spaced(epoch):
            picks.append(Pick(epoch, loss, "dip", f"earlier dip at epoch {epoch}, {loss - lowest_loss:.3g} above the "
                              f"lowest loss, within the noise band (±{band:.3g}); less trained, may generalise better"))
    return sorted(picks, key=lambda p: p.epoch)


def floor_confirmed(epochs, losses, *, patience: int, min_epoch: int = 1) -> bool:
    return analyze_curve(epochs, losses, patience=patience, min_epoch=min_epoch).status == "floor"
