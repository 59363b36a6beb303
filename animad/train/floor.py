"""The loss floor: the decision the training loop asks after every epoch, and select/ builds on.

The rule (pure numpy, deterministic, about a millisecond for 500 epochs):
1. Clean: drop NaN/inf epochs and upward spikes (far above both the local median and the nearest
   ordinary epoch on each side, in units of the noise). Both are listed in `ignored`.
2. Noise: sigma is the robust spread (MAD) of the residuals around local straight lines, read over
   the later half of the curve; their lag-1 correlation says how autocorrelated the noise is.
3. Floor candidate: the earliest epoch F (>= min_epoch) whose level (running mean) is within
   `margin` of the lowest level (a wider running mean) anywhere after it. The margin is a Keras-style
   min_delta taken from the noise: one sigma plus two standard errors of the level.
4. Confirmed when `patience` epochs follow F *and* the Theil-Sen line through the last 2 * patience
   epochs falls by less than the margin plus one standard error of that fall. Autocorrelated noise
   can make a few epochs look flat, not a 2 * patience trend line. Otherwise: "no_floor_yet".

Which curve: the stable eval loss when every epoch has one, else the epoch average of the training
loss (`epoch_curve`), without the cooldown epochs that follow a confirmed floor. One rule, for the
loop's stop-at-floor and for select/ afterwards.
The shortlist (which epochs to render, and why) is select/shortlist.py's.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from animad.config.job import SelectionConfig

SPIKE_SIGMAS = 6.0  # an epoch this far above its local median (and half as far above its neighbours) is a spike
LEVEL_ERRORS = 2.0  # margin = sigma + this many standard errors of the smoothed level
TREND_ERRORS = 1.0  # the trailing trend may fall by the margin plus this many standard errors of its fall
RELATIVE_MARGIN = 1e-4  # as in ReduceLROnPlateau's default threshold: progress below 0.01% never counts
MIN_POINTS = 5  # with fewer usable epochs a floor cannot be told from noise
NOISE_POINTS = 8  # the noise is read from the later half of the curve, but from at least this many epochs
KNEE_SHARE = 0.9  # the steep descent ends where 90% of the curve's total drop is behind it
KNEE_NOISE = 3.0  # a total drop under 3 noise sigmas is no descent at all: the whole curve is tail
CURVE_SOURCES = {"eval_loss": "eval", "loss": "epoch_average"}  # epochs.jsonl key -> what that curve is
DEFAULT_SELECTION = SelectionConfig()  # job.yaml's defaults, for callers without a job (animad floor, benches)


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
    knee: int | None = None  # the first epoch after the steep descent (find_knee); the trend never starts before it
    trend_from: int | None = None  # the trend line's first epoch, when it was measured (its last is the last epoch)
    trend_allowed: float | None = None  # how far it may fall and still count as flat


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


def find_knee(epochs: np.ndarray, losses: np.ndarray, level: np.ndarray, noise: float,
              margin: float | None = None) -> int | None:
    """Given a clean curve, its level, its noise and the floor's margin, return the first epoch after its steep descent.

    The drop runs from the first epoch (clean_curve never drops the first) to the lowest level (a
    running mean, not biased low by noise as the lowest loss is). The curve read against it is a
    running median of 3, which a lone noisy epoch cannot move; it must stay within the last 10% of
    the drop from the knee to the bottom, so one early lucky epoch does not end the descent.
    The descent also ends where the level stays within `margin` (the floor's own "within noise")
    of the bottom level: when the whole drop is small against the noise, its last 10% is far below
    the noise, no epoch would qualify, and the knee would fall to the bottom (issue 20: a knee after
    the lowest epoch and one pick on the guide's own kind of curve). The earlier of the two counts.
    """
    if len(losses) == 0:
        return None
    bottom_index = int(np.argmin(level))
    drop = float(losses[0] - level[bottom_index])
    if len(losses) < 3 or drop <= KNEE_NOISE * noise:
        return int(epochs[0])
    padded = np.pad(losses, 1, mode="edge")  # edge, not reflect: the first epoch keeps its own height
    median = np.median(np.lib.stride_tricks.sliding_window_view(padded, 3), axis=1)
    threshold = losses[0] - KNEE_SHARE * drop
    worst_ahead = np.maximum.accumulate(median[: bottom_index + 1][::-1])[::-1]
    below = np.flatnonzero(worst_ahead <= threshold)
    knee = int(below[0]) if len(below) else bottom_index
    if margin is not None:
        level_ahead = np.maximum.accumulate(level[: bottom_index + 1][::-1])[::-1]
        settled = np.flatnonzero(level_ahead <= level[bottom_index] + margin)
        knee = min(knee, int(settled[0]))  # never empty: the bottom itself is within margin of itself
    return int(epochs[knee])


def measure_drop(epochs: np.ndarray, losses: np.ndarray) -> float:
    """Given a stretch of curve, return how far its Theil-Sen line falls from its first epoch to its last."""
    if len(losses) < 3:
        return 0.0
    first, second = np.triu_indices(len(losses), k=1)
    slopes = (losses[second] - losses[first]) / (epochs[second] - epochs[first])
    return -float(np.median(slopes)) * float(epochs[-1] - epochs[0])


def decide_floor(epochs, losses, *, patience: int = DEFAULT_SELECTION.patience,
                 min_epoch: int = DEFAULT_SELECTION.min_epoch) -> Floor:
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
    knee = find_knee(epochs, losses, level, noise, margin) if count else None
    if count < MIN_POINTS or epochs[-1] < min_epoch:
        status = "empty" if count == 0 else "too_short"
        return Floor(status, None, None, epochs, losses, level, noise, margin, None, ignored, knee)
    candidate = find_candidate(epochs, level, smooth_mean(filtered, 2 * width + 1), margin, min_epoch)
    # Both tests need their full length: patience epochs after the candidate, and 2 * patience
    # epochs of curve after the knee for the trend line (on fewer, a noisy start can pass for flat).
    # The line never reaches back into the steep descent, whose drop is not the tail's trend (issue
    # 20: "its trend over the last 8 epochs still falls by 0.297" where the tail fell 0.035); cut
    # short at the knee instead, it would pass a curve still falling under AR(1) noise for flat.
    trend_from = int(epochs[-1]) - 2 * patience
    if candidate is None or epochs[-1] - candidate < patience or trend_from < max(int(epochs[0]), knee):
        return Floor("no_floor_yet", None, candidate, epochs, losses, level, noise, margin, None, ignored, knee)
    # The trend over the last 2 * patience epochs, even where they reach back before the candidate:
    # a short stretch of autocorrelated noise can look flat, a line over twice the patience cannot.
    recent = epochs >= trend_from
    drop = measure_drop(epochs[recent], losses[recent])
    allowed = margin + TREND_ERRORS * noise * math.sqrt(12 * inflation / int(recent.sum()))
    status = "floor" if drop < allowed else "no_floor_yet"
    return Floor(status, candidate if status == "floor" else None, candidate, epochs, losses, level, noise, margin,
                 drop, ignored, knee, trend_from, allowed)


def floor_confirmed(epochs, losses, *, patience: int = DEFAULT_SELECTION.patience,
                    min_epoch: int = DEFAULT_SELECTION.min_epoch) -> bool:
    """Given the curve so far, return True once its floor is confirmed (what stop-at-floor asks after each epoch)."""
    return decide_floor(epochs, losses, patience=patience, min_epoch=min_epoch).status == "floor"


def epoch_curve(records: list[dict]) -> tuple[list[int], list[float], str]:
    """Given epoch records, return their epochs, the floor's losses (None is NaN) and the record key read.

    The key is "eval_loss" when every epoch has one, else "loss". All or nothing: a curve that mixed
    eval and training losses would jump between two scales.
    """
    key = "eval_loss" if records and all(r.get("eval_loss") is not None for r in records) else "loss"
    losses = [math.nan if r.get(key) is None else float(r[key]) for r in records]
    return [int(r["epoch"]) for r in records], losses, key


def cooldown_epochs(records: list[dict]) -> set[int]:
    """Given epoch records, return the epochs trained in a cooldown (their records say "cooldown": true)."""
    return {int(r["epoch"]) for r in records if r.get("cooldown")}


def floor_reached(records: list[dict], selection) -> bool:
    """Given the epoch records so far and the job's selection config, return True once the floor is confirmed.

    Cooldown epochs are left out, as select/shortlist.py leaves them out: the anneal's last drop is
    not progress that unconfirms a floor already found.
    """
    epochs, losses, _ = epoch_curve([r for r in records if not r.get("cooldown")])
    return floor_confirmed(epochs, losses, patience=selection.patience, min_epoch=selection.min_epoch)
