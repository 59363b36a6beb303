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
    if family == "autocorrelated":  # AR(1), phi 0.6, same marginal std
        for i in range(1, len(noise)):
            noise[i] = 0.6 * noise[i - 1] + math.sqrt(1 - 0.36) * noise[i]
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


def still_falling(seed: int, epochs: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    e = np.arange(1, epochs + 1)
    return e, 1.0 - 0.004 * e + rng.normal(0, 0.01, len(e))


def tolerance(onset: int) -> int:
    """How far a found floor may be from the true onset: the onset itself is only defined to ~tau/3."""
    return max(3, round(0.35 * onset))
