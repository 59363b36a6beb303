"""Issue 20 item 3: every sentence about the floor agrees with the numbers the decision used, on every curve family."""

from __future__ import annotations

import re

import numpy as np
import pytest

from animad.select.floor_words import FloorNumbers, plot_status, verdict
from animad.select.plot import read_series
from animad.select.shortlist import analyze_curve
from curve_families import (FALLING, FALLING_AR1, FAMILIES, NEW_FAMILIES, knee_then_tail, make_curve, new_family,
                            still_falling)


def curves():
    for family in FAMILIES:
        for seed in range(3):
            epochs, losses = make_curve(family, seed)[:2]
            yield family, epochs, losses, 3 if family == "short" else 15
            yield f"{family}_cut", epochs[:len(epochs) // 2], losses[:len(losses) // 2], 15  # ended early
    for kind in FALLING:
        yield kind, *still_falling(0, kind=kind), 15
    for family in NEW_FAMILIES + FALLING_AR1:
        for seed in range(3):
            yield family, *new_family(family, seed)[:2], 15
    for length in (12, 30, 60):  # the demo's and the issue's 30-epoch shape: a knee, then a slow tail
        for seed in range(3):
            yield f"knee_then_tail_{length}", *knee_then_tail(seed, length)[:2], 4 if length == 12 else 15


@pytest.mark.parametrize("name,epochs,losses,patience", list(curves()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_sentence_agrees_with_the_numbers(name, epochs, losses, patience):
    analysis = analyze_curve(epochs, losses, patience=patience)
    numbers = FloorNumbers.from_dict(analysis.numbers)
    assert (numbers.status, numbers.floor_epoch, numbers.candidate_epoch, numbers.lowest_epoch, numbers.knee_epoch) == \
        (analysis.status, analysis.floor_epoch, analysis.candidate_epoch, analysis.lowest_epoch, analysis.knee_epoch)
    lowest = numbers.lowest_loss
    said, status = verdict(numbers), plot_status(numbers)
    # The verdict and the plot say the same thing.
    if analysis.status == "floor":
        assert said.startswith(f"The loss stopped improving around epoch {analysis.floor_epoch}")
        assert status == f"floor confirmed at epoch {analysis.floor_epoch}"
    elif "may have levelled off" in said:
        # only where the possible floor's own loss is within the noise band of the lowest
        assert numbers.candidate_loss - lowest <= numbers.band
        assert status == f"possible floor at epoch {analysis.candidate_epoch}, not confirmed"
    else:
        assert "still going down" in said and status == "no floor: still falling at the end"
        assert read_series(analysis.to_dict())["candidate"] is None  # the plot marks no possible floor either
        fell = re.search(r"it fell ([0-9.e-]+) more", said)
        if fell:
            assert float(fell.group(1)) == pytest.approx(numbers.knee_loss - lowest, rel=1e-2)
    # The trend line the account quotes never starts before the knee.
    for start, _ in re.findall(r"trend line over epochs (\d+)-(\d+)", analysis.message):
        assert int(start) >= analysis.knee_epoch, analysis.message
    # Each pick's numbers: the sigmas it quotes, "(within the noise band)" only inside the band.
    for pick in analysis.picks:
        sigmas = re.search(r"([0-9.]+) noise sigmas", pick.reason)
        if sigmas:
            assert float(sigmas.group(1)) == pytest.approx((pick.loss - lowest) / numbers.noise, abs=0.051)
        if "within the noise band" in pick.reason or "as good as the lowest within noise" in pick.reason:
            assert pick.loss - lowest <= numbers.band, pick
        if pick.kind == "candidate":
            assert pick.loss - lowest <= numbers.band, pick
    # "Try first" is within the band it names.
    first = analysis.try_first
    if first:
        assert first["band"] == pytest.approx(numbers.band) and first["above_lowest"] <= first["band"]


def test_the_issue_30_epoch_curve_no_longer_says_flat_beside_many_sigmas():
    # The issue's 30-epoch run: a possible floor 6.5 sigmas above the lowest, the loss still falling.
    rng = np.random.default_rng(30)
    epochs = np.arange(1, 31)
    losses = 1.6 * np.exp(-epochs / 2.0) + 0.25 * np.exp(-epochs / 25) + 0.6 + rng.normal(0, 0.01, 30)
    analysis = analyze_curve(epochs, losses)
    text = " ".join([analysis.message, verdict(FloorNumbers.from_dict(analysis.numbers))]
                    + [pick.reason for pick in analysis.picks])
    assert "flat within the noise" not in text and "may have levelled off" not in text
    assert "still going down" in verdict(FloorNumbers.from_dict(analysis.numbers))
