"""The dataset report of `animad check` (issue 10 item 5), on generated datasets with one of each finding."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from PIL import Image, ImageDraw

from animad.config.job import parse_job
from animad.config.problems import Problems
from animad.intake.dataset import is_sentence, scan_dataset
from animad.intake.imagehash import NEAR_BITS, colour_distance, colour_signature, distance, near_groups, phash
from animad.intake.report import build_report

SENTENCES = [
    "A girl with long silver hair sits on a bench in the park, holding an umbrella in the rain.",
    "The knight stands at the edge of a cliff and looks over the sea at sunset.",
    "Two cats sleep on a red sofa next to the window while snow falls outside.",
    "An old man is reading a book under a tree in the middle of a quiet village.",
]


def picture(seed: int, size=(128, 128)) -> Image.Image:
    """A distinct picture per seed: flat shapes on a flat background, the hard case for a hash."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(4, 10)):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        box = [x, y, x + rng.randrange(10, size[0] // 2), y + rng.randrange(10, size[1] // 2)]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def job(data=None, **top):
    config = parse_job({"data": {"resolution": 128, "min_bucket": 64, "max_bucket": 256, **(data or {})}, **top},
                       "job.yaml", Problems())
    return config


def report_of(folder, config):
    problems = Problems()
    dataset = scan_dataset(folder, config, problems)
    report = build_report(config, dataset)
    report.add_warnings_to(problems)
    return dataset, report, problems


def kinds(report, severity=None):
    return [f.kind for f in report.findings if severity in (None, f.severity)]


def one(report, kind):
    (found,) = [f for f in report.findings if f.kind == kind]
    return found


@pytest.fixture()
def dataset_folder(tmp_path):
    """12 tagged images (one exact copy, one resized JPEG copy, one small, one transparent) and a
    natural-language subset of 4."""
    tags = tmp_path / "2_tags"
    tags.mkdir()
    for n in range(12):
        picture(n).save(tags / f"img{n:02d}.png")
        extra = ", rare hat" if n == 3 else ""
        (tags / f"img{n:02d}.txt").write_text(f"@t, solo, style{n % 3}, colour{n % 4}{extra}")
    shutil.copy(tags / "img00.png", tags / "copy.png")
    (tags / "copy.txt").write_text("@t, solo, style0, colour0")
    picture(1).resize((96, 96), Image.Resampling.LANCZOS).save(tags / "resized.jpg", quality=80)
    (tags / "resized.txt").write_text("@t, solo, style1, colour1")
    picture(20, size=(48, 48)).save(tags / "tiny.png")
    (tags / "tiny.txt").write_text("@t, solo, style2, colour2")
    clear = picture(21).convert("RGBA")
    clear.putalpha(0)
    clear.paste((10, 10, 10, 255), (32, 32, 96, 96))
    clear.save(tags / "cutout.png")
    (tags / "cutout.txt").write_text("@t, solo, style0, colour3")
    story = tmp_path / "story"
    story.mkdir()
    for n, sentence in enumerate(SENTENCES):
        picture(100 + n).save(story / f"s{n}.png")
        (story / f"s{n}.txt").write_text(f"@t, {sentence}")
    return tmp_path


def test_each_finding_on_a_generated_dataset(dataset_folder):
    dataset, report, problems = report_of(dataset_folder, job(trigger="@t"))
    exact = one(report, "exact_duplicate")
    assert exact.files == ["2_tags/copy.png", "2_tags/img00.png"]
    near = one(report, "near_duplicate")
    assert set(near.files) == {"2_tags/img01.png", "2_tags/resized.jpg"}
    small = one(report, "small_image")
    assert set(small.files) == {"2_tags/tiny.png", "2_tags/resized.jpg"}
    assert "smaller buckets at about their own size" in small.message and "min_bucket 64" in small.message
    assert "2_tags/tiny.png (48x48 -> 64x64)" in small.message
    assert one(report, "transparency").files == ["2_tags/cutout.png"]
    assert "composited on white" in one(report, "transparency").message
    natural = one(report, "natural_language")
    assert natural.severity == "note" and "'story'" in natural.message and "off for it" in natural.message
    common = one(report, "common_tags")
    assert "solo (100%)" in common.message and "@t" not in common.message  # the trigger is not listed
    rare = one(report, "rare_tags")
    assert "rare hat (2_tags/img03.png)" in rare.message and rare.files == ["2_tags/img03.png"]
    assert report.summary["trigger position"] == "'@t': first in 16 of 16"
    assert report.summary["subset 2_tags"] == "16 image(s) x 2 repeat(s) = 32 samples"
    assert report.summary["subset story"] == "4 image(s) x 1 repeat(s) = 4 samples"
    # Warnings are problems of the check (so in ERRORS.txt and report.json); notes are not.
    warned = {(p.file, p.where) for p in problems.warnings}
    assert warned == {("2_tags/copy.png", ""), ("2_tags/img01.png", ""), ("job.yaml", "data.resolution"),
                      ("job.yaml", "data.alpha_mask")}
    assert not problems.errors
    assert len([p for p in problems.warnings if p.where == "data.alpha_mask"]) == 1  # once per dataset
    assert json.loads(json.dumps(report.to_json()))["findings"][0].keys() >= {"kind", "severity", "message", "files"}


def test_a_clean_dataset_has_no_warnings(tmp_path):
    for n in range(12):
        picture(n).save(tmp_path / f"{n}.png")
        (tmp_path / f"{n}.txt").write_text(f"@t, tag{n % 4}, other{n % 3}")
    _, report, problems = report_of(tmp_path, job(trigger="@t"))
    assert not problems.warnings, [p.line() for p in problems.warnings]
    assert kinds(report, "warning") == []


def test_perceptual_hash_finds_a_resized_jpeg_and_not_a_different_picture():
    import io

    original = picture(7, size=(256, 256))
    found = []
    for scale, quality in ((0.5, 70), (0.75, 90), (1.5, 80), (2.0, 95)):
        buffer = io.BytesIO()
        original.resize((int(256 * scale),) * 2, Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=quality)
        copy = Image.open(io.BytesIO(buffer.getvalue()))
        found.append(distance(phash(original), phash(copy)))
        assert colour_distance(colour_signature(original), colour_signature(copy)) < 3
    assert max(found) <= NEAR_BITS
    others = [phash(picture(seed, size=(256, 256))) for seed in range(40)]
    assert min(distance(a, b) for i, a in enumerate(others) for b in others[i + 1:]) > NEAR_BITS
    # The same drawing recoloured is another thing to learn: the colour signature keeps them apart.
    grey_twin = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(grey_twin).ellipse([10, 10, 50, 50], fill=(220, 40, 40))
    green = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(green).ellipse([10, 10, 50, 50], fill=(40, 180, 70))
    hashes, colours = [phash(grey_twin), phash(green)], [colour_signature(grey_twin), colour_signature(green)]
    assert distance(*hashes) <= NEAR_BITS and near_groups(hashes, colours) == []


def test_sentence_rule():
    assert all(is_sentence(s) for s in SENTENCES)
    assert not is_sentence("1girl, solo, long hair, looking at viewer, smile, open mouth, blue eyes, holding sword")
    assert not is_sentence("@t, 1girl, solo, long hair, red dress, standing, rain, night, city, "
                           "a girl standing in the rain")  # tags with one sentence stay tags
    assert not is_sentence("short caption here")


def test_natural_language_subset_is_not_shuffled_unless_the_user_says_so(dataset_folder):
    dataset, report, _ = report_of(dataset_folder, job({"tag_dropout": 0.1}))
    by_name = {s.name: s for s in dataset.subsets}
    assert by_name["story"].natural_language and not by_name["story"].shuffle_captions
    assert by_name["story"].tag_dropout == 0
    assert by_name["2_tags"].shuffle_captions and by_name["2_tags"].tag_dropout == 0.1  # tags: unchanged
    # An explicit subset setting wins, with a warning that commas cut its sentences.
    config = job({"subsets": {"story": {"shuffle_captions": True}}})
    dataset, report, problems = report_of(dataset_folder, config)
    assert {s.name: s for s in dataset.subsets}["story"].shuffle_captions
    assert one(report, "natural_language").severity == "warning"
    assert any(p.where == "data.subsets.story" for p in problems.warnings)


def test_resolved_config_records_the_caption_decision(tmp_path, dataset_folder):
    """What intake decided is written into job.resolved.yaml, so training and a resume do the same."""
    from animad.config.job import load_resolved
    from animad.intake.check import CheckResult
    from animad.intake.jobfiles import load_job_dataset, write_job_files
    from animad.layout import JobPaths

    config = job()
    problems = Problems()
    dataset = scan_dataset(dataset_folder, config, problems)
    report = build_report(config, dataset)
    paths = JobPaths(tmp_path / "work")
    write_job_files(paths, CheckResult(dataset_folder, config, problems, dataset, None, report),
                    dataset_dir=dataset_folder)
    resolved = yaml.safe_load(paths.resolved.read_text())
    assert resolved["data"]["subsets"]["story"]["shuffle_captions"] is False
    assert resolved["data"]["subsets"]["2_tags"]["shuffle_captions"] is True
    again = load_job_dataset(paths, load_resolved(paths.resolved))
    assert [(s.name, s.shuffle_captions, s.tag_dropout) for s in again.subsets] == [
        (s.name, s.shuffle_captions, s.tag_dropout) for s in dataset.subsets]
    # A job frozen before this rule (no subset entries) resumes as it began: shuffled.
    old = scan_dataset(dataset_folder, job(), Problems(), caption_defaults=False)
    assert {s.name: s.shuffle_captions for s in old.subsets}["story"] is True
    written = json.loads((paths.root / "dataset-report.json").read_text())
    assert {f["kind"] for f in written["findings"]} >= {"exact_duplicate", "near_duplicate", "natural_language"}
    assert written["summary"]["steps per epoch"] == report.summary["steps per epoch"]


def test_step_counts_match_the_training_plan(dataset_folder):
    from animad.config.job import resolve_batch_size
    from animad.train.batches import item_buckets, plan_length

    config = job({"batch_size": 3, "grad_accum": 2})
    dataset, report, _ = report_of(dataset_folder, config)
    batches = plan_length(dataset, item_buckets(dataset, config.data), resolve_batch_size(3, len(dataset.items)))
    steps = -(-batches // 2)
    assert report.summary["steps per epoch"] == str(steps)
    assert report.summary["total steps"].startswith(f"{steps * 200} (to max_epochs 200")
    assert "stop_at_floor usually ends far earlier" in report.summary["total steps"]
    assert report.summary["effective batch"].startswith("6 images per optimizer step")
    assert report.summary["buckets"].endswith(f"{batches} batches per epoch")


@pytest.mark.parametrize("optimizer,lr,warned", [("prodigy", None, False), ("prodigy", 1e-4, True),
                                                 ("prodigy", 0.5, False), ("adamw", 1.0, True),
                                                 ("adamw8bit", 1e-4, False), ("adamw", 1e-8, True)])
def test_learning_rate_sanity(tmp_path, optimizer, lr, warned):
    picture(0).save(tmp_path / "a.png")
    config = job(optimizer={"type": optimizer, **({} if lr is None else {"lr": lr})})
    _, report, problems = report_of(tmp_path, config)
    assert (kinds(report).count("learning_rate") == 1) is warned
    if warned and optimizer == "adamw" and lr == 1.0:
        assert "typed 1 instead of 0.1" in one(report, "learning_rate").message


def test_vram_estimate_is_stated_against_common_cards(tmp_path):
    picture(0, size=(1024, 1024)).save(tmp_path / "a.png")
    # vram: auto (the default): what the picker would choose on each common card, none of them refused.
    config = parse_job({}, "job.yaml", Problems())
    _, report, _ = report_of(tmp_path, config)
    line = report.summary["VRAM estimate"]
    assert line.startswith("for Anima at the largest bucket 1024x1024, batch 1, vram: auto (no GPU here): 8 GB: "), line
    assert "does not fit" not in line and line.count(" GB: ") == 4, line
    # vram: off: the configured settings, with the model's error bar, against the common cards.
    config = parse_job({"precision": {"vram": "off"}}, "job.yaml", Problems())
    _, report, _ = report_of(tmp_path, config)
    pattern = r"\d+\.\d GB \(\d+\.\d-\d+\.\d\) for Anima at the largest bucket 1024x1024, batch 1: fits .*cards"
    assert re.match(pattern, report.summary["VRAM estimate"]), report.summary["VRAM estimate"]
    # A GPU too small even for every saving gets a warning, in either mode.
    for vram in ("auto", "off"):
        config = parse_job({"precision": {"vram": vram}}, "job.yaml", Problems())
        over = build_report(config, scan_dataset(tmp_path, config, Problems()), gpu_bytes=2 * 2 ** 30)
        assert [f.kind for f in over.findings if f.severity == "warning"] == ["vram"], vram


def test_report_text_escapes_what_the_user_wrote(tmp_path):
    for n in range(12):
        picture(n).save(tmp_path / f"{n}.png")
        (tmp_path / f"{n}.txt").write_text(f"@t, evil\x1b]0;owned\x07tag, other{n}")
    _, report, _ = report_of(tmp_path, job(trigger="@t"))
    text = report.render()
    assert "\x1b" not in text and "\x07" not in text and "\\x1b" in text


def test_the_daemon_writes_the_report_at_intake_and_its_warnings_into_errors_txt(setup):
    from pathlib import Path

    from animad.daemon.freeze import handle_folder
    from animad.demo.synthetic import make_dataset, tiny_job
    from animad.layout import JobPaths

    daemon, queue, inbox = setup
    folder = make_dataset(inbox / "dup", count=4, job=tiny_job(data={"batch_size": 1}))
    shutil.copy(folder / "img000.png", folder / "copy.png")
    job_id = handle_folder(folder, daemon, queue)
    written = json.loads((JobPaths(Path(queue.get(job_id)["job_dir"])).root / "dataset-report.json").read_text())
    assert [f["files"] for f in written["findings"] if f["kind"] == "exact_duplicate"] == [["copy.png", "img000.png"]]
    assert written["summary"]["images"] == "5 in 1 subset(s)"
    # Rejected: ERRORS.txt holds the report's warnings beside the errors, and the inbox ending.
    folder = make_dataset(inbox / "bad", count=4, job={**tiny_job(), "netwrok": {}})
    shutil.copy(folder / "img000.png", folder / "copy.png")
    assert handle_folder(folder, daemon, queue) is None
    errors = (folder / "ERRORS.txt").read_text()
    assert "netwrok: unknown key" in errors and "WARNING copy.png: the same file as img000.png" in errors
    assert "the daemon checks it again by itself" in errors


def test_vram_estimate_counts_the_network_kind(tmp_path):
    """animad check's estimate asks the memory model about the job's own network: a LoKr's few values
    need far less than a rank-16 LoRA's, a full-matrix LoKr at factor 4 far more."""
    picture(0, size=(1024, 1024)).save(tmp_path / "a.png")

    def network_part(network: dict) -> float:
        config = parse_job({"precision": {"vram": "off"}, "network": network}, "job.yaml", Problems())
        _, report, _ = report_of(tmp_path, config)
        part = next(p for p in report.summary["VRAM by part"].split("; ") if p.startswith("network"))
        return float(re.search(r"([\d.]+) GB", part).group(1))

    lora, lokr = network_part({}), network_part({"type": "lokr", "dim": 16})
    full_lokr = network_part({"type": "lokr", "dim": 100000, "factor": 4})
    assert lokr < lora / 10 and full_lokr > 4 * lora, (lora, lokr, full_lokr)


def test_the_smallest_image_is_named_first_not_hidden_in_more(tmp_path):
    """17 images a little under the training area and one far under it (the case of one 512x512 image among
    768x1024 ones): the far one is named first and on its own, whatever its file name."""
    for n in range(17):
        picture(n, size=(112, 128)).save(tmp_path / f"a{n:02d}.png")
        (tmp_path / f"a{n:02d}.txt").write_text(f"@t, tag{n % 4}")
    picture(99, size=(64, 64)).save(tmp_path / "zz_small.png")
    (tmp_path / "zz_small.txt").write_text("@t, tag1")
    _, report, _ = report_of(tmp_path, job(trigger="@t", data={"resolution": 128, "min_bucket": 64}))
    small = one(report, "small_image")
    assert small.message.startswith("18 of 18 images have fewer pixels than the training resolution 128x128")
    assert "; 1 under half of them: zz_small.png (64x64 -> 64x64); the other 17: a00.png" in small.message
    # animad check prints the same, the far one first.
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"trigger": "@t", "data": {"resolution": 128, "min_bucket": 64}}))
    out = subprocess.run([sys.executable, "-m", "animad", "check", str(tmp_path)], capture_output=True, text=True).stdout
    assert out.index("zz_small.png (64x64") < out.index("a00.png")
    # Images directly in the folder are the "(top folder)" subset, not "subset .".
    assert report.summary["subset (top folder)"] == "18 image(s) x 1 repeat(s) = 18 samples"
    assert "subset . " not in out and "subset (top folder)" in out
