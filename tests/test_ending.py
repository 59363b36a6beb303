"""How a run ended is a record (layout.Ending) written and read through JobPaths (issue 18).

train/ending.py decides it; select/, daemon/ and the page read the record, never the sentence. Runs from
before ending.json (their finished.txt a sentence alone) still load, through the one tolerant reader.
"""

from __future__ import annotations

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
