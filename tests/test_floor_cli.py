"""`animad floor` on a CSV, a real TensorBoard log dir and bad input (exit 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

from curve_families import make_curve


def floor(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "animad", "floor", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_csv_json_output(tmp_path):
    epochs, losses, onset, _ = make_curve("white", 4)
    path = tmp_path / "curve.csv"
    path.write_text("epoch,loss,lr\n" + "".join(f"{e},{l},0.1\n" for e, l in zip(epochs, losses)))
    result = floor(path, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["status"] == "floor" and isinstance(out["floor_epoch"], int)
    assert out["lowest_epoch"] == int(epochs[losses.argmin()])
    assert out["shortlist"] == sorted(out["shortlist"]) and out["lowest_epoch"] in out["shortlist"]
    readable = floor(path)
    assert "floor epoch:" in readable.stdout and "shortlist:" in readable.stdout


def test_tensorboard_dir(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    epochs, losses, _, _ = make_curve("white", 5)
    writer = SummaryWriter(str(tmp_path / "tb" / "run1"))
    for e, l in zip(epochs, losses):
        writer.add_scalar("loss/epoch_average", float(l), int(e))
        writer.add_scalar("loss/current", float(l) * 1.1, int(e) * 10)
    writer.close()
    result = floor(tmp_path / "tb", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["source"] == "epoch_average" and out["lowest_epoch"] == int(epochs[losses.argmin()])


def test_still_falling_prints_null_floor(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("epoch,loss\n" + "".join(f"{e},{1 - 0.01 * e}\n" for e in range(1, 40)))
    out = json.loads(floor(path, "--json").stdout)
    assert out["floor_epoch"] is None and out["status"] == "no_floor_yet"


def test_bad_input_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,loss\n1,0.5\n2,oops\n")
    result = floor(bad)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "bad.csv: line 3" in result.stderr and "'oops' is not a number" in result.stderr
    no_header = tmp_path / "plain.csv"
    no_header.write_text("1,0.5\n2,0.4\n")
    result = floor(no_header)
    assert result.returncode == 2 and "'epoch' and 'loss' columns" in result.stderr
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    result = floor(empty_dir)
    assert result.returncode == 2 and "no TensorBoard event files" in result.stderr
