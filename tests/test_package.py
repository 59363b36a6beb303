"""The review package: descriptive copies, labelled sheet, plot, summary and a safe static page."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

from animad.select.floor import analyze_curve
from animad.select.package import PreviewCell, Review, write_review_package

from curve_families import make_curve

EVIL = "<script>alert(1)</script>"


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.scripts = [], 0

    def handle_starttag(self, tag, attrs):
        self.scripts += tag == "script"
        for key, value in attrs:
            if key in ("src", "href"):
                self.links.append(value)


def build_review(tmp_path, name="cat", prompts=None):
    epochs, losses, _, _ = make_curve("white", 0)
    analysis = analyze_curve(epochs, losses, patience=15, shortlist_size=4)
    loras = {}
    for epoch in analysis.shortlist:
        path = tmp_path / "work" / f"cat-e{epoch:04d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"lora_unet_blocks_0_mlp_layer1.lora_down.weight": torch.full((2, 4), float(epoch))}, str(path))
        loras[epoch] = path
    prompts = prompts or ["@cat, 1girl, smile", f"@cat, {EVIL}"]
    rows = ["baseline"] + [f"e{e:04d}" for e in analysis.shortlist]
    cells = []
    for r, row in enumerate(rows):
        for p in range(len(prompts)):
            image = tmp_path / "renders" / f"{row}-{p}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), (40 * r % 255, 80 * p % 255, 120)).save(image)
            cells.append(PreviewCell(row, p, image))
    labels = {"baseline": "no LoRA", **{f"e{e:04d}": f"epoch {e}" for e in analysis.shortlist}}
    warnings = [{"file": f"img{EVIL}.png", "where": "", "message": f"caption {EVIL} is odd", "fix": "fix it",
                 "severity": "warning"}]
    review = Review(name, f"@cat{EVIL}", analysis.to_dict(), "eval", {int(e): float(l) * 1.1 for e, l in
                    zip(epochs, losses)}, loras, prompts, [1000, 1001], rows, labels, cells, warnings,
                    {"steps": 30, "cfg": 4.0}, "stopped at the confirmed loss floor")
    return review, analysis, loras


def test_package_contents(tmp_path):
    review, analysis, loras = build_review(tmp_path)
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    summary = json.loads((out / "summary.json").read_text())
    assert [p["epoch"] for p in summary["shortlist"]] == analysis.shortlist
    for pick in summary["shortlist"]:
        copy = out / pick["file"]
        assert re.fullmatch(r"cat-e\d{4}-(lowest|floor|dip)\.safetensors", pick["file"])
        assert copy.read_bytes() == loras[pick["epoch"]].read_bytes()  # a copy, byte for byte
        assert loras[pick["epoch"]].is_file()  # the job's own file is still there
    sheet = Image.open(out / "contact_sheet.png")
    rows, columns = 1 + len(analysis.shortlist), 2
    assert sheet.size == (180 + columns * 262 + 6, 56 + rows * 262 + 6)
    assert Image.open(out / "loss_curve.png").size == (1000, 520)
    assert len(list((out / "previews").glob("*.png"))) == rows * columns


def test_page_escapes_user_text_and_links_stay_inside(tmp_path):
    review, _, _ = build_review(tmp_path)
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    page = (out / "index.html").read_text()
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    parser = Links()
    parser.feed(page)
    assert parser.scripts == 0
    assert parser.links
    for link in parser.links:
        assert "://" not in link and not link.startswith("/"), link
        assert (out / link.replace("%20", " ")).resolve().is_relative_to(out.resolve())
        assert (out / link).exists(), link
    assert "Low loss only shortlists; the previews decide." in page


def test_hostile_name_cannot_escape_the_outbox(tmp_path):
    review, _, _ = build_review(tmp_path, name="../../evil")
    out = write_review_package(tmp_path / "outbox" / "../../evil", review)
    assert out.resolve().is_relative_to((tmp_path / "outbox").resolve()) or out.parent == (tmp_path / "outbox" / "../..")
    assert not any(".." in p.name for p in out.iterdir())
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve())


def test_rerun_keeps_the_users_files(tmp_path):
    review, _, _ = build_review(tmp_path)
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    (out / "my-notes.txt").write_text("epoch 23 looks best")
    again = write_review_package(tmp_path / "outbox" / "cat", review)
    assert again == out and (again / "index.html").is_file()
    previous = list((tmp_path / "outbox").glob("cat.previous-*"))
    assert len(previous) == 1 and (previous[0] / "my-notes.txt").read_text() == "epoch 23 looks best"
