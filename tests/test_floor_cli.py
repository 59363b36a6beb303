"""`animad floor` through the real CLI on a CSV, an epochs.jsonl and a real TensorBoard log folder;
the curve readers' choices; bad input exits 2 with a message naming the file and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from animad.errors import UserError
from animad.layout import EpochRecord, read_epochs_log
from animad.select.curve import read_curve_file
from animad.train.floor import epoch_curve

from curve_families import make_curve

REPO = Path(__file__).resolve().parent.parent


def run_floor(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "animad", "floor", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def write_csv(path: Path, epochs, losses, extra: str = ",0.1") -> Path:
    path.write_text("epoch,loss,lr\n" + "".join(f"{e},{l}{extra}\n" for e, l in zip(epochs, losses)))
    return path


def test_csv_prints_one_json_object(tmp_path):
    epochs, losses, _, _ = make_curve("nan_epoch", 4)
    result = run_floor(write_csv(tmp_path / "curve.csv", epochs, losses), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)  # the whole of stdout is exactly one JSON object
    assert out["status"] == "floor" and isinstance(out["floor_epoch"], int)
    finite = [(l, e) for e, l in zip(epochs, losses) if l == l]
    assert out["lowest_epoch"] == int(min(finite)[1])
    assert out["shortlist"] == sorted(out["shortlist"]) and out["lowest_epoch"] in out["shortlist"]
    assert [p["epoch"] for p in out["picks"]] == out["shortlist"] and all(p["reason"] for p in out["picks"])
    assert out["source"] == "csv" and out["noise"] > 0 and out["message"]
    assert set(out["ignored_epochs"]) == {int(e) for e, l in zip(epochs, losses) if l != l}


def test_readable_summary_and_options(tmp_path):
    epochs, losses, onset, _ = make_curve("white", 5)
    path = write_csv(tmp_path / "curve.csv", epochs, losses)
    readable = run_floor(path, "--size", "2", "--min-epoch", onset + 10)
    assert readable.returncode == 0, readable.stderr
    for label in ("status:", "floor epoch:", "lowest epoch:", "noise sigma:", "shortlist:"):
        assert label in readable.stdout
    out = json.loads(run_floor(path, "--json", "--size", "2", "--min-epoch", onset + 10, "--patience", 10).stdout)
    assert len(out["shortlist"]) <= 2 and all(e >= onset + 10 for e in out["shortlist"])


def test_still_falling_curve_prints_a_null_floor_and_exits_0(tmp_path):
    path = tmp_path / "falling.csv"
    path.write_text("epoch,loss\n" + "".join(f"{e},{1 - 0.01 * e}\n" for e in range(1, 40)))
    result = run_floor(path, "--json")
    assert result.returncode == 0
    out = json.loads(result.stdout)
    assert out["floor_epoch"] is None and out["status"] == "no_floor_yet" and out["lowest_epoch"] == 39


def write_scalars(folder: Path, tag: str, points, wall_start: float) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for offset, (epoch, loss) in enumerate(points):
        writer.add_scalar(tag, float(loss), int(epoch), walltime=wall_start + offset)
        writer.add_scalar("loss/current", float(loss) * 1.1, int(epoch) * 10, walltime=wall_start + offset)
    writer.close()


def test_tensorboard_folder_with_a_resumed_launch(tmp_path):
    epochs, losses, _, _ = make_curve("white", 6)
    points = list(zip(epochs, losses))
    logs = tmp_path / "logs"
    # The first launch logged epochs 1-70 and died; the resumed one re-logged 61-120 later on.
    write_scalars(logs / "launch1", "loss/epoch_average", [(e, l + 0.5) for e, l in points[:70]], 1000.0)
    write_scalars(logs / "nested" / "launch2", "loss/epoch_average", points[60:], 5000.0)
    curve = read_curve_file(logs)
    assert curve.source == "epoch_average" and curve.tag == "loss/epoch_average"
    assert curve.epochs == [int(e) for e in epochs]
    assert curve.losses[65] == pytest.approx(float(losses[65]), abs=1e-6)  # the last-written value wins
    assert curve.losses[5] == pytest.approx(float(losses[5]) + 0.5, abs=1e-6)
    result = run_floor(logs, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["source"] == "epoch_average" and out["lowest_epoch"] in out["shortlist"]


def test_tensorboard_prefers_eval_loss_and_honours_tag(tmp_path):
    epochs, losses, _, _ = make_curve("white", 7)
    write_scalars(tmp_path / "run", "loss/epoch_average", zip(epochs, losses + 0.1), 1000.0)
    write_scalars(tmp_path / "run", "eval/loss", zip(epochs, losses), 2000.0)
    assert read_curve_file(tmp_path).source == "eval"
    picked = read_curve_file(tmp_path, "loss/epoch_average")
    assert picked.source == "epoch_average" and picked.losses[0] == pytest.approx(float(losses[0]) + 0.1, abs=1e-6)
    missing = run_floor(tmp_path, "--tag", "loss/nope")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "loss/nope" in missing.stderr and "tags found" in missing.stderr and "eval/loss" in missing.stderr


def test_epochs_jsonl_uses_eval_loss_and_skips_a_torn_last_line(tmp_path):
    epochs, losses, _, _ = make_curve("white", 8)
    records = [{"epoch": int(e), "loss": float(l) + 0.2, "eval_loss": float(l)} for e, l in zip(epochs, losses)]
    path = tmp_path / "epochs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"epoch": 121, "lo')
    curve = read_curve_file(path)
    assert curve.source == "eval" and len(curve.epochs) == 120 and curve.losses[0] == float(losses[0])
    records[3]["eval_loss"] = None  # one epoch without eval: the train loss is used for every epoch
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    curve = read_curve_file(path)
    assert curve.source == "epoch_average" and curve.losses[0] == float(losses[0]) + 0.2
    out = json.loads(run_floor(path, "--json").stdout)
    assert out["source"] == "epoch_average" and out["status"] == "floor"
    path.write_text(json.dumps(records[0]) + "\nnot json\n" + json.dumps(records[1]) + "\n")
    with pytest.raises(UserError, match="epochs.jsonl: line 2"):
        read_curve_file(path)


@pytest.mark.parametrize("text, expected", [
    ("epoch,loss\n1,0.5\n2,oops\n", "bad.csv: line 3, column 'loss': 'oops' is not a number"),
    ("1,0.5\n2,0.4\n", "bad.csv: the first line must be a header with 'epoch' and 'loss' columns"),
    ("epoch,loss\n1.5,0.5\n", "bad.csv: line 2, column 'epoch': '1.5' is not a whole number"),
    ("epoch,loss,lr\n1,0.5,1\n2\n", "bad.csv: line 3 has 1 fields"),
    ("epoch,loss\n", "bad.csv: no data rows after the header"),
])
def test_malformed_csv_is_a_clear_error(tmp_path, text, expected):
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    result = run_floor(bad)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert expected in result.stderr and str(bad) in result.stderr


def test_missing_curve_and_empty_log_folder_are_clear_errors(tmp_path):
    result = run_floor(tmp_path / "nope.csv")
    assert result.returncode == 2 and "no such file or folder" in result.stderr and "Traceback" not in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no TensorBoard event files"):
        read_curve_file(empty)


def test_the_one_epochs_log_reader_and_the_one_curve_rule(tmp_path):
    path = tmp_path / "epochs.jsonl"
    assert read_epochs_log(path) == []  # no epoch finished yet
    good = [{"epoch": 1, "loss": 0.5, "eval_loss": 0.4}, {"epoch": 2, "loss": 0.45, "eval_loss": None}]
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + "\n" + '{"epoch": 3, "lo')
    # blank lines and a torn last line are skipped; a field an older line lacks gets EpochRecord's default
    assert read_epochs_log(path) == [EpochRecord(**r).to_dict() for r in good]
    assert [{key: r[key] for key in good[0]} for r in read_epochs_log(path)] == good
    assert all(r["cooldown"] is False and r["lr"] is None for r in read_epochs_log(path))
    path.write_text(json.dumps(good[0]) + '\n{"epoch": "x"}\n' + json.dumps(good[1]) + "\n")
    with pytest.raises(UserError, match="epochs.jsonl: line 2 is not an epoch record"):
        read_epochs_log(path)
    assert epoch_curve(good) == ([1, 2], [0.5, 0.45], "loss")  # one epoch without eval: the training loss for all
    assert epoch_curve(good[:1]) == ([1], [0.4], "eval_loss")


def test_a_demo_like_curve_gets_a_shortlist_after_its_knee(tmp_path):
    # 12 epochs like `animad demo`'s: steep to epoch 4, then a quiet tail still falling slowly.
    losses = [1.9444, 1.4529, 1.2232, 1.1504, 1.1202, 1.1059, 1.0966, 1.0926, 1.0888, 1.0859, 1.0852, 1.0851]
    path = write_csv(tmp_path / "demo.csv", range(1, 13), losses)
    out = json.loads(run_floor(path, "--json", "--patience", 4).stdout)
    assert out["status"] == "no_floor_yet" and out["lowest_epoch"] == 12
    assert len(out["shortlist"]) >= 3 and all(e > 4 for e in out["shortlist"])  # none on the steep descent
    # Its possible floor is 2.1 noise sigmas above the lowest (the loss kept falling): no pick (issue 20)
    assert out["candidate_epoch"] == 7 and 7 not in out["shortlist"]
    assert all(p["reason"] for p in out["picks"]) and "ends at epoch 4" in out["message"]
    assert out["try_first"]["epoch"] in out["shortlist"]
    readable = run_floor(path, "--patience", 4)
    assert readable.returncode == 0 and "tail" in readable.stdout and "try epoch" in readable.stdout


def test_tensorboards_own_csv_export_is_read_with_the_step_as_the_epoch(tmp_path):
    epochs, losses, _, _ = make_curve("white", 9)
    # As TensorBoard's "Download data: CSV" writes it; a resumed launch logged epochs 3 and 4 again
    # later (a later wall time wins, as in the event files), and an earlier, stale copy of epoch 5
    # comes after its real value in the file.
    rows = [(1000.0 + e, int(e), float(l) + (0.5 if e in (3, 4) else 0.0)) for e, l in zip(epochs, losses)]
    rows += [(9000.0, 3, float(losses[2])), (9001.0, 4, float(losses[3])), (10.0, 5, 99.0)]
    path = tmp_path / "run-tag-eval_loss.csv"
    path.write_text("Wall time,Step,Value\n" + "".join(f"{w},{s},{v}\n" for w, s, v in rows))
    curve = read_curve_file(path)
    assert curve.source == "tensorboard" and "TensorBoard CSV" in curve.tag
    assert curve.epochs == [int(e) for e in epochs]
    assert curve.losses[:5] == pytest.approx([float(v) for v in losses[:5]])
    result = run_floor(path, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["source"] == "tensorboard" and out["lowest_epoch"] in out["shortlist"]
    # A header of neither kind names both accepted headers.
    path.write_text("time,step\n1,2\n")
    bad = run_floor(path)
    assert bad.returncode == 2 and "'Wall time,Step,Value'" in bad.stderr and "'epoch' and 'loss'" in bad.stderr


def test_every_option_of_floor_and_select_has_help():
    import argparse

    from animad.cli.main import build_parser

    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in ("floor", "select"):
        for action in verbs[name]._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and len(action.help) > 12, (name, action.dest)
    text = " ".join(verbs["floor"].format_help().split())  # whatever the terminal's width
    assert "--patience" in text and "epochs after a candidate floor" in text and "default 15" in text
    assert "Wall time,Step,Value" in text


def test_floor_and_select_flags_take_their_defaults_and_help_from_job_yaml():
    # One statement of each default: the flags read config/job.py's options, so a changed default
    # changes `animad floor` and its help too.
    import argparse

    from animad.cli.main import build_parser
    from animad.config.job import JobConfig

    job, parser = JobConfig(), build_parser()
    args = parser.parse_args(["floor", "curve.csv"])
    assert (args.patience, args.size, args.min_epoch) == (
        job.selection.patience, job.selection.shortlist_size, job.selection.min_epoch)
    parsed = parser.parse_args(["select", "job"])
    assert parsed.steps is None and parsed.size is None  # the job's own previews settings apply
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    help_text = " ".join(verbs["select"].format_help().split())
    assert f"{job.previews.steps}, as ComfyUI's official Anima template" in help_text
    assert f"{job.previews.width} unless it sets them" in help_text



def test_the_guide_shaped_curve_gets_a_spread_shortlist_from_animad_floor(tmp_path):
    # Issue 20: a floor near 0.1, a drop of ~4 noise sigmas, the minimum at epoch 179 of 200. Main said
    # `shortlist: [158]` and "the steep descent, which ends at epoch 180" (a knee after the lowest).
    rng = np.random.default_rng(20)
    epochs = np.arange(1, 201)
    losses = 0.1 + 0.024 * np.exp(-epochs / 20) + rng.normal(0, 0.006, 200)
    losses[178] = losses.min() - 0.002
    out = json.loads(run_floor(write_csv(tmp_path / "guide.csv", epochs, losses), "--json").stdout)
    assert out["lowest_epoch"] == 179 and out["knee_epoch"] <= 179
    assert len(out["shortlist"]) >= 3 and out["try_first"]["epoch"] in out["shortlist"]
    sigma = out["noise"]
    assert all(p["loss"] <= losses.min() + 3 * sigma for p in out["picks"])
    assert out["numbers"]["status"] == out["status"] and "ends at epoch 180" not in out["message"]
