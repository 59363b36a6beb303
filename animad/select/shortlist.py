"""Find the loss floor of a per-epoch curve and shortlist the epochs worth rendering.

The rule (pure numpy, deterministic, about a millisecond for 500 epochs):
1. Clean: drop NaN/inf epochs and upward spikes (far above both the local median and the nearest
   ordinary epoch on each side, in units of the noise). Both are listed in `ignored_epochs`.
2. Noise: sigma is the robust spread (MAD) of the residuals around local straight lines, read over
   the later half of the curve; their lag-1 correlation says how autocorrelated the noise is.
3. Floor candidate: the earliest epoch F (>= min_epoch) whose level (running mean) is within
   `margin` of the lowest level (a wider running mean) anywhere after it. The margin is a Keras-style
   min_delta taken from the noise: one sigma plus two standard errors of the level.
4. Confirmed when `patience` epochs follow F *and* the Theil-Sen line through the last 2 * patience
   epochs falls by less than the margin plus one standard error of that fall. Autocorrelated noise
   can make a few epochs look flat, not a 2 * patience trend line. Otherwise: "no_floor_yet".
5. Shortlist: the exact argmin, then the floor epoch, the earliest and then the lowest of the
   earlier local dips within 2 sigma of the lowest loss (the one-standard-error rule), at least
   `gap` epochs apart, at most `shortlist_size`, ascending, each with the reason it was picked.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SPIKE_SIGMAS = 6.0  # an epoch this far above its local median (and half as far above its neighbours) is a spike
LEVEL_ERRORS = 2.0  # margin = sigma + this many standard errors of the smoothed level
TREND_ERRORS = 1.0  # the trailing trend may fall by the margin plus this many standard errors of its fall
BAND_SIGMAS = 2.0  # a dip this close to the lowest loss is "as good, within noise"
RELATIVE_MARGIN = 1e-4  # as in ReduceLROnPlateau's default threshold: progress below 0.01% never counts
MIN_POINTS = 5  # with fewer usable epochs a floor cannot be told from noise
NOISE_POINTS = 8  # the noise is read from the later half of the curve, but from at least this many epochs


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


@dataclasses.dataclass
class Floor:
    """The decision alone: what the training engine needs after every epoch."""

    status: str
    floor_epoch: int | None
    candidate_epoch: int | None
    epochs: np.ndarray  # the clean curve (ignored epochs removed)
    losses: np.ndarray
    level: np.ndarray
    noise: float
    margin: float
    trend_drop: float | None  # how far the trailing trend line falls, when it was measured
    ignored: dict[int, str]  # epoch -> why it was left out


def sort_curve(epochs, losses) -> tuple[np.ndarray, np.ndarray]:
    """Given epochs and losses in any order, return both sorted by epoch (a repeated epoch keeps its last value)."""
    by_epoch = {}
    for epoch, loss in zip(epochs, losses):
        by_epoch[int(epoch)] = math.nan if loss is None else float(loss)
    ordered = sorted(by_epoch)
    return np.array(ordered, dtype=int), np.array([by_epoch[e] for e in ordered], dtype=float)


def smooth_median(values: np.ndarray, width: int) -> np.ndarray:
    """Given values, return their running median over `width` points.

    The ends are padded by mirroring, not by repeating the end value: repeated, a spike in the last
    epoch would fill most of its own window and hide.
    """
    if len(values) < 3 or width < 3:
        return values.copy()
    half = width // 2
    padded = np.pad(values, half, mode="reflect")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)


def smooth_mean(values: np.ndarray, width: int) -> np.ndarray:
    """Given values, return their centred running mean over `width` points (shrinking at the ends)."""
    half = width // 2
    total = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(len(values))
    start, stop = np.maximum(index - half, 0), np.minimum(index + half + 1, len(values))
    return (total[stop] - total[start]) / (stop - start)


def fit_local_lines(x: np.ndarray, y: np.ndarray, width: int) -> np.ndarray:
    """Given a curve, return at each point the value of a straight line fitted to the `width` points around it.

    Near the ends the window keeps its size and shifts inwards, so that the end points are not
    fitted by a window of two or three points that would swallow their noise.
    """
    count = len(y)
    width = min(width, count)
    if width < 2:
        return y.astype(float).copy()
    start = np.clip(np.arange(count) - width // 2, 0, count - width)
    stop = start + width
    x = x.astype(float) - float(x[0])  # small numbers keep the running sums exact

    def window_sum(values):
        total = np.concatenate([[0.0], np.cumsum(values)])
        return total[stop] - total[start]

    sum_x, sum_y = window_sum(x), window_sum(y)
    sum_xx, sum_xy = window_sum(x * x), window_sum(x * y)
    spread = sum_xx - sum_x * sum_x / width
    slope = np.divide(sum_xy - sum_x * sum_y / width, spread, out=np.zeros(count), where=spread > 0)
    return sum_y / width + slope * (x - sum_x / width)


def robust_std(values: np.ndarray) -> float:
    """Given values, return a standard deviation that ignores outliers (1.4826 * MAD)."""
    if len(values) == 0:
        return 0.0
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def estimate_noise(epochs: np.ndarray, losses: np.ndarray) -> tuple[float, float]:
    """Given a finite curve, return the std of its epoch-to-epoch noise and the noise's lag-1 correlation.

    The lines are 15 epochs wide, wide enough to leave slow, autocorrelated wander in the
    residuals. The residuals are read over the later half only: the first epochs of a training
    curve bend too sharply for a line, and their misfit would pass for noise.
    """
    count = len(losses)
    if count < 3:
        return float(np.std(losses)) if count else 0.0, 0.0
    width = int(np.clip(count // 2, 3, 15))
    start = min(count // 2, max(0, count - NOISE_POINTS))
    residuals = (losses - fit_local_lines(epochs, losses, width))[start:]
    sigma = robust_std(residuals) * math.sqrt(width / (width - 2))  # each line absorbs about two points' worth
    if sigma == 0.0:  # a run of identical values: fall back to the plain spread of the steps
        return float(np.std(np.diff(losses))) / math.sqrt(2), 0.0
    centred = np.clip(residuals - np.median(residuals), -3 * sigma, 3 * sigma)  # one outlier must not set it
    correlation = float(np.sum(centred[1:] * centred[:-1]) / max(float(np.sum(centred * centred)), 1e-300))
    return sigma, float(np.clip(correlation, 0.0, 0.9))


def find_spikes(losses: np.ndarray, sigma: float) -> np.ndarray:
    """Given a finite curve and its noise, return a mask of its upward outlier epochs.

    A spike must stand far above its local median *and* above the nearest ordinary epoch on each
    side. Needing an ordinary epoch to its left keeps the steep first epochs of a falling curve
    (far above the median of what follows) from counting as spikes.
    """
    count = len(losses)
    spikes = np.zeros(count, dtype=bool)
    if count < MIN_POINTS or sigma <= 0:
        return spikes
    local = smooth_median(losses, 7)
    threshold = np.maximum(SPIKE_SIGMAS * sigma, 0.01 * np.abs(local))  # tiny bumps on a noiseless curve are not spikes
    suspect = losses - local > threshold
    ordinary = np.flatnonzero(~suspect)
    for index in np.flatnonzero(suspect):
        left, right = ordinary[ordinary < index], ordinary[ordinary > index]
        if len(left) == 0:
            continue
        neighbours = [losses[left[-1]]] + ([losses[right[0]]] if len(right) else [])
        spikes[index] = losses[index] - max(neighbours) > threshold[index] / 2
    return spikes


def clean_curve(epochs, losses) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Given a raw curve, return its finite, spike-free epochs and losses, and why each other epoch was left out."""
    epochs, losses = sort_curve(epochs, losses)
    finite = np.isfinite(losses)
    ignored = {int(e): "not a finite number" for e in epochs[~finite]}
    epochs, losses = epochs[finite], losses[finite]
    spikes = find_spikes(losses, estimate_noise(epochs, losses)[0])
    ignored.update({int(e): "an outlier spike" for e in epochs[spikes]})
    return epochs[~spikes], losses[~spikes], ignored


def level_width(count: int) -> int:
    """Given the number of epochs, return the odd width of the level's running mean (wider on long curves)."""
    return int(np.clip(count // 8, 5, 61)) | 1


def find_candidate(epochs: np.ndarray, level: np.ndarray, later: np.ndarray, margin: float,
                   min_epoch: int) -> int | None:
    """Given the level and a wider-smoothed copy of it, return the first epoch (>= min_epoch) after
    which the copy never gets more than margin below the level there; None if there is none.

    The lowest point ahead is read from the wider copy because the minimum of a noisy curve is
    biased low by its noise, which would push the floor late.
    """
    lowest_ahead = np.minimum.accumulate(later[::-1])[::-1]
    settled = np.flatnonzero((level - lowest_ahead <= margin) & (epochs >= min_epoch))
    return int(epochs[settled[0]]) if len(settled) else None


def measure_drop(epochs: np.ndarray, losses: np.ndarray) -> float:
    """Given a stretch of curve, return how far its Theil-Sen line falls from its first epoch to its last."""
    if len(losses) < 3:
        return 0.0
    first, second = np.triu_indices(len(losses), k=1)
    slopes = (losses[second] - losses[first]) / (epochs[second] - epochs[first])
    return -float(np.median(slopes)) * float(epochs[-1] - epochs[0])


def decide_floor(epochs, losses, *, patience: int = 15, min_epoch: int = 1) -> Floor:
    """Given a per-epoch curve, return the floor decision alone (no shortlist, no wording)."""
    epochs, losses, ignored = clean_curve(epochs, losses)
    count = len(losses)
    noise, correlation = estimate_noise(epochs, losses)  # again, without the spikes that inflate it
    inflation = (1 + correlation) / (1 - correlation)  # how much autocorrelation widens a mean's error
    width = level_width(count)
    filtered = smooth_median(losses, 3)  # a lone moderate outlier must not drag a running mean
    level = smooth_mean(filtered, width)
    scale = float(np.median(np.abs(losses))) if count else 0.0
    margin = max(noise * (1 + LEVEL_ERRORS * math.sqrt(inflation / width)), RELATIVE_MARGIN * scale)
    if count < MIN_POINTS or epochs[-1] < min_epoch:
        status = "empty" if count == 0 else "too_short"
        return Floor(status, None, None, epochs, losses, level, noise, margin, None, ignored)
    candidate = find_candidate(epochs, level, smooth_mean(filtered, 2 * width + 1), margin, min_epoch)
    # Both tests need their full length: patience epochs after the candidate, and 2 * patience
    # epochs of curve for the trend line (on fewer, a noisy start can pass for flat).
    if candidate is None or epochs[-1] - candidate < patience or epochs[-1] - epochs[0] < 2 * patience:
        return Floor("no_floor_yet", None, candidate, epochs, losses, level, noise, margin, None, ignored)
    # The trend over the last 2 * patience epochs, even where they reach back before the candidate:
    # a short stretch of autocorrelated noise can look flat, a line over twice the patience cannot.
    recent = epochs >= epochs[-1] - 2 * patience
    drop = measure_drop(epochs[recent], losses[recent])
    allowed = margin + TREND_ERRORS * noise * math.sqrt(12 * inflation / int(recent.sum()))
    status = "floor" if drop < allowed else "no_floor_yet"
    return Floor(status, candidate if status == "floor" else None, candidate, epochs, losses, level, noise, margin,
                 drop, ignored)


def floor_confirmed(epochs, losses, *, patience: int = 15, min_epoch: int = 1) -> bool:
    """Given the curve so far, return True once its floor is confirmed (what stop-at-floor asks after each epoch)."""
    return decide_floor(epochs, losses, patience=patience, min_epoch=min_epoch).status == "floor"


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
