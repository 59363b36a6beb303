"""Floor detection on generated curves with a known onset; the shortlist rules hold on every curve.

The true onset of a decay a*exp(-e/tau) + c with noise sigma is the first epoch whose remaining
drop a*exp(-e/tau) is below sigma (tests/curve_families.py). Each test states its tolerance.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from animad.select.floor_words import FloorNumbers, plot_status, verdict
from animad.select.shortlist import KINDS, analyze_curve
from animad.train.floor import cooldown_epochs, decide_floor, find_knee, floor_confirmed, floor_reached

from curve_families import (FALLING, FALLING_AR1, FAMILIES, NEW_FAMILIES, knee_then_tail, make_curve, new_family,
                            still_falling, with_cooldown)

SEEDS = range(8)
# Tolerance |found - true onset| <= max(3, share * onset). The clean families get 25%; AR(1) noise
# wanders for several epochs at a time and the U-shape's rise moves the bottom, so they get 35%.
SHARE = {"white": 0.25, "spikes": 0.25, "nan_epoch": 0.25, "long": 0.25, "autocorrelated": 0.35, "u_shape": 0.35}


def argmin_epoch(epochs, losses, min_epoch=1) -> int:
    """Given a curve, return the epoch of its lowest finite loss at or after min_epoch (earliest on ties)."""
    losses = np.where(np.isfinite(losses) & (np.asarray(epochs) >= min_epoch), losses, np.inf)
    return int(np.asarray(epochs)[np.argmin(losses)])


def check_shortlist(analysis, epochs, losses, size, left_out=(), min_epoch=1):
    """The rules every shortlist obeys, whatever the curve."""
    assert analysis.lowest_epoch == argmin_epoch(epochs, losses, min_epoch)  # exactly the argmin
    assert analysis.shortlist == sorted(set(analysis.shortlist)) and 1 <= len(analysis.shortlist) <= size
    assert analysis.lowest_epoch in analysis.shortlist
    assert [pick.epoch for pick in analysis.picks] == analysis.shortlist
    assert all(pick.reason and pick.kind in KINDS for pick in analysis.picks)
    assert not set(analysis.shortlist) & set(left_out), "a NaN or spike epoch was picked"
    assert set(left_out) <= set(analysis.ignored_epochs)
    assert all(e >= min_epoch for e in analysis.shortlist)
    # No pick on the steep descent: every pick but the exact argmin is after the knee (the knee
    # epoch itself sits on the bend and is only taken as a floor, candidate or dip).
    descent = [e for e in analysis.shortlist if e < analysis.knee_epoch and e != analysis.lowest_epoch]
    assert not descent, "a pick on the descent"
    assert all(pick.epoch <= analysis.lowest_epoch or pick.kind == "annealed" for pick in analysis.picks)
    assert all(gap >= 2 for gap in np.diff(analysis.shortlist)), "picks clustered"


@pytest.mark.parametrize("family", ["white", "autocorrelated", "u_shape", "spikes", "nan_epoch", "long"])
def test_floor_is_found_near_the_true_onset(family):
    for seed in SEEDS:
        epochs, losses, onset, extras = make_curve(family, seed)
        analysis = analyze_curve(epochs, losses, patience=15, shortlist_size=4)
        assert analysis.status == "floor", (family, seed, analysis.message)
        tolerance = max(3, SHARE[family] * onset)
        assert abs(analysis.floor_epoch - onset) <= tolerance, (family, seed, analysis.floor_epoch, onset)
        assert analysis.floor_epoch <= epochs[-1] - 15  # patience epochs follow it
        check_shortlist(analysis, epochs, losses, 4, extras.get("spikes", []) + extras.get("nan", []))


def test_short_curves_of_ten_epochs():
    found = 0
    for seed in SEEDS:
        epochs, losses, onset, _ = make_curve("short", seed)  # onset at epoch 4
        analysis = analyze_curve(epochs, losses, patience=3, shortlist_size=3)
        if analysis.status == "floor":
            found += 1
            assert abs(analysis.floor_epoch - onset) <= 2, (seed, analysis.floor_epoch)  # tolerance: 2 epochs
        else:
            assert analysis.status == "no_floor_yet" and analysis.floor_epoch is None
        check_shortlist(analysis, epochs, losses, 3)
    assert found >= 6


def test_u_shape_floor_is_at_the_start_of_the_bottom():
    for seed in SEEDS:
        epochs, losses, onset, _ = make_curve("u_shape", seed)
        analysis = analyze_curve(epochs, losses, patience=15, shortlist_size=4)
        assert analysis.floor_epoch <= analysis.lowest_epoch  # the floor starts the bottom, before over-training
        assert analysis.lowest_epoch < epochs[-1] - 20  # not the over-trained end
        assert all(pick.epoch <= analysis.lowest_epoch for pick in analysis.picks)  # earlier dips only


@pytest.mark.parametrize("kind", FALLING)
def test_still_falling_curve_has_no_floor(kind):
    for seed in range(10):
        epochs, losses = still_falling(seed, kind=kind)
        analysis = analyze_curve(epochs, losses, patience=15)
        assert analysis.status == "no_floor_yet" and analysis.floor_epoch is None, (kind, seed, analysis.message)
        assert "no floor yet" in analysis.message and "worth a look" in analysis.message
        check_shortlist(analysis, epochs, losses, 4)  # a shortlist all the same: the run may have hit max_epochs
        assert analysis.lowest_epoch >= 100
        assert len(analysis.shortlist) >= 3, (kind, seed, analysis.shortlist)  # not the lowest alone


@pytest.mark.parametrize("kind", ["linear_ar1", "slow_exp_ar1"])
def test_autocorrelated_noise_never_stops_a_falling_run_early(kind):
    # Stop-at-floor asks after every epoch; AR(1) noise (phi 0.6) must not confirm a floor at any of them.
    for seed in range(5):
        epochs, losses = still_falling(seed, kind=kind)
        stops = [end for end in range(10, len(epochs) + 1)
                 if floor_confirmed(epochs[:end], losses[:end], patience=15, min_epoch=1)]
        assert not stops, (kind, seed, stops[:3])


def test_a_single_spike_neither_moves_the_floor_nor_is_picked():
    # A 5x epoch changes nothing beyond what losing that one epoch would; the floor stays within
    # the white family's tolerance of the true onset, max(3, 25% of the onset).
    for seed in range(5):
        epochs, losses, onset, _ = make_curve("white", seed)
        for index in (3, onset // 2, onset, onset + 10, len(epochs) - 30, len(epochs) - 1):
            spiky, dropped = losses.copy(), losses.copy()
            spiky[index] *= 5
            dropped[index] = math.nan
            with_spike = analyze_curve(epochs, spiky, patience=15)
            without = analyze_curve(epochs, dropped, patience=15)
            spike_epoch = int(epochs[index])
            assert with_spike.ignored_epochs == [spike_epoch], (seed, index, with_spike.ignored_epochs)
            assert (with_spike.floor_epoch, with_spike.shortlist) == (without.floor_epoch, without.shortlist)
            assert abs(with_spike.floor_epoch - onset) <= max(3, 0.25 * onset), (seed, index)
            check_shortlist(with_spike, epochs, spiky, 4, [spike_epoch])


def test_nan_and_infinite_epochs_are_ignored_and_reported():
    epochs, losses, _, _ = make_curve("white", 2)
    losses[[30, 60, 90]] = [math.nan, -math.inf, math.inf]
    analysis = analyze_curve(epochs, losses, patience=15)
    bad = [int(epochs[i]) for i in (30, 60, 90)]
    assert analysis.status == "floor" and analysis.ignored_epochs == bad
    check_shortlist(analysis, epochs, losses, 4, bad)
    assert "not a finite number" in analysis.message
    json.dumps(analysis.to_dict(), allow_nan=False)


def test_patience_epochs_must_follow_the_floor():
    epochs, losses, onset, _ = make_curve("white", 3)
    cut = onset + 5  # a candidate exists, but only about 5 of the 15 epochs of patience have passed
    early = analyze_curve(epochs[:cut], losses[:cut], patience=15)
    assert early.status == "no_floor_yet" and early.floor_epoch is None
    for seed in range(4):
        epochs, losses, _, _ = make_curve("white", seed)
        end = next(end for end in range(10, len(epochs) + 1)
                   if floor_confirmed(epochs[:end], losses[:end], patience=15))
        first = analyze_curve(epochs[:end], losses[:end], patience=15)
        assert first.status == "floor" and epochs[end - 1] - first.floor_epoch >= 15


def test_min_epoch_is_never_undercut():
    epochs, losses, onset, _ = make_curve("white", 1)
    start = onset + 20
    analysis = analyze_curve(epochs, losses, patience=10, min_epoch=start)
    assert analysis.floor_epoch is None or analysis.floor_epoch >= start
    assert analysis.candidate_epoch is None or analysis.candidate_epoch >= start
    check_shortlist(analysis, epochs, losses, 4, min_epoch=start)
    later = analyze_curve(epochs, losses, patience=10, min_epoch=int(epochs[-1]) + 1)
    assert later.status == "too_short" and later.shortlist == [] and later.lowest_epoch is None


def test_shortlist_spreads_over_a_long_plateau():
    rng = np.random.default_rng(7)
    epochs = np.arange(1, 201)
    # After the fall, a creep of one noise sigma over 200 epochs: the lowest comes late, and the
    # plateau before it holds many dips as good within noise.
    losses = 0.5 * np.exp(-epochs / 5) + 0.2 - 0.00005 * epochs + rng.normal(0, 0.01, len(epochs))
    analysis = analyze_curve(epochs, losses, patience=15, shortlist_size=4)
    check_shortlist(analysis, epochs, losses, 4)
    assert len(analysis.shortlist) == 4
    gap = math.ceil((analysis.lowest_epoch - analysis.knee_epoch) / 8)  # max(2, span / (2 * size)), knee to lowest
    assert all(step >= gap for step in np.diff(analysis.shortlist))
    # The floor onset (epoch 26) is 3.2 noise sigmas above the lowest: past the plateau band, so it is
    # no pick (issue 20); the dips within noise of the lowest fill the plateau: "the dips where there are dips".
    assert analysis.floor_epoch == 26 and 26 not in analysis.shortlist
    assert [pick.kind for pick in analysis.picks] == ["dip", "dip", "dip", "lowest"]


def test_degenerate_inputs():
    assert analyze_curve([], []).status == "empty"
    assert analyze_curve([1, 2, 3], [math.nan] * 3).status == "empty"
    short = analyze_curve([1, 2, 3], [1.0, 0.5, 0.6])
    assert short.status == "too_short" and short.lowest_epoch == 2 and short.shortlist == [2]
    flat = analyze_curve(range(1, 40), [0.5] * 39, patience=10)
    assert flat.status == "floor" and flat.floor_epoch == 1 and flat.lowest_epoch == 1  # ties: the earliest
    shuffled = analyze_curve([3, 1, 2, 5, 4, 6, 5], [0.3, 0.9, 0.5, 0.1, 0.25, 0.21, 0.2])
    assert shuffled.epochs == [1, 2, 3, 4, 5, 6] and shuffled.losses[4] == 0.2  # a repeated epoch keeps its last value
    assert shuffled.lowest_epoch == 5
    noiseless = analyze_curve(range(1, 80), [math.exp(-e / 5) + 0.1 for e in range(1, 80)], patience=10)
    assert noiseless.status == "floor"  # progress below 0.01% of the loss never counts


def test_analysis_is_deterministic_and_json_ready():
    epochs, losses, _, _ = make_curve("spikes", 4)
    first, second = analyze_curve(epochs, losses).to_dict(), analyze_curve(epochs, losses).to_dict()
    assert json.dumps(first, allow_nan=False) == json.dumps(second, allow_nan=False)
    assert {"floor_epoch", "lowest_epoch", "shortlist", "picks", "status", "noise", "candidate_epoch", "message",
            "epochs", "losses", "smoothed", "ignored_epochs"} <= set(first)
    assert len(first["smoothed"]) == len(first["epochs"]) == len(epochs)


# The demo's stable eval loss (12 epochs, `animad demo` on the tiny model): steep to epoch 4, then a quiet tail.
DEMO_CURVE = [1.9444, 1.4529, 1.2232, 1.1504, 1.1202, 1.1059, 1.0966, 1.0926, 1.0888, 1.0859, 1.0852, 1.0851]


def noiseless_knee(clean: np.ndarray) -> int:
    """Given a noiseless curve over epochs 1.., return the first epoch with 90% of its drop behind it."""
    return int(np.flatnonzero(clean <= clean[0] - 0.9 * (clean[0] - clean.min()))[0]) + 1


@pytest.mark.parametrize("tau", [2.0, 5.0, 12.0, 30.0])
def test_the_knee_is_where_nine_tenths_of_the_drop_is_behind(tau):
    # Tolerance: max(2 epochs, 10% of the knee); the noise (1% of the drop) moves the crossing.
    epochs = np.arange(1, 121)
    clean = np.exp(-epochs / tau) + 0.3
    expected = noiseless_knee(clean)
    for seed in range(5):
        losses = clean + np.random.default_rng(seed).normal(0, 0.01, len(epochs))
        analysis = analyze_curve(epochs, losses, patience=15)
        assert abs(analysis.knee_epoch - expected) <= max(2, 0.1 * expected), (seed, analysis.knee_epoch, expected)
        check_shortlist(analysis, epochs, losses, 4)


def test_the_knee_ignores_spikes_lucky_epochs_and_an_over_trained_rise():
    epochs = np.arange(1, 121)
    clean = np.exp(-epochs / 8) + 0.3
    losses = clean + np.random.default_rng(3).normal(0, 0.01, len(epochs))
    knee = analyze_curve(epochs, losses).knee_epoch
    assert knee == noiseless_knee(clean) or abs(knee - noiseless_knee(clean)) <= 2
    spiky = losses.copy()
    spiky[[knee - 3, knee + 1, 60]] *= 4  # in the descent, just after the knee, in the tail
    assert analyze_curve(epochs, spiky).knee_epoch == knee
    lucky = losses.copy()
    lucky[knee - 6] -= 0.15  # one epoch far below its neighbours, well before the knee: a median of 3 outvotes it
    assert analyze_curve(epochs, lucky).knee_epoch == knee
    rising = losses + 0.0005 * np.maximum(0, epochs - 50) ** 1.5  # over-training after the bottom
    assert analyze_curve(epochs, rising).knee_epoch == knee
    flat = 0.5 + np.random.default_rng(4).normal(0, 0.01, len(epochs))  # no descent at all: all of it is tail
    assert analyze_curve(epochs, flat).knee_epoch == 1
    assert analyze_curve(range(1, 13), DEMO_CURVE, patience=4).knee_epoch == 4
    floor = decide_floor([], [])
    assert find_knee(floor.epochs, floor.losses, floor.level, floor.noise) is None


@pytest.mark.parametrize("length", [30, 60])
def test_a_knee_then_a_slow_tail_gives_candidates_spread_after_the_knee(length):
    # The shape of real small runs (the demo, a 30-epoch run of 12 images): no earlier epoch is within
    # noise of the lowest, and the old shortlist was the lowest alone.
    for seed in range(6):
        epochs, losses, knee = knee_then_tail(seed, length)
        analysis = analyze_curve(epochs, losses, patience=15, shortlist_size=4)
        assert analysis.status == "no_floor_yet" and "no floor yet" in analysis.message  # still the right answer
        assert abs(analysis.knee_epoch - knee) <= 2, (seed, analysis.knee_epoch, knee)
        check_shortlist(analysis, epochs, losses, 4)
        after = [e for e in analysis.shortlist if e > knee]
        assert len(after) >= 3 and analysis.lowest_epoch in after, (seed, analysis.shortlist)
        assert all(e > knee for e in analysis.shortlist), "a pick on the steep descent"
        # spread over the tail: the earliest pick is in the first 60% of the stretch from the knee to the lowest
        assert analysis.shortlist[0] - knee <= 0.6 * (analysis.lowest_epoch - knee), (seed, analysis.shortlist)
        kinds = {pick.kind for pick in analysis.picks}
        assert kinds <= {"lowest", "candidate", "dip", "tail"} and kinds & {"candidate", "tail"}
        candidate = next((p for p in analysis.picks if p.kind == "candidate"), None)
        if candidate:
            assert candidate.epoch == analysis.candidate_epoch and "not confirmed" in candidate.reason
        assert all("above the lowest" in pick.reason for pick in analysis.picks if pick.kind != "lowest")


def test_the_demo_curve_gets_three_picks_after_its_knee():
    analysis = analyze_curve(range(1, 13), DEMO_CURVE, patience=4)
    assert analysis.status == "no_floor_yet" and analysis.knee_epoch == 4
    # Its possible floor (epoch 7) is 2.1 noise sigmas above the lowest, past the noise band: the loss
    # kept falling, so it is no pick, and every sentence says the loss was still going down (issue 20).
    assert analysis.shortlist == [6, 8, 10, 12] and [p.kind for p in analysis.picks] == ["tail"] * 3 + ["lowest"]
    assert "steep descent, which ends at epoch 4" in analysis.message
    assert "trend line over epochs 4-12" in analysis.message  # never from before the knee
    numbers = FloorNumbers.from_dict(analysis.numbers)
    assert verdict(numbers).startswith("The loss was still going down when training ended: after the steep "
                                       "descent (to epoch 4) it fell 0.0653 more, to its lowest at epoch 12 of 12.")
    assert plot_status(numbers) == "no floor: still falling at the end"


def first_confirmation(epochs, losses) -> int:
    """Given a curve, return how many epochs stop-at-floor trains before it confirms the floor."""
    return next(end for end in range(10, len(epochs) + 1) if floor_confirmed(epochs[:end], losses[:end], patience=15))


def test_cooldown_epochs_are_shortlisted_as_annealed():
    for seed in range(5):
        epochs, losses, _, _ = make_curve("white", seed)
        end = first_confirmation(epochs, losses)
        stop = int(epochs[end - 1])
        count = max(3, round(0.2 * stop))  # the cooldown's default length: 20% of the epochs so far
        all_epochs, all_losses, cooled = with_cooldown(epochs, losses, stop, count, seed)
        analysis = analyze_curve(all_epochs, all_losses, patience=15, cooldown_epochs=set(cooled))
        before = analyze_curve(epochs[:end], losses[:end], patience=15)
        # the floor is the one the run stopped at: the anneal's drop does not unconfirm it
        assert analysis.status == "floor" and analysis.floor_epoch == before.floor_epoch
        assert analysis.cooldown_epochs == cooled and analysis.lowest_epoch == argmin_epoch(all_epochs, all_losses)
        assert cooled[-1] in analysis.shortlist and analysis.lowest_epoch in analysis.shortlist  # LR 0, and the lowest
        assert 3 <= len(analysis.shortlist) <= 4 and analysis.shortlist == sorted(analysis.shortlist)
        for pick in analysis.picks:
            assert (pick.kind == "annealed") == (pick.epoch in cooled), (seed, pick)
            if pick.kind == "annealed":
                assert f"annealed to zero after the floor at epoch {analysis.floor_epoch}" in pick.reason
        last = next(pick for pick in analysis.picks if pick.epoch == cooled[-1])
        assert "last cooldown epoch" in last.reason and "reached 0 at this epoch" in last.reason
        assert f"{count} cooldown epochs ({cooled[0]} to {cooled[-1]})" in analysis.message
        assert all(e >= analysis.knee_epoch for e in analysis.shortlist)
        records = [{"epoch": int(e), "loss": float(v), **({"cooldown": True} if e in cooled else {})}
                   for e, v in zip(all_epochs, all_losses)]
        assert cooldown_epochs(records) == set(cooled)
        selection = type("Selection", (), {"patience": 15, "min_epoch": 1})()
        assert floor_reached(records, selection)  # the floor stays confirmed through the cooldown
        json.dumps(analysis.to_dict(), allow_nan=False)


def test_a_cooldown_without_a_confirmed_floor_says_what_it_followed():
    # A constant schedule that reached max_epochs ends annealed too, with no floor found.
    epochs, losses = still_falling(0)
    all_epochs, all_losses, cooled = with_cooldown(epochs, losses, 100, 20)
    analysis = analyze_curve(all_epochs, all_losses, patience=15, cooldown_epochs=cooled)
    assert analysis.status == "no_floor_yet" and cooled[-1] in analysis.shortlist
    last = next(pick for pick in analysis.picks if pick.epoch == cooled[-1])
    assert last.kind == "annealed" and "annealed to zero after epoch 100" in last.reason


def test_the_plot_marks_a_possible_floor_as_a_pick_only_when_it_is_one(tmp_path):
    from PIL import Image

    from animad.select.plot import COLOURS, floor_label, floor_marks, loss_plot, read_series

    # A plateau cut 12 epochs after its possible floor: unconfirmed, and within the noise of the lowest.
    epochs, losses = make_curve("white", 0)[0][:63], make_curve("white", 0)[1][:63]
    shortlisted = analyze_curve(epochs, losses, shortlist_size=4)
    alone = analyze_curve(epochs, losses, shortlist_size=1)  # room for the lowest only
    assert shortlisted.candidate_epoch in shortlisted.shortlist and alone.shortlist == [alone.lowest_epoch]
    assert floor_marks(read_series(shortlisted.to_dict())) == [("candidate", shortlisted.candidate_epoch, True)]
    assert floor_marks(read_series(alone.to_dict())) == [("candidate", alone.candidate_epoch, False)]
    assert floor_label("candidate", 108, False) == "possible floor: epoch 108 (not confirmed), not shortlisted"
    assert floor_label("floor", 51, True) == "floor: epoch 51"
    # the steep descent and the cooldown are shaded in their own colours
    base, base_losses, _, _ = make_curve("white", 0)
    end = first_confirmation(base, base_losses)
    all_epochs, all_losses, cooled = with_cooldown(base, base_losses, int(base[end - 1]), 15)
    analysis = analyze_curve(all_epochs, all_losses, cooldown_epochs=set(cooled))
    loss_plot(analysis.to_dict(), tmp_path / "loss.png")
    colours = {colour for _, colour in Image.open(tmp_path / "loss.png").convert("RGB").getcolors(1 << 20)}
    assert {COLOURS["descent"], COLOURS["cooldown"], COLOURS["pick"], COLOURS["floor"]} <= colours


def load_bench():
    path = Path(__file__).resolve().parent.parent / "bench" / "floor_accuracy.py"
    spec = importlib.util.spec_from_file_location("floor_accuracy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_accuracy_over_random_curves_stays_within_bounds():
    # The full measurement is `python bench/floor_accuracy.py`; here 30 curves a family, bounds only.
    bench = load_bench()
    bounds = {"white": 6, "autocorrelated": 9, "u_shape": 12, "spikes": 6, "nan_epoch": 6, "short": 1.5, "long": 15}
    for family in FAMILIES:
        result = bench.measure_family(family, 30)
        print(family, result)
        assert result["mean_abs_error_epochs"] <= bounds[family], (family, result)
        # Short: 10 epochs at patience 3, the knee at epoch 4-5. The trend line needs 2 * patience
        # epochs after the knee (it never reaches into the descent, issue 20), so a third of them
        # end before their floor is confirmed (the run trains on; before that rule, 4 of 50).
        assert result["no_floor_found"] <= (12 if family == "short" else 3), (family, result)
    for kind in FALLING:
        epochs_losses = [still_falling(seed, kind=kind) for seed in range(1000, 1030)]
        assert not any(analyze_curve(e, l).status == "floor" for e, l in epochs_losses), kind


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_issue_20_plateaus_get_three_picks_in_the_noise_band_after_the_knee(family):
    # The guide's own kind of curve (a small drop against the noise, the minimum late) and slow
    # 200-epoch curves: the knee is never after the lowest epoch, and at least 3 picks come from the
    # tail, each within 3 true noise sigmas of the lowest loss and none where the noiseless curve
    # is still more than 3 sigmas above its bottom.
    for seed in SEEDS:
        epochs, losses, clean, sigma = new_family(family, seed)
        analysis = analyze_curve(epochs, losses, patience=15, shortlist_size=4)
        assert analysis.status == "floor", (family, seed, analysis.message)
        check_shortlist(analysis, epochs, losses, 4)
        assert analysis.knee_epoch <= analysis.lowest_epoch, (family, seed)
        assert len(analysis.shortlist) >= 3, (family, seed, analysis.shortlist)
        for pick in analysis.picks:
            assert pick.loss <= float(np.min(losses)) + 3 * sigma, (family, seed, pick)
            assert clean[pick.epoch - 1] - clean.min() <= 3 * sigma, (family, seed, pick)


def test_the_guide_shaped_curve_gets_a_spread_shortlist():
    # Issue 20's report: floor near 0.1, a drop of ~4 sigmas, the lowest at epoch 179 of 200; main
    # gave `shortlist: [158]` and "the steep descent, which ends at epoch 180".
    rng = np.random.default_rng(20)
    epochs = np.arange(1, 201)
    losses = 0.1 + 0.024 * np.exp(-epochs / 20) + rng.normal(0, 0.006, 200)
    losses[178] = losses.min() - 0.002  # the guide's epoch 179
    analysis = analyze_curve(epochs, losses)
    assert analysis.lowest_epoch == 179 and analysis.knee_epoch <= 179
    assert len(analysis.shortlist) >= 3 and analysis.shortlist[0] < 150  # spread, not bunched at the end
    assert "ends at epoch 180" not in analysis.message


@pytest.mark.parametrize("family", FALLING_AR1)
def test_no_floor_on_a_still_falling_curve_under_ar1_noise(family):
    for seed in SEEDS:
        epochs, losses, _, _ = new_family(family, seed)
        analysis = analyze_curve(epochs, losses, patience=15)
        assert analysis.status == "no_floor_yet", (family, seed, analysis.message)
        assert analysis.knee_epoch <= analysis.lowest_epoch
