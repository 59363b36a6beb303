"""The review package: descriptive copies, labelled sheet, plot, summary and a safe static page."""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from animad.select import package as package_module
from animad.select.shortlist import analyze_curve
from animad.layout import safe_name
from animad.select.package import PreviewCell, Review, write_review_package
from animad.select.plot import loss_plot
from animad.select.sheet import CELL_SIZE, HEADER_HEIGHT, LABEL_WIDTH, PAD, contact_sheet

from curve_families import make_curve, still_falling

EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def preview_colour(row_index: int, prompt_index: int) -> tuple[int, int, int]:
    return (40 * row_index % 256, 80 * prompt_index % 256, 120)


def build_review(tmp_path: Path, name: str = "cat", preview_size: tuple[int, int] = (64, 64)):
    """A Review the way select_job builds one: a real floor analysis, real epoch files, real PNGs."""
    epochs, losses, _, _ = make_curve("white", 0)
    analysis = analyze_curve(epochs, losses, patience=15, shortlist_size=4)
    assert analysis.shortlist, "the test curve must give a shortlist"
    loras = {}
    for epoch in analysis.shortlist:
        path = tmp_path / "work" / "epochs" / f"cat-e{epoch:04d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"lora_unet_blocks_0_mlp_layer1.lora_down.weight": torch.full((2, 4), float(epoch))}, str(path))
        loras[epoch] = path
    prompts = ["@cat, 1girl, smile, looking at viewer, upper body, cherry blossoms, outdoors", f"@cat, {EVIL}"]
    rows = ["baseline"] + [f"e{e:04d}" for e in analysis.shortlist]
    cells = []
    for row_index, row in enumerate(rows):
        for prompt_index in range(len(prompts)):
            image = tmp_path / "work" / "selection" / f"{row}-p{prompt_index}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", preview_size, preview_colour(row_index, prompt_index)).save(image)
            cells.append(PreviewCell(row, prompt_index, image))
    kinds = {p.epoch: p.kind for p in analysis.picks}
    labels = {"baseline": "no LoRA", **{f"e{e:04d}": f"epoch {e} ({kinds[e]})" for e in analysis.shortlist}}
    warnings = [{"file": f"img{EVIL}.png", "where": f"line 1 {EVIL}", "message": f"caption {EVIL} is odd",
                 "fix": f"rewrite {EVIL}", "severity": "warning"}]
    review = Review(
        job_name=name, trigger=f"@cat{EVIL}", analysis=analysis.to_dict(), curve_source="eval",
        train_losses={int(e): float(v) * 1.1 for e, v in zip(epochs, losses)}, lora_files=loras, prompts=prompts,
        seeds=[1000, 1001], rows=rows, row_labels=labels, cells=cells, warnings=warnings,
        settings={"steps": 30, "cfg": 4.0, "flow_shift": 3.0, "width": 1024, "height": 1024, "sampler": "euler",
                  "negative_prompt": f"worst quality {EVIL}", "strengths": [1.0]},
        stopped_reason="stopped at the confirmed floor (epoch 56 + patience 15)",
        extra={"epochs_trained": len(epochs), "job_folder": str(tmp_path / "work")})
    return review, analysis, loras


class PageParser(HTMLParser):
    """Collects what a browser would act on: tags, links, event attributes and the visible text."""

    def __init__(self):
        super().__init__()
        self.tags, self.links, self.handlers, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for key, value in attrs:
            if key in ("src", "href"):
                self.links.append(value)
            if key.startswith("on"):
                self.handlers.append(key)

    def handle_data(self, data):
        self.text.append(data)


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_shortlisted_loras_are_descriptive_byte_identical_copies(tmp_path):
    review, analysis, loras = build_review(tmp_path)
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    copies = sorted(p.name for p in out.glob("*.safetensors"))
    expected = sorted(f"cat-e{p.epoch:04d}-{p.kind}.safetensors" for p in analysis.picks)
    assert copies == expected
    assert any(name.endswith("-lowest.safetensors") for name in copies)
    for pick in analysis.picks:
        copy = out / f"cat-e{pick.epoch:04d}-{pick.kind}.safetensors"
        assert copy.read_bytes() == loras[pick.epoch].read_bytes()
        assert loras[pick.epoch].is_file()  # copied, not moved: the job folder keeps every epoch


def test_previews_and_the_contact_sheet_follow_rows_and_prompts(tmp_path):
    review, analysis, _ = build_review(tmp_path)
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    names = sorted(p.name for p in (out / "previews").iterdir())
    assert names == sorted(f"{row}-p{i + 1}-s{1000 + i}.png" for row in review.rows for i in range(2))
    assert (out / "previews" / "baseline-p2-s1001.png").read_bytes() == review.cells[1].image.read_bytes()

    sheet = Image.open(out / "contact_sheet.png").convert("RGB")
    rows, columns = len(review.rows), len(review.prompts)
    assert sheet.size == (LABEL_WIDTH + columns * (CELL_SIZE + PAD) + PAD,
                          HEADER_HEIGHT + rows * (CELL_SIZE + PAD) + PAD)
    for row_index in range(rows):  # baseline on top, then the epochs in order; one column per prompt
        for prompt_index in range(columns):
            x = LABEL_WIDTH + prompt_index * (CELL_SIZE + PAD) + CELL_SIZE // 2
            y = HEADER_HEIGHT + row_index * (CELL_SIZE + PAD) + CELL_SIZE // 2
            assert sheet.getpixel((x, y)) == preview_colour(row_index, prompt_index)
    label_column = sheet.crop((0, HEADER_HEIGHT, LABEL_WIDTH, sheet.height)).convert("L")
    assert label_column.getextrema()[1] > 200  # the row labels are drawn (light text on the dark sheet)


def test_portrait_previews_get_tall_tiles_and_unicode_labels(tmp_path):
    cells = {}
    for row in ("baseline", "e0010"):
        for prompt_index in range(3):
            path = tmp_path / f"{row}-{prompt_index}.png"
            Image.new("RGB", (832, 1216), (200, 30 * prompt_index, 90)).save(path)
            cells[(row, prompt_index)] = path
    del cells[("e0010", 2)]  # a preview that never got rendered leaves a marked gap
    out = tmp_path / "sheet.png"
    size = contact_sheet(["baseline", "e0010"], {"baseline": "no LoRA", "e0010": "エポック 10 (dip) café"},
                         ["初音ミク, 1girl", "x " * 200, ""], cells, out, seeds=[1, 2, 3], title="猫の絵 v2")
    tile_height = round(CELL_SIZE * 1216 / 832)
    assert size == Image.open(out).size == (LABEL_WIDTH + 3 * (CELL_SIZE + PAD) + PAD,
                                             HEADER_HEIGHT + 2 * (tile_height + PAD) + PAD)


@pytest.mark.parametrize("curve", ["floor", "still_falling", "too_short", "spikes", "nan_epoch", "empty"])
def test_loss_plot_is_a_png_for_every_kind_of_curve(tmp_path, curve):
    if curve == "still_falling":
        epochs, losses = still_falling(0)
    elif curve == "empty":
        epochs, losses = [], []
        analysis = {"status": "empty", "floor_epoch": None, "candidate_epoch": None, "lowest_epoch": None,
                    "shortlist": [], "picks": [], "noise": float("nan"), "epochs": [], "losses": [], "smoothed": [],
                    "ignored_epochs": [], "message": "No epochs yet."}
    else:
        family = {"floor": "white", "too_short": "short"}.get(curve, curve)
        epochs, losses, _, _ = make_curve(family, 1)
        if curve == "too_short":
            epochs, losses = epochs[:4], losses[:4]
    if curve != "empty":
        analysis = analyze_curve(epochs, losses, patience=15).to_dict()
    out = tmp_path / "loss.png"
    size = loss_plot(analysis, out, {int(e): float(v) + 0.05 for e, v in zip(epochs, losses)})
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == size
        image.verify()
    darkest, lightest = Image.open(out).convert("L").getextrema()
    assert lightest == 255 and darkest < 100  # white paper with dark ink on it, not a blank frame
    if curve == "floor":  # the picks are marked in the pick colour
        colours = {colour for _, colour in Image.open(out).convert("RGB").getcolors(1 << 20)}
        assert (20, 140, 70) in colours


def test_summary_json_has_the_shortlist_previews_and_run_facts(tmp_path):
    review, analysis, loras = build_review(tmp_path)
    out = write_review_package(tmp_path / "outbox" / "cat", review)

    def no_nan(token):
        raise AssertionError(f"summary.json holds {token}, which is not JSON")

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"), parse_constant=no_nan)
    assert [p["epoch"] for p in summary["shortlist"]] == analysis.shortlist
    for pick in summary["shortlist"]:
        assert (out / pick["file"]).is_file() and pick["reason"] and pick["kind"] in pick["file"]
        assert pick["source"] == str(loras[pick["epoch"]])
    assert len(summary["previews"]) == len(review.cells)
    assert all((out / p["file"]).is_file() for p in summary["previews"])
    assert summary["job"] == "cat" and summary["trigger"] == review.trigger
    assert summary["settings"]["steps"] == 30 and summary["warnings"] == review.warnings
    assert summary["stopped_reason"] == review.stopped_reason and summary["analysis"]["status"] == "floor"
    assert summary["job_folder"] == str(tmp_path / "work")  # extra travels along
    assert set(summary["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}


def test_page_escapes_every_user_string(tmp_path):
    review, _, _ = build_review(tmp_path, name=f"cat {EVIL} & 'co'")
    review.row_labels["baseline"] = f"no LoRA {EVIL}"
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert EVIL not in page and "<script" not in page.lower()
    assert page.count(ESCAPED) >= 8  # name, trigger, prompt, warning file/where/message/fix, negative prompt
    parsed = parse_page(out / "index.html")
    assert "script" not in parsed.tags and not parsed.handlers
    text = "".join(parsed.text)
    assert f"cat {EVIL} & 'co'" in text  # shown to the user as plain text
    assert f"no LoRA {EVIL}" in text and f"caption {EVIL} is odd" in text


def test_page_links_are_relative_and_point_into_the_package(tmp_path):
    review, analysis, _ = build_review(tmp_path, name="my cat #1 ?")
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "//" not in page.replace("://", "")
    links = parse_page(out / "index.html").links
    assert "contact_sheet.png" in links and "loss_curve.png" in links
    assert sum(link.endswith(".safetensors") for link in links) == len(analysis.shortlist)
    for link in links:
        parts = urlsplit(link)
        assert not parts.scheme and not parts.netloc and not link.startswith("/"), link
        target = out / unquote(parts.path)
        assert target.resolve().is_relative_to(out.resolve()) and target.is_file(), link
    assert "Low loss only shortlists; the previews decide." in page
    assert "LoraLoaderModelOnly" in page


def test_hostile_names_cannot_escape_the_outbox(tmp_path):
    review, _, _ = build_review(tmp_path, name="../../evil")
    outbox = tmp_path / "outbox"
    out = write_review_package(outbox / "../../evil", review)
    assert out == outbox / "evil"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outbox", "work"]  # nothing written beside it
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve())
        assert ".." not in path.name and "/" not in path.name
    assert sorted(p.name for p in out.glob("*.safetensors"))[0].startswith("evil-e")


def test_safe_name_keeps_letters_and_drops_what_could_hurt():
    assert safe_name("猫の絵 v2") == "猫の絵_v2"
    assert safe_name("Ünïcødé-LoRA") == "Ünïcødé-LoRA"
    assert safe_name("a/b\\c:d") == "a_b_c_d"
    assert safe_name("bad\x00\x1b[31m\u202eevil\u200b") == "bad[31mevil"
    assert safe_name("..") == "lora" and safe_name("") == "lora" and safe_name(".hidden") == "hidden"
    assert ".." not in safe_name("a..b....c")
    assert len(safe_name("猫" * 500).encode()) <= 160


def test_rerun_keeps_the_users_files(tmp_path):
    review, _, _ = build_review(tmp_path)
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    (out / "my-notes.txt").write_text("epoch 23 looks best")
    first_summary = (out / "summary.json").read_bytes()

    again = write_review_package(tmp_path / "outbox" / "cat", review)
    assert again == out and (again / "index.html").is_file() and not (again / "my-notes.txt").exists()
    previous = sorted((tmp_path / "outbox").glob("cat.previous-*"))
    assert len(previous) == 1
    assert (previous[0] / "my-notes.txt").read_text() == "epoch 23 looks best"
    assert (previous[0] / "summary.json").read_bytes() == first_summary  # set aside untouched
    summary = json.loads((again / "summary.json").read_text(encoding="utf-8"))
    assert summary["previous_package"] == previous[0].name
    assert previous[0].name in (again / "index.html").read_text(encoding="utf-8")

    write_review_package(tmp_path / "outbox" / "cat", review)  # same second: a second, distinct folder
    assert len(list((tmp_path / "outbox").glob("cat.previous-*"))) == 2
    assert not list((tmp_path / "outbox").glob(".cat.partial-*"))


def test_a_failed_write_leaves_the_existing_package_alone(tmp_path, monkeypatch):
    review, _, _ = build_review(tmp_path)
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(package_module, "loss_plot", broken)
    with pytest.raises(OSError, match="disk full"):
        write_review_package(tmp_path / "outbox" / "cat", review)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(os.listdir(tmp_path / "outbox")) == ["cat"]  # no staging folder, nothing set aside


def test_missing_previews_and_epoch_files_are_reported_not_fatal(tmp_path):
    review, analysis, loras = build_review(tmp_path)
    lowest = analysis.lowest_epoch
    loras[lowest].unlink()  # e.g. removed by a retention rule
    review.cells[-1].image.unlink()
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    entry = next(p for p in summary["shortlist"] if p["epoch"] == lowest)
    assert entry["file"] is None and len(summary["missing_previews"]) == 1
    page = (out / "index.html").read_text(encoding="utf-8")
    assert f"id='pick-{lowest}'" in page and "was not found" in page
    assert (out / "contact_sheet.png").is_file()


def test_a_run_without_previews_or_picks_still_gets_a_page(tmp_path):
    epochs, losses = still_falling(0, epochs=12)
    analysis = {"status": "no_floor_yet", "floor_epoch": None, "candidate_epoch": None, "lowest_epoch": 12,
                "shortlist": [], "picks": [], "noise": 0.01, "epochs": [int(e) for e in epochs],
                "losses": [float(v) for v in losses], "smoothed": [float(v) for v in losses], "ignored_epochs": [],
                "message": "The loss was still falling at the last epochs (up to 12): no floor yet."}
    review = Review("cat", None, analysis, "epoch_average", {}, {}, ["1girl"], [7], [], {}, [], [], {},
                    "reached max_epochs 12")
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    assert not (out / "contact_sheet.png").exists() and (out / "loss_curve.png").is_file()
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "No previews were rendered" in page and "reached max_epochs 12" in page
    assert all((out / link).is_file() for link in parse_page(out / "index.html").links)


def test_if_the_final_rename_fails_the_earlier_package_is_put_back(tmp_path, monkeypatch):
    review, _, _ = build_review(tmp_path)
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    (out / "my-notes.txt").write_text("keep me")
    real_rename = os.rename

    def failing_rename(source, target):
        if Path(source).name.startswith(".cat.partial-"):
            raise OSError("rename failed")
        return real_rename(source, target)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="rename failed"):
        write_review_package(tmp_path / "outbox" / "cat", review)
    assert (out / "my-notes.txt").read_text() == "keep me" and (out / "index.html").is_file()
    assert sorted(os.listdir(tmp_path / "outbox")) == ["cat"]
