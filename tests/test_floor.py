"""Floor detection on generated curves with a known onset; the shortlist rules always hold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from animad.select.floor import analyze_curve

from curve_families import FAMILIES, make_curve, still_falling, tolerance

SEEDS = range(8)


def check_shortlist(analysis, epochs, losses, size, extras):
    finite = np.isfinite(losses)
    spikes = set(extras.get("spikes", []))
    usable = [(l, e) for e, l, ok in zip(epochs, losses, finite) if ok and e not in spikes]
    assert analysis.lowest_epoch == min(usable)[1]  # exactly the argmin (earliest on ties)
    assert analysis.shortlist == sorted(analysis.shortlist) and len(analysis.shortlist) <= size
    assert analysis.lowest_epoch in analysis.shortlist
    assert not set(analysis.shortlist) & (spikes | set(extras.get("nan", [])))
    assert [p.epoch for p in analysis.picks] == analysis.shortlist and all(p.reason for p in analysis.picks)
    band = 2.0 * analysis.noise
    lowest = min(usable)[0]
    assert all(p.loss <= lowest + band + 1e-12 for p in analysis.picks)
    gaps = np.diff(analysis.shortlist)
    assert all(g >= 2 for g in gaps)  # spread, not clustered


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "short"])
def test_floor_found_near_the_true_onset(family):
    for seed in SEEDS:
        epochs, losses, onset, extras = make_curve(family, seed)
        analysis = analyze_curve(epochs, losses, patience=15, shortlist_size=4)
        assert analysis.status == "floor", (family, seed, analysis.message)
        # Tolerance: max(3, 35% of the onset) epochs (the onset of an exponential is itself fuzzy).
        assert abs(analysis.floor_epoch - onset) <= tolerance(onset), (family, seed, analysis.floor_epoch, onset)
        check_shortlist(analysis, epochs, losses, 4, extras)
        assert set(extras.get("spikes", []) + extras.get("nan", [])) <= set(analysis.ignored_epochs)


def test_short_curves():
    for seed in SEEDS:
        epochs, losses, onset, extras = make_curve("short", seed)
        analysis = analyze_curve(epochs, losses, patience=3, shortlist_size=3)
        if analysis.status == "floor":
            assert abs(analysis.floor_epoch - onset) <= 3
        check_shortlist(analysis, epochs, losses, 3, extras)


def test_still_falling_has_no_floor():
    for seed in range(20):
        epochs, losses = still_falling(seed)
        analysis = analyze_curve(epochs, losses, patience=15)
        assert analysis.status == "no_floor_yet" and analysis.floor_epoch is None, analysis.message
        assert analysis.lowest_epoch >= 110 and "no floor yet" in analysis.message
        assert analysis.shortlist  # a shortlist is still given (the run may have hit max_epochs)


def test_patience_is_respected():
    epochs, losses, onset, _ = make_curve("white", 3)
    cut = onset + 5  # a candidate exists, but only ~5 epochs of patience have passed
    early = analyze_curve(epochs[:cut], losses[:cut], patience=15)
    assert early.status == "no_floor_yet" and early.floor_epoch is None
    full = analyze_curve(epochs, losses, patience=15)
    assert full.status == "floor"


def test_min_epoch_is_respected():
    epochs, losses, onset, _ = make_curve("white", 1)
    analysis = analyze_curve(epochs, losses, patience=10, min_epoch=onset + 20)
    assert analysis.floor_epoch is None or analysis.floor_epoch >= onset + 20
    assert all(e >= onset + 20 for e in analysis.shortlist)


def test_u_shape_lowest_is_at_the_bottom_and_dips_come_earlier():
    epochs, losses, onset, _ = make_curve("u_shape", 2)
    analysis = analyze_curve(epochs, losses, patience=15, shortlist_size=4)
    assert analysis.lowest_epoch < epochs[-1] - 20  # not the over-trained end
    assert all(p.epoch <= analysis.lowest_epoch or p.kind == "lowest" for p in analysis.picks)


def test_degenerate_inputs():
    assert analyze_curve([], []).status == "empty"
    assert analyze_curve([1, 2, 3], [math.nan] * 3).status == "empty"
    short = analyze_curve([1, 2, 3], [1.0, 0.5, 0.6])
    assert short.status == "too_short" and short.lowest_epoch == 2 and short.shortlist == [2]
    flat = analyze_curve(range(1, 40), [0.5] * 39, patience=10)
    assert flat.status == "floor" and flat.lowest_epoch == 1
    unsorted = analyze_curve([3, 1, 2, 5, 4, 6], [0.3, 0.9, 0.5, 0.2, 0.25, 0.21])
    assert unsorted.lowest_epoch == 5


def test_to_dict_is_json_ready():
    import json

    epochs, losses, _, _ = make_curve("nan_epoch", 0)
    json.dumps(analyze_curve(epochs, losses).to_dict(), allow_nan=False)
