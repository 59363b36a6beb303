"""The review package: descriptive copies, labelled sheet, plot, summary and a safe static page."""

from __future__ import annotations

import dataclasses
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
from animad.select.package import Review, write_review_package
from animad.select.plot import loss_plot
from animad.select.sheet import CELL_SIZE, HEADER_HEIGHT, LABEL_WIDTH, PAD, contact_sheet

from curve_families import make_curve, still_falling
from package_helpers import EVIL, build_review, preview_colour

ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


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
        if link.startswith("#"):  # an in-page link (the try-first order): its target is on the page
            assert f"id='{link[1:]}'" in page, link
            continue
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


# --- select_job on a real (tiny) trained job: default rows and prompts, and rows added by hand ---

from animad.errors import UserError  # noqa: E402
from animad.select.page import render_page  # noqa: E402
from animad.select.package import comfyui_loader  # noqa: E402
from animad.select.run import select_job  # noqa: E402


@pytest.fixture(scope="module")
def small_job(tmp_path_factory, tiny_models):
    """A 2-epoch tiny run, every epoch saved: enough to shortlist, preview and add rows to."""
    from train_helpers import prepare, train

    from animad.demo.synthetic import tiny_job, write_daemon_config

    tmp = tmp_path_factory.mktemp("small-job")
    config = write_daemon_config(tmp / "animad.yaml", tiny_models)
    job = tiny_job(epochs=2, selection={"stop_at_floor": False})
    paths, daemon = prepare(tmp, config, job, count=4)
    status, _ = train(paths, daemon)
    assert status == "finished"
    return paths, daemon


def image_stats(folder: Path) -> dict[Path, tuple[int, int]]:
    """Every rendered PNG with (mtime, inode): a re-render writes a new file, so both change."""
    return {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.rglob("*.png")}


def read_summary(package: Path) -> dict:
    return json.loads((package / "summary.json").read_text(encoding="utf-8"))


def test_select_adds_rows_and_prompts_without_rendering_again(small_job, tmp_path):
    paths, daemon = small_job
    outbox = tmp_path / "outbox" / "ds"
    package = select_job(paths, daemon=daemon, outbox=outbox, steps=1, size=16)
    summary = read_summary(package)
    # The default set: six prompts in the guide's kinds, labelled in summary.json.
    assert [k["kind"] for k in summary["prompt_kinds"]] == ["caption", "caption", "no_trigger",
                                                            "novel", "novel", "novel"]
    assert [k["text"] for k in summary["prompt_kinds"]] == summary["prompts"]
    # Rows: the baseline, each pick at 1.0, and the lowest-loss epoch also at 0.8.
    lowest = summary["analysis"]["lowest_epoch"]
    picks = summary["analysis"]["shortlist"]
    assert summary["rows"] == ["baseline"] + sorted([f"e{e:04d}" for e in picks] + [f"e{lowest:04d}@0.8"])
    assert summary["row_labels"][f"e{lowest:04d}@0.8"].endswith("@ 0.8")
    assert len(summary["previews"]) == len(summary["rows"]) * 6
    assert all(p["loader"] == "LoraLoaderModelOnly" for p in summary["shortlist"])
    assert summary["schedule"]["text"].startswith("cosine") and "ran all 2 epochs" in summary["schedule"]["text"]
    # How training ended, as the record the run wrote (readers take facts from it, not from the sentence).
    assert summary["ending"] == {"kind": "max_epochs", "epochs": 2, "floor_epoch": None, "cooldown_epochs": 0,
                                 "sentence": "reached max_epochs 2"} == dataclasses.asdict(paths.read_ending())
    rendered = image_stats(paths.selection)
    assert len(rendered) == len(summary["previews"])

    # --epoch N --strength S: one row more, rendered alone; nothing already there is drawn again.
    extra = next(e for e in (1, 2) if e not in picks)
    package = select_job(paths, daemon=daemon, outbox=outbox, steps=1, size=16, add_epochs=[extra],
                         add_strengths=[0.6])
    added = read_summary(package)
    key = f"e{extra:04d}@0.6"
    assert added["rows"] == ["baseline"] + sorted(summary["rows"][1:] + [key])
    assert added["prompts"] == summary["prompts"] and added["seeds"] == summary["seeds"]
    after = image_stats(paths.selection)
    assert {p: after[p] for p in rendered} == rendered  # same files, same mtimes and inodes
    assert len(after) - len(rendered) == 6  # the new row's six images, no more
    hand = next(p for p in added["shortlist"] if p["epoch"] == extra)
    assert hand["kind"] == "added" and "by hand" in hand["reason"] and (package / hand["file"]).is_file()

    # --prompt P: a seventh column, one image per row; the hand-added row stays.
    package = select_job(paths, daemon=daemon, outbox=outbox, steps=1, size=16, prompts=["@demo, green star"])
    more = read_summary(package)
    assert more["prompts"] == summary["prompts"] + ["@demo, green star"]
    assert more["prompt_kinds"][-1]["kind"] == "user" and more["seeds"] == summary["seeds"] + [1006]
    assert key in more["rows"]
    final = image_stats(paths.selection)
    assert {p: final[p] for p in after} == after
    assert len(final) - len(after) == len(more["rows"])

    # A bare `animad select` starts over from the job's settings: the hand-added row is gone.
    again = read_summary(select_job(paths, daemon=daemon, outbox=outbox, steps=1, size=16))
    assert again["rows"] == summary["rows"] and again["prompts"] == summary["prompts"]


def test_every_recipe_names_the_files_the_job_used(small_job, tiny_models, tmp_path):
    """ComfyUI runs a recipe only if its loaders name files that exist: the job's own base files (not the
    template's qwen_3_06b_base / qwen_image_vae) and the package's LoRA files, in the PNGs and the workflow."""
    from animad.anima import comfyui

    paths, daemon = small_job
    package = select_job(paths, daemon=daemon, outbox=tmp_path / "outbox" / "ds", steps=1, size=16)
    summary = read_summary(package)
    expected = {"unet_name": tiny_models["dit"].name, "clip_name": tiny_models["text_encoder"].name,
                "vae_name": tiny_models["vae"].name}
    assert expected["clip_name"] != comfyui.CLIP_NAME and expected["vae_name"] != comfyui.VAE_NAME
    loras = {p["file"] for p in summary["shortlist"]}
    graphs = [json.loads(comfyui.read_png_chunks(package / p["file"])["prompt"]) for p in summary["previews"]]
    workflow = json.loads((package / summary["comfyui_workflow"]).read_text())
    assert graphs and workflow
    for graph in graphs:
        recipe = comfyui.read_recipe(graph)
        assert {k: getattr(recipe, k) for k in expected} == expected
        assert recipe.lora_name is None or recipe.lora_name in loras
    widgets = {n["type"]: n["widgets_values"][0] for n in workflow["nodes"] if n["type"].endswith("Loader")
               or n["type"].startswith("Lora")}
    assert widgets["UNETLoader"] == expected["unet_name"] and widgets["CLIPLoader"] == expected["clip_name"]
    assert widgets["VAELoader"] == expected["vae_name"] and widgets["LoraLoaderModelOnly"] in loras
    assert summary["settings"]["model_names"] == expected  # the page's preview settings show them


def test_comfyui_names_a_file_by_its_path_under_the_model_folder():
    from animad.anima import comfyui

    assert comfyui.file_name("/home/me/ComfyUI/models/diffusion_models/anima/ft.safetensors",
                             "unet_name") == "anima/ft.safetensors"
    assert comfyui.file_name("/c/ComfyUI/models/unet/a.safetensors", "unet_name") == "a.safetensors"
    assert comfyui.file_name("/data/models/clip/qwen.safetensors", "clip_name") == "qwen.safetensors"
    assert comfyui.file_name("/data/weights/my_vae.safetensors", "vae_name") == "my_vae.safetensors"


def test_select_names_a_missing_epoch_file(small_job, tmp_path):
    paths, daemon = small_job
    with pytest.raises(UserError, match=r"--epoch 99: .*ds-e0099\.safetensors does not exist.*: 1, 2\)"):
        select_job(paths, daemon=daemon, outbox=tmp_path / "outbox" / "ds", add_epochs=[99], previews=False)


def test_the_loader_node_follows_the_lora_file(tmp_path):
    from animad.anima.lora_names import PREFIXES, TEXT_ENCODER, UNET

    dit_only, both = tmp_path / "dit.safetensors", tmp_path / "both.safetensors"
    unet = f"{PREFIXES[UNET]}_blocks_0_mlp_layer1.lora_down.weight"
    save_file({unet: torch.zeros(2, 4)}, str(dit_only))
    save_file({unet: torch.zeros(2, 4), f"{PREFIXES[TEXT_ENCODER]}_layers_0_mlp_up_proj.lora_down.weight":
               torch.zeros(2, 4)}, str(both))
    assert comfyui_loader(dit_only) == "LoraLoaderModelOnly" and comfyui_loader(both) == "LoraLoader"


def test_page_shows_kinds_loader_escaping_and_schedule(tmp_path):
    review, analysis, _ = build_review(tmp_path)
    review.prompts = ["@cat, hatsune miku (vocaloid), smile", "@cat, outdoors, city street, night"]
    review.extra["prompt_kinds"] = [{"text": review.prompts[0], "kind": "caption", "label": "dataset caption"},
                                    {"text": review.prompts[1], "kind": "novel", "label": "novel scene: new setting"}]
    review.extra["schedule"] = {"text": "cosine; floor confirmed at epoch 31, LR cooled to 0 over 6 epochs, "
                                        "stopped at 37 of max 200"}
    review.analysis["picks"][0]["loader"] = "LoraLoader"  # this epoch has a text-encoder part
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    text = " ".join(" ".join(parse_page(out / "index.html").text).split())
    assert "dataset caption" in text and "novel scene: new setting" in text
    assert "brackets are prompt weights" in text and r"hatsune miku \(vocaloid\), smile" in text
    assert "Schedule followed: cosine; floor confirmed at epoch 31, LR cooled to 0 over 6 epochs" in text
    first = analysis.picks[0].epoch
    page = (out / "index.html").read_text(encoding="utf-8")
    card = page[page.index(f"id='pick-{first}'"):]
    assert "ComfyUI: <code>LoraLoader</code>" in card[:card.index("</div>")]
    assert "LoraLoaderModelOnly" in page  # the other epochs still load with the model-only node
    assert "drag a preview into ComfyUI" in text


def test_page_links_the_workflow_file_when_the_package_has_one():
    summary = {"job": "cat", "previews": [{"row": "baseline", "prompt": 1, "file": "previews/a.png"}],
               "comfyui_workflow": "comfyui-workflow.json", "prompts": ["a"], "seeds": [1]}
    page = render_page(summary)
    assert "<a id='comfyui-workflow' href='comfyui-workflow.json'>" in page
    assert "comfyui-workflow" not in render_page({**summary, "comfyui_workflow": None})


def test_the_schedule_line_says_what_the_run_followed():
    from types import SimpleNamespace

    from animad.layout import Ending
    from animad.train.ending import schedule_followed

    config = SimpleNamespace(schedule=SimpleNamespace(type="cosine", max_epochs=200),
                             selection=SimpleNamespace(stop_at_floor=True))
    records = [{"epoch": e, "lr": 1.0 if e <= 31 else (37 - e) / 6, "cooldown": e > 31} for e in range(1, 38)]
    cooled = schedule_followed(config, records, Ending(
        kind="floor", epochs=37, floor_epoch=31, cooldown_epochs=6, sentence="stopped at the confirmed loss floor "
        "after epoch 31, then cooled the learning rate to 0 over 6 epochs"))
    assert cooled["text"] == "cosine; floor confirmed at epoch 31, LR cooled to 0 over 6 epochs, stopped at 37 of " \
                             "max 200"
    assert cooled["floor_confirmed_at"] == 31 and cooled["cooldown_epochs"] == 6
    cut = schedule_followed(config, records[:31], Ending(kind="floor", epochs=31, floor_epoch=31, cooldown_epochs=0,
                                                         sentence="stopped at the confirmed loss floor after epoch 31"))
    # An old run's finished.txt (a sentence alone) reads the same through its one tolerant reader.
    assert schedule_followed(config, records, Ending.from_sentence(
        "stopped at the confirmed loss floor after epoch 31, then cooled the learning rate to 0 over 6 epochs")) == cooled
    assert cut["text"] == "cosine; floor confirmed at epoch 31, stopped at 31 of max 200"
    config.schedule = SimpleNamespace(type="constant", max_epochs=37)
    limit = Ending(kind="max_epochs", epochs=37, floor_epoch=None, cooldown_epochs=6, sentence="reached max_epochs 37")
    assert schedule_followed(config, records, limit)["text"] == \
        "constant; no floor confirmed, LR cooled to 0 over the last 6 epochs, ran all 37 epochs"
    config.schedule = SimpleNamespace(type="auto", max_epochs=37)  # auto names what it resolved to
    assert schedule_followed(config, records, limit)["text"].startswith("constant; ")


def test_select_flags_parse_and_bad_values_are_clear_errors(capsys):
    from animad.cli.main import build_parser, main

    args = build_parser().parse_args(["select", "job", "--epoch", "7", "--epoch", "9", "--strength", "0.8",
                                      "--prompt", "@x, 1girl", "--prompts-mode", "replace"])
    assert args.epoch == [7, 9] and args.strength == [0.8] and args.prompt == ["@x, 1girl"]
    assert args.prompts_mode == "replace"
    assert main(["select", "job", "--strength", "-1"]) == 2
    assert "--strength must be between 0 and 10" in capsys.readouterr().err
    assert main(["select", "job", "--epoch", "0"]) == 2
    assert "--epoch must be at least 1" in capsys.readouterr().err


# --- the page as a decision page: settings, one floor sentence, the folder, the plot's scales, notices ---

def write_job_folder(folder: Path, records: list[dict], **job) -> None:
    """A job folder as training leaves it: job.resolved.yaml and epochs.jsonl."""
    import yaml

    from animad.config.job import JobConfig, resolved_dict

    config = JobConfig()
    for section, values in job.items():
        if isinstance(values, dict):
            for key, value in values.items():
                setattr(getattr(config, section), key, value)
        else:
            setattr(config, section, values)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.resolved.yaml").write_text(yaml.safe_dump(resolved_dict(config, 12), sort_keys=False))
    (folder / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def page_text(out: Path) -> str:
    return " ".join(" ".join(parse_page(out / "index.html").text).split())


def test_the_page_shows_the_training_settings_one_floor_sentence_and_the_work_folder(tmp_path):
    review, analysis, _ = build_review(tmp_path)
    records = [{"epoch": e, "step": 5 * e, "loss": 0.5, "eval_loss": 0.4, "seconds": 61.0,
                "time": f"2026-12-01T0{e % 10}:00:00+00:00"} for e in range(1, 61)]
    write_job_folder(tmp_path / "work", records, network={"dim": 8, "alpha": 4.0},
                     optimizer={"type": "adamw", "lr": 2e-4}, data={"resolution": 768, "batch_size": 3})
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    text, page = page_text(out), (out / "index.html").read_text(encoding="utf-8")
    assert "Training settings" in text and "8 / 4" in text and "adamw, learning rate 0.0002" in text
    assert "768" in text and "60 (max_epochs 200)" in text and "300" in text  # epochs and steps trained
    assert "1h 01m: every epoch's training and eval" in text  # 60 x 61 s
    # The floor: one plain sentence; the detector's own wording (with its numbers) only folded away.
    assert f"The loss stopped improving around epoch {analysis.floor_epoch}" in text
    assert page.count(analysis.message.split(";")[0][:40]) == 1
    numbers = page[page.index("<details id='floor-numbers'>"):]
    assert "wobbles by about" in numbers[:numbers.index("</details>")]
    assert "noise sigma" not in page[:page.index("<details id='floor-numbers'>")]
    assert f"All epoch files stay in the job's work folder: {tmp_path / 'work' / 'epochs'}" in text
    assert "barely changed" not in text  # this curve falls far beyond its noise
    summary = json.loads((out / "summary.json").read_text())
    assert summary["training"]["dim"] == 8 and summary["training"]["seconds"] == 60 * 61.0


def test_a_run_that_barely_moved_says_so_and_its_plot_shows_both_curves(tmp_path):
    # The run: eval 3.611 -> 3.603 over 12 epochs (noise ~0.005), train loss far below.
    epochs = list(range(1, 13))
    wobble = [0.004, -0.005, 0.003, -0.002, 0.005, -0.004, 0.002, -0.003, 0.004, -0.005, 0.003, -0.001]
    losses = [3.611 - 0.0007 * e + w for e, w in zip(epochs, wobble)]
    review, _, _ = build_review(tmp_path)
    review.analysis = analyze_curve(epochs, losses, patience=4, shortlist_size=3).to_dict()
    review.analysis["picks"], review.analysis["shortlist"] = [], []
    review.train_losses = {e: 0.9 - 0.01 * e for e in epochs}
    write_job_folder(tmp_path / "work", [{"epoch": e, "step": 5 * e, "loss": 0.9, "eval_loss": v, "seconds": 3.0}
                                         for e, v in zip(epochs, losses)], data={"batch_size": 16})
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    text = page_text(out)
    assert "This LoRA barely changed the model." in text and "(now 5 optimizer steps an epoch)" in text
    # The plot: the train loss (0.78-0.89) is far off the eval range (3.60-3.62): it gets its own
    # scale on the right and is drawn as a line across the chart, not as strokes clipped at the edges.
    with Image.open(out / "loss_curve.png") as image:
        pixels = image.convert("RGB")
    from animad.select.plot import COLOURS, LEFT, RIGHT_AXIS, TITLE_HEIGHT, MAIN_HEIGHT, WIDTH
    grey = COLOURS["train"]
    columns = {x for x in range(LEFT, WIDTH - RIGHT_AXIS) for y in range(TITLE_HEIGHT, TITLE_HEIGHT + MAIN_HEIGHT)
               if pixels.getpixel((x, y)) == grey}
    assert len(columns) > 0.8 * (WIDTH - RIGHT_AXIS - LEFT)  # a line from the first epoch to the last
    chart = range(TITLE_HEIGHT, TITLE_HEIGHT + MAIN_HEIGHT)
    rows_per_column = {x: sum(pixels.getpixel((x, y)) == grey for y in chart)
                       for x in range(LEFT + 20, WIDTH - RIGHT_AXIS - 20, 40)}
    assert max(rows_per_column.values()) < 60, rows_per_column  # no vertical strokes through the chart
    right_axis = {pixels.getpixel((WIDTH - RIGHT_AXIS, y)) for y in chart[5:-5]}
    assert grey in right_axis  # the train scale's axis line


def test_curves_on_one_scale_share_the_axis(tmp_path):
    epochs, losses, _, _ = make_curve("white", 0)
    analysis = analyze_curve(epochs, losses, patience=15).to_dict()
    out = tmp_path / "shared.png"
    loss_plot(analysis, out, {int(e): float(v) for e, v in zip(epochs, losses)})
    from animad.select.plot import COLOURS, RIGHT, TITLE_HEIGHT, WIDTH
    with Image.open(out) as image:
        pixels = image.convert("RGB")
        assert COLOURS["train"] not in {pixels.getpixel((x, TITLE_HEIGHT + 100)) for x in range(WIDTH - RIGHT, WIDTH)}


def test_the_dataset_report_is_a_section_and_its_warnings_are_not_listed_twice(tmp_path):
    review, _, _ = build_review(tmp_path)
    report = {"findings": [
        {"kind": "near_duplicate", "severity": "warning", "message": f"looks like img2.png {EVIL}",
         "files": ["img1.png", "img2.png"], "fix": "remove one"},
        {"kind": "natural_language", "severity": "note", "message": "captions are sentences", "files": []}],
        "summary": {"images": "12", "steps per epoch": "5", "VRAM estimate": "11.2 GB"}}
    (tmp_path / "work").mkdir(exist_ok=True)
    (tmp_path / "work" / "dataset-report.json").write_text(json.dumps(report))
    review.warnings.append({"file": "img1.png", "where": "", "message": report["findings"][0]["message"],
                            "fix": "remove one", "severity": "warning"})
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    text, page = page_text(out), (out / "index.html").read_text(encoding="utf-8")
    assert "id='dataset'" in page and "steps per epoch 5" in text and "VRAM estimate 11.2 GB" in text
    assert "captions are sentences" in text and "img1.png, img2.png" in text
    assert text.count(f"looks like img2.png {EVIL}") == 1 and EVIL not in page
    assert f"caption {EVIL} is odd" in text  # the other warnings stay where they were


def test_a_job_description_is_shown_and_the_demo_says_its_previews_are_noise(tmp_path):
    from animad.demo.run import DEMO_DESCRIPTION

    review, _, _ = build_review(tmp_path)
    write_job_folder(tmp_path / "work", [], description=DEMO_DESCRIPTION)
    out = write_review_package(tmp_path / "outbox" / "cat", review)
    assert "noise by design" in DEMO_DESCRIPTION and DEMO_DESCRIPTION in page_text(out)
