"""`animad demo`, the README's first command: the whole inbox -> train -> select -> outbox path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image
from safetensors import safe_open

from daemon_helpers import HANG_SECONDS

pytestmark = pytest.mark.slow


def test_demo_ends_with_a_review_package(tmp_path):
    result = subprocess.run([sys.executable, "-m", "animad", "demo", "--dir", str(tmp_path / "d")],
                            capture_output=True, text=True, timeout=HANG_SECONDS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    package = tmp_path / "d" / "outbox" / "demo-shapes"
    assert f"file://{package / 'index.html'}" in result.stdout  # it says where to look
    summary = json.loads((package / "summary.json").read_text())
    assert summary["warnings"] == []  # the demo's own job trips none of animad check's warnings
    assert f"try epoch {summary['try_first']['epoch']} first" in result.stdout  # where to start, as the page says
    assert summary["shortlist"] and summary["epochs_trained"] >= 1
    for pick in summary["shortlist"]:
        with safe_open(str(package / pick["file"]), "pt") as lora:  # a loadable LoRA, sd-scripts keys
            assert any(k.startswith("lora_unet_blocks_") for k in lora.keys())
    with Image.open(package / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 200
    assert len(list((package / "previews").rglob("*.png"))) == len(summary["prompts"]) * len(summary["rows"])
    page = (package / "index.html").read_text()
    assert "contact_sheet.png" in page and pick["file"] in page
    assert "Its previews are noise by design" in page  # a random tiny model: nothing on the page looks broken
    assert "Training settings" in page and summary["training"]["epochs_trained"] == summary["epochs_trained"]
    # Everything stays in the demo folder (the user's own dirs are untouched).
    assert (tmp_path / "d" / "animad.yaml").is_file() and (tmp_path / "d" / "state").is_dir()
    # Run again: a new job with its own package, nothing left behind in the inbox, the first package kept.
    again = subprocess.run([sys.executable, "-m", "animad", "demo", "--dir", str(tmp_path / "d"), "--epochs", "2"],
                           capture_output=True, text=True, timeout=HANG_SECONDS)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    second = tmp_path / "d" / "outbox" / "demo-shapes-2"
    assert f"file://{second / 'index.html'}" in again.stdout
    assert json.loads((second / "summary.json").read_text())["epochs_trained"] == 2
    assert [p.name for p in (tmp_path / "d" / "inbox").iterdir() if not p.name.startswith(".")] == []
    assert json.loads((package / "summary.json").read_text()) == summary
