"""Issue 20 item 2: which epoch to render first, why, and the order of the rest (select/try_first.py)."""

from __future__ import annotations

import json
import re

import numpy as np

from animad.select.package import write_review_package
from animad.select.shortlist import analyze_curve
from animad.select.try_first import BAND_SIGMAS, RULE, choose_try_first, package_try_first, try_first_line
from curve_families import NEW_FAMILIES, make_curve, new_family
from package_helpers import build_review


def picks(*rows):
    return [{"epoch": e, "loss": loss, "kind": kind} for e, loss, kind in rows]


def test_the_earliest_epoch_within_the_noise_comes_first_then_the_lowest_then_the_annealed():
    chosen = choose_try_first(picks((30, 0.512, "tail"), (40, 0.503, "dip"), (50, 0.500, "lowest"),
                                    (60, 0.504, "annealed")), noise=0.002)
    # 30 is 0.012 above the lowest (6 sigmas): not within the noise; 40 is 0.003 (1.5 sigmas): it is.
    assert chosen.epoch == 40 and chosen.order == [40, 50, 60, 30]
    assert chosen.lowest_epoch == 50 and abs(chosen.above_lowest - 0.003) < 1e-12
    assert chosen.band == BAND_SIGMAS * 0.002
    assert "0.503, 0.003 above epoch 50's 0.5, less than 0.004" in chosen.reason
    assert "10 epochs less trained" in chosen.reason and "one-standard-error rule" in chosen.rule


def test_the_lowest_comes_first_when_nothing_earlier_is_within_the_noise():
    chosen = choose_try_first(picks((7, 1.0966, "candidate"), (10, 1.09, "tail"), (12, 1.0851, "lowest")), 0.0005)
    assert chosen.epoch == 12 and chosen.order == [12, 10, 7]
    assert chosen.reason.startswith("the lowest loss of the run (1.0851)") and "no earlier" in chosen.reason
    assert choose_try_first([], 0.1) is None


def test_every_curve_family_names_one_epoch_from_its_shortlist_with_numbers_that_match():
    curves = [make_curve(family, seed)[:2] for family in ("white", "autocorrelated", "short") for seed in range(3)]
    curves += [new_family(family, seed)[:2] for family in NEW_FAMILIES for seed in range(3)]
    for epochs, losses in curves:
        analysis = analyze_curve(epochs, losses)
        first = analysis.try_first
        assert first["epoch"] in analysis.shortlist and sorted(first["order"]) == analysis.shortlist
        assert first["order"][0] == first["epoch"] and analysis.lowest_epoch in first["order"][:2]
        by_epoch = {pick.epoch: pick.loss for pick in analysis.picks}
        lowest = by_epoch[analysis.lowest_epoch]
        assert by_epoch[first["epoch"]] - lowest <= first["band"]  # within the noise, as it says
        # no earlier pick is within the band: it is the earliest
        assert not [e for e, loss in by_epoch.items() if e < first["epoch"] and loss - lowest <= first["band"]]
        numbers = re.findall(r"\d+\.\d+", first["reason"])
        assert f"{by_epoch[first['epoch']]:.5g}" in numbers or first["epoch"] == analysis.lowest_epoch


def test_summary_page_status_and_train_say_the_same_epoch(tmp_path):
    review, analysis, _ = build_review(tmp_path)
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    summary = json.loads((out / "summary.json").read_text())
    first = summary["try_first"]
    assert first == summary["analysis"]["try_first"] and first["epoch"] in analysis.shortlist
    page = (out / "index.html").read_text()
    assert f"Try epoch {first['epoch']} first." in page and "id='try-first-reason'" in page
    assert RULE.split("(")[0] in page
    line = try_first_line(first)
    assert line.startswith(f"try epoch {first['epoch']} first: ")
    assert package_try_first({"status": "done", "outbox_dir": str(out)}) == f" (try epoch {first['epoch']} first)"
    assert package_try_first({"status": "running", "outbox_dir": str(out)}) == ""
    assert package_try_first({"status": "done", "outbox_dir": str(tmp_path / "gone")}) == ""
    assert np.isfinite(first["loss"])


def test_status_names_the_epoch_to_try_first_for_a_done_job(daemon_config, tmp_path):
    from animad.config.daemon import load_daemon_config
    from animad.daemon.queue import Queue
    from animad.daemon.states import Status
    from animad.daemon.status import take_snapshot

    review, analysis, _ = build_review(tmp_path)
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    daemon = load_daemon_config(daemon_config)
    queue = Queue(daemon.dir("state") / "animad.sqlite")
    job = queue.add("cat", str(tmp_path / "inbox" / "cat"))
    queue.update(job, status=Status.DONE, outbox_dir=str(out))
    line = take_snapshot(daemon, queue).shown[job]["line"]
    first = json.loads((out / "summary.json").read_text())["try_first"]["epoch"]
    assert line == f"review: {out}/index.html (try epoch {first} first)"


def test_each_card_says_its_place_in_the_order(tmp_path):
    review, _, _ = build_review(tmp_path)
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    order = json.loads((out / "summary.json").read_text())["try_first"]["order"]
    page = (out / "index.html").read_text()
    for place, epoch in enumerate(order, 1):
        card = page[page.index(f"id='pick-{epoch}'"):]
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(place, "th")
        assert f"<span class='badge try'>try {place}{suffix}</span>" in card[:card.index("</h3>")]
