"""Generated loss curves with a known floor onset, shared by tests/test_floor.py and bench/floor_accuracy.py.

The true onset of a decay a*exp(-e/tau) + c with noise sigma is the first epoch whose remaining drop
a*exp(-e/tau) is below sigma: from there on, further progress is smaller than the noise.
"""

from __future__ import annotations

import math

import numpy as np

FAMILIES = ("white", "autocorrelated", "u_shape", "spikes", "nan_epoch", "short", "long")


def true_onset(a: float, tau: float, sigma: float) -> int:
    return math.ceil(tau * math.log(a / sigma))


def make_curve(family: str, seed: int) -> tuple[np.ndarray, np.ndarray, int, dict]:
    """(epochs, losses, true_onset, extras) for one random curve of a family."""
    rng = np.random.default_rng(seed)
    a, c, sigma = 1.0, 0.3, 0.01
    if family == "short":
        epochs, tau, sigma = np.arange(1, 11), 1.0, 0.02
    elif family == "long":
        tau = rng.uniform(30, 70)
        epochs = np.arange(1, 501)
    else:
        tau = rng.uniform(6, 16)
        epochs = np.arange(1, 121)
    onset = true_onset(a, tau, sigma)
    losses = a * np.exp(-epochs / tau) + c
    noise = rng.normal(0, sigma, len(epochs))
    extras: dict = {}
    if family == "autocorrelated":
        noise = autocorrelate(noise)
    if family == "u_shape":  # over-training: the curve rises again after the bottom
        losses = losses + 0.0005 * np.maximum(0, epochs - onset - 10) ** 1.5
    losses = losses + noise
    if family == "spikes":
        spikes = rng.choice(np.arange(onset // 2, len(epochs)), 3, replace=False)
        losses[spikes] *= 5
        extras["spikes"] = [int(epochs[s]) for s in spikes]
    if family == "nan_epoch":
        bad = int(rng.integers(onset // 2, len(epochs)))
        losses[bad] = np.nan
        extras["nan"] = [int(epochs[bad])]
    return epochs, losses, onset, extras


def autocorrelate(noise: np.ndarray, phi: float = 0.6) -> np.ndarray:
    """Given white noise, return AR(1) noise with the same marginal std (each epoch leans on the one before)."""
    out = noise.copy()
    for i in range(1, len(out)):
        out[i] = phi * out[i - 1] + math.sqrt(1 - phi * phi) * out[i]
    return out


# Curves that are still clearly falling at their end: every 15 epochs (the default patience) they
# drop by at least 3 noise sigmas. A floor reported on one of these is a false floor.
FALLING = ("linear_white", "linear_ar1", "slow_exp_white", "slow_exp_ar1")


def still_falling(seed: int, epochs: int = 120, kind: str = "linear_white") -> tuple[np.ndarray, np.ndarray]:
    """(epochs, losses) of a curve still falling at its end: a line (6 sigma per 15 epochs) or a slow decay."""
    rng = np.random.default_rng(seed)
    e = np.arange(1, epochs + 1)
    shape, noise_kind = kind.rsplit("_", 1)
    if shape == "linear":
        clean = 1.0 - 0.004 * e
    else:  # tau 60-100 over 120 epochs: still 3.4 sigma or more per 15 epochs at the end
        clean = np.exp(-e / rng.uniform(60, 100)) + 0.3
    noise = rng.normal(0, 0.01, len(e))
    return e, clean + (autocorrelate(noise) if noise_kind == "ar1" else noise)


def tolerance(onset: int) -> int:
    """How far a found floor may be from the true onset: the onset itself is only defined to ~tau/3."""
    return max(3, round(0.35 * onset))


def knee_then_tail(seed: int, epochs: int = 30) -> tuple[np.ndarray, np.ndarray, int]:
    """(epochs, losses, knee) of a curve like a real small run's: a steep fall, then a quiet tail still falling slowly.

    A fast decay (tau 1.5-2.5) carries most of the drop; a slow one (tau 15-25, a fifth of the
    drop) keeps the tail falling to the end, so that no earlier epoch is within noise of the
    lowest. The knee returned is where the curve has 90% of its drop over the run behind it,
    computed without noise.
    """
    rng = np.random.default_rng(seed)
    e = np.arange(1, epochs + 1)
    fast, slow = rng.uniform(1.5, 2.5), rng.uniform(15, 25)
    clean = 0.8 * np.exp(-e / fast) + 0.16 * np.exp(-e / slow) + 0.3
    knee = int(e[np.flatnonzero(clean <= clean[0] - 0.9 * (clean[0] - clean[-1]))[0]])
    return e, clean + rng.normal(0, 0.003, len(e)), knee


def with_cooldown(epochs: np.ndarray, losses: np.ndarray, floor_at: int, count: int,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Given a curve cut at the epoch its floor was confirmed, return it with `count` cooldown epochs
    appended, whose loss sinks a little as the LR anneals to zero (as a warmup-stable-decay run's does)."""
    rng = np.random.default_rng(seed)
    kept = epochs <= floor_at
    base = float(np.median(losses[kept][-10:]))
    extra = np.arange(floor_at + 1, floor_at + count + 1)
    sink = base - 0.02 * (np.arange(1, count + 1) / count) ** 0.5 + rng.normal(0, 0.002, count)
    return np.concatenate([epochs[kept], extra]), np.concatenate([losses[kept], sink]), [int(e) for e in extra]


# Issue 20's shapes: the guide's own kind of curve (a small drop against its noise, the minimum
# late), slow 200-epoch curves, and curves still falling under strongly autocorrelated noise.
# Each returns (epochs, losses, clean, sigma): the noiseless curve and the noise's std say where
# the descent is and how wide the noise band around the lowest loss truly is.
NEW_FAMILIES = ("guide_like", "slow_200_white", "slow_200_ar1")
FALLING_AR1 = ("falling_ar1_80", "falling_ar1_120")


def new_family(family: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(epochs, losses, clean, sigma) of one random curve of a NEW_FAMILIES or FALLING_AR1 family."""
    rng = np.random.default_rng(seed)
    if family == "guide_like":
        # A floor near 0.1, a total drop of 3-5 noise sigmas, and a last slow drift (half a sigma
        # over the run) that puts the minimum late, as the guide's epoch 179 of 200.
        e = np.arange(1, 201)
        sigma = 0.006
        clean = 0.1 + rng.uniform(3, 5) * sigma * np.exp(-e / rng.uniform(10, 30)) - 0.5 * sigma * e / 200
        noise = rng.normal(0, sigma, len(e))
        return e, clean + noise, clean, sigma
    if family.startswith("slow_200"):
        e = np.arange(1, 201)
        sigma = 0.01
        clean = 0.2 * np.exp(-e / rng.uniform(25, 50)) + 0.3
        noise = rng.normal(0, sigma, len(e))
        if family.endswith("ar1"):
            noise = autocorrelate(noise, rng.uniform(0.4, 0.7))
        return e, clean + noise, clean, sigma
    if family.startswith("falling_ar1"):
        # Still falling at the end, by 2-4 noise sigmas per 15 epochs (the default patience): slow
        # enough that AR(1) noise (rho 0.4-0.7) can make a stretch of it look flat.
        count = int(family.rsplit("_", 1)[1])
        e = np.arange(1, count + 1)
        sigma, tau = 0.01, rng.uniform(0.5 * count, count)
        end_drop = rng.uniform(2, 4) * sigma  # over the last 15 epochs
        scale = end_drop / (math.exp(-(count - 15) / tau) - math.exp(-count / tau))
        clean = scale * np.exp(-e / tau) + 0.3
        noise = autocorrelate(rng.normal(0, sigma, len(e)), rng.uniform(0.4, 0.7))
        return e, clean + noise, clean, sigma
    raise ValueError(family)
