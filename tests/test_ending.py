"""How a run ended is a record (layout.Ending) written and read through JobPaths (issue 18).

train/ending.py decides it; select/, daemon/ and the page read the record, never the sentence. Runs from
before ending.json (their finished.txt a sentence alone) still load, through the one tolerant reader.
"""

from __future__ import annotations

import dataclasses

from animad.layout import Ending, JobPaths

FLOOR = Ending(kind="floor", epochs=37, floor_epoch=31, cooldown_epochs=6,
               sentence="stopped at the confirmed loss floor after epoch 31, then cooled the learning rate to 0 "
                        "over 6 epochs")


def test_the_ending_is_written_as_a_record_and_read_back_whole(tmp_path):
    paths = JobPaths(tmp_path)
    assert paths.read_ending() is None and paths.ended_at() is None
    paths.write_ending(FLOOR)
    assert paths.read_ending() == FLOOR
    assert (tmp_path / "finished.txt").read_text() == FLOOR.sentence + "\n"  # what people read
    assert paths.ended_at() is not None
    paths.clear_ending()
    assert paths.read_ending() is None and not list(tmp_path.iterdir())


def test_an_old_run_whose_finished_txt_is_a_sentence_still_loads(tmp_path):
    paths = JobPaths(tmp_path)
    (tmp_path / "finished.txt").write_text(FLOOR.sentence + "\n")
    assert paths.read_ending() == Ending(kind="floor", epochs=None, floor_epoch=31, cooldown_epochs=6,
                                         sentence=FLOOR.sentence)
    (tmp_path / "finished.txt").write_text("stopped at the confirmed loss floor after epoch 12\n")
    assert paths.read_ending() == Ending(kind="floor", epochs=None, floor_epoch=12, cooldown_epochs=0,
                                         sentence="stopped at the confirmed loss floor after epoch 12")
    (tmp_path / "finished.txt").write_text("reached max_steps 600\n")
    assert paths.read_ending().kind == "max_steps" and paths.read_ending().floor_epoch is None
    (tmp_path / "finished.txt").write_text("floor\n")  # anything else: the sentence is kept, nothing guessed
    assert paths.read_ending() == Ending(kind="unknown", epochs=None, floor_epoch=None, cooldown_epochs=0,
                                         sentence="floor")


def test_a_damaged_record_falls_back_to_the_sentence(tmp_path):
    paths = JobPaths(tmp_path)
    paths.write_ending(FLOOR)
    (tmp_path / "ending.json").write_text("{not json")
    assert paths.read_ending() == Ending.from_sentence(FLOOR.sentence)


def test_the_cooldown_plan_is_decided_without_changing_anything():
    # train/ending.plan_cooldown only plans; start_cooldown applies; after_floor_check says when the run ends.
    import torch

    from animad.config.job import JobConfig
    from animad.train.ending import CooldownPlan, after_floor_check, plan_cooldown
    from animad.train.optim import build_scheduler
    from animad.train.progress import Progress, Sizes

    config = JobConfig()
    config.schedule.type, config.selection.stop_at_floor = "constant", True
    config.selection.cooldown_fraction, config.selection.cooldown_min_epochs = 0.2, 3
    sizes = Sizes(batches_per_epoch=4, batches_per_step=2, steps_per_epoch=2, max_epochs=40, max_steps=None,
                  total_steps=80)
    quiet = Progress(epoch=10, global_step=20)
    assert plan_cooldown(quiet, sizes, config, after=10) is None  # no floor, the end far away: nothing due
    floor = Progress(epoch=20, global_step=40, floor_confirmed=20)
    before = dataclasses.replace(floor)
    assert plan_cooldown(floor, sizes, config, after=20) == CooldownPlan(after=20, epochs=4, start_step=40, steps=8)
    assert floor == before  # planning changed nothing
    near_end = Progress(epoch=38, global_step=76)  # constant, no floor: the last epochs cool anyway
    assert plan_cooldown(near_end, sizes, config, after=38) == CooldownPlan(after=38, epochs=2, start_step=76,
                                                                            steps=4)
    scheduler = build_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), config.schedule,
                                config.selection, sizes.total_steps)
    assert after_floor_check(floor, sizes, config, scheduler) is None  # the cooldown starts: the run goes on
    assert (floor.cooldown_after, floor.cooldown_epochs, floor.cooldown_steps) == (20, 4, 8)
    spent = Progress(epoch=40, global_step=80, floor_confirmed=40)  # a floor with no steps left to cool over
    assert after_floor_check(spent, sizes, config, scheduler) == Ending(
        kind="floor", epochs=40, floor_epoch=40, cooldown_epochs=0,
        sentence="stopped at the confirmed loss floor after epoch 40")
    assert spent.cooldown_after is None
