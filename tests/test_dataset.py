"""Dataset scanning: subsets, repeats, captions, and every kind of bad file reported clearly."""

from __future__ import annotations

import os
import random

import pytest
import yaml
from PIL import Image

from animad.config.job import parse_job
from animad.config.problems import Problems
from animad.train.captions import augment_caption
from animad.intake.dataset import scan_dataset


def job(data=None):
    return parse_job(data or {}, "job.yaml", Problems())


def image(path, size=(64, 64), mode="RGB", colour="red", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, format=fmt)


def scan(folder, data=None, trigger=None):
    problems = Problems()
    config = job(data)
    config.trigger = trigger
    return scan_dataset(folder, config, problems), problems


def test_subfolders_are_subsets_with_kohya_repeats_and_overrides(tmp_path):
    image(tmp_path / "10_outfit_a" / "a.png")
    (tmp_path / "10_outfit_a" / "a.txt").write_text("@t, outfit a, red")
    image(tmp_path / "outfit_b" / "b.png")
    (tmp_path / "outfit_b" / "b.txt").write_text("@t, outfit b, blue")
    image(tmp_path / "root.png")
    (tmp_path / "root.txt").write_text("@t, plain")
    (tmp_path / "job.yaml").write_text("")
    dataset, problems = scan(tmp_path, {"data": {"subsets": {"outfit_b": {"repeats": 3, "keep_tokens": 2}}}})
    by_name = {s.name: s for s in dataset.subsets}
    assert by_name["10_outfit_a"].repeats == 10 and by_name["outfit_b"].repeats == 3
    assert by_name["outfit_b"].keep_tokens == 2 and by_name[""].repeats == 1
    assert dataset.samples_per_epoch() == 14
    assert not problems.errors


def test_missing_caption_warns_and_class_tokens_fill_in(tmp_path):
    image(tmp_path / "a" / "x.png")
    image(tmp_path / "b" / "y.png")
    dataset, problems = scan(tmp_path, {"data": {"subsets": {"b": {"class_tokens": "@t, girl"}}}})
    captions = {i.rel: i.caption for i in dataset.items}
    assert captions == {"a/x.png": "", "b/y.png": "@t, girl"}
    caption_warnings = [p for p in problems.warnings if "caption" in p.message]
    assert [(p.file, "no caption file" in p.message) for p in caption_warnings] == [("a/x.png", True)]


def test_bad_files_are_all_reported(tmp_path):
    image(tmp_path / "ok.png")
    (tmp_path / "ok.txt").write_text("@t, fine")
    (tmp_path / "fake.png").write_text("this is text, not an image")
    good = tmp_path / "cut.jpg"
    Image.effect_noise((256, 256), 64).convert("RGB").save(good, format="JPEG")
    good.write_bytes(good.read_bytes()[:2000])  # truncated download
    image(tmp_path / "jpeg_named.png", fmt="JPEG")
    (tmp_path / "latin1.png").write_bytes((tmp_path / "ok.png").read_bytes())
    (tmp_path / "latin1.txt").write_bytes("@t, caf\xe9".encode("latin-1"))
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    image(outside)
    os.symlink(outside, tmp_path / "escape.png")
    (tmp_path / "notes.docx").write_bytes(b"PK")
    dataset, problems = scan(tmp_path)
    errors = {p.file: p for p in problems.errors}
    assert set(errors) == {"fake.png", "cut.jpg", "jpeg_named.png", "latin1.txt", "escape.png"}
    assert "rename it to jpeg_named.jpg" in errors["jpeg_named.png"].fix
    assert "UTF-8" in errors["latin1.txt"].fix
    assert "outside" in errors["escape.png"].message
    assert "truncated" in errors["cut.jpg"].message or "corrupt" in errors["cut.jpg"].message
    assert [i.rel for i in dataset.items] == ["ok.png"]
    assert any(p.file == "notes.docx" for p in problems.warnings)


def test_pipes_and_broken_links_are_errors_and_never_hang_validation(tmp_path):
    image(tmp_path / "ok.png")
    os.mkfifo(tmp_path / "pipe.png")  # reading it would block forever (and wedge the daemon)
    os.symlink(tmp_path / "gone.png", tmp_path / "broken.png")  # inside the folder, but dangling
    dataset, problems = scan(tmp_path)
    errors = {p.file: p.message for p in problems.errors}
    assert set(errors) == {"pipe.png", "broken.png"}
    assert "not a regular file" in errors["pipe.png"] and "broken link" in errors["broken.png"]
    assert [i.rel for i in dataset.items] == ["ok.png"]


def test_decompression_bomb_is_refused(tmp_path):
    Image.new("1", (8200, 8000)).save(tmp_path / "bomb.png")  # 65 MP of nothing, a few KB on disk
    _, problems = scan(tmp_path)
    error = next(p for p in problems.errors if p.file == "bomb.png")
    assert "megapixels" in error.message


def test_trigger_and_batch_size_warnings(tmp_path):
    for n in range(4):
        image(tmp_path / f"{n}.png")
        (tmp_path / f"{n}.txt").write_text("@t, red" if n else "red, @t")
    _, problems = scan(tmp_path, {"data": {"batch_size": 4}}, trigger="@t")
    text = "\n".join(p.line() for p in problems.warnings)
    assert "'@t' is not the first tag in 1 of 4 captions: 0.png" in text
    assert "batch size 4 is over 10%" in text and "use 'auto' (here 1)" in text
    assert not problems.errors
    _, problems = scan(tmp_path, trigger="@t")  # the default, auto, follows the rule: no warning
    assert not [p for p in problems.warnings if p.where == "data.batch_size"]


def test_caption_shuffle_keeps_leading_tokens_and_drops_tags():
    from animad.intake.dataset import Subset

    subset = Subset("", 1, keep_tokens=1, class_tokens=None, shuffle_captions=True, tag_dropout=0.5,
                    caption_dropout=0.0, flip=False, alpha_mask=False)
    rng = random.Random(0)
    tags = ["@t"] + [f"tag{i}" for i in range(10)]
    outputs = [augment_caption(", ".join(tags), subset, rng) for _ in range(50)]
    assert all(o.startswith("@t, ") or o == "@t" for o in outputs)
    assert len(set(outputs)) > 40  # shuffled and dropped differently each time
    lengths = [len(o.split(", ")) for o in outputs]
    assert 3 < sum(lengths) / len(lengths) < 9  # about half of the 10 free tags survive


def test_alpha_channel_becomes_a_loss_mask(tmp_path):
    import torch

    from animad.train.buckets import load_image

    img = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    img.paste((0, 0, 255, 255), (0, 0, 32, 64))  # left half opaque
    img.save(tmp_path / "a.png")
    pixels, mask = load_image(tmp_path / "a.png", (64, 64), want_alpha=True)
    assert pixels.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
    assert torch.allclose(mask[:, :, :30].mean(), torch.tensor(1.0)) and mask[:, :, 34:].max() == 0


@pytest.mark.parametrize("size,expected", [((1024, 1024), (1024, 1024)), ((1536, 1024), (1216, 832)),
                                           ((512, 768), (512, 768)), ((100, 300), (256, 256)), ((3000, 1000), (1728, 576))])
def test_buckets_keep_aspect_and_area(size, expected):
    from animad.train.buckets import bucket_for

    config = job()
    assert bucket_for(*size, config.data) == expected


def test_unreadable_images_captions_and_model_files_are_named(tmp_path, daemon_config, tiny_models):
    """chmod 000 files: every one is named in the report, with no traceback (the check never aborts)."""
    import shutil
    import subprocess
    import sys

    from animad.demo.synthetic import make_dataset, tiny_job

    locked_vae = tmp_path / "models" / "vae-copy.safetensors"
    locked_vae.parent.mkdir()
    shutil.copy(tiny_models["vae"], locked_vae)
    folder = make_dataset(tmp_path / "ds", count=3, job={**tiny_job(), "model_files": {"vae": str(locked_vae)}})
    for path in (folder / "img001.png", folder / "img002.txt", locked_vae):
        path.chmod(0)
    command = [sys.executable, "-m", "animad", "--config", str(daemon_config), "check", str(folder)]
    if os.geteuid() == 0:  # root reads anything; in a user namespace it is held to the file modes
        if not shutil.which("unshare") or subprocess.run(["unshare", "-U", "true"]).returncode != 0:
            pytest.skip("running as root and unprivileged user namespaces are not allowed here")
        command = ["unshare", "-U", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    lines = output.splitlines()
    assert any("img001.png" in line and "Permission denied" in line for line in lines), output
    assert any("img002.txt" in line and "Permission denied" in line for line in lines), output
    assert any("model_files.vae" in line and "not readable" in line for line in lines), output


def test_transparent_png_trains_on_white_not_black(tmp_path):
    """Without alpha_mask, transparent pixels are composited on white (train/buckets.py says why)."""
    from animad.train.buckets import load_image

    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent black: what most exports store
    img.paste((0, 0, 255, 255), (0, 0, 32, 64))  # left half opaque blue
    img.save(tmp_path / "a.png")
    pixels, mask = load_image(tmp_path / "a.png", (64, 64), want_alpha=False)
    assert mask is None
    right = pixels[:, :, 36:]
    assert right.min() > 0.99  # white is +1 in [-1, 1], where convert("RGB") gave black (-1)
    assert pixels[2, :, :28].min() > 0.99 and pixels[0, :, :28].max() < -0.99  # the opaque part is untouched
    # A palette PNG with a transparent index is composited the same way.
    img.convert("P").save(tmp_path / "p.png", transparency=0)
    palette, _ = load_image(tmp_path / "p.png", (64, 64), want_alpha=False)
    assert palette.shape == (3, 64, 64)
    # With alpha_mask the colours stay as stored and the alpha becomes the mask, as before.
    stored, mask = load_image(tmp_path / "a.png", (64, 64), want_alpha=True)
    assert stored[:, :, 36:].max() < -0.99 and mask[:, :, 36:].max() == 0


def check_with_errors(folder, daemon):
    """check_folder on a folder whose job.yaml has an unknown key (one error)."""
    from animad.demo.synthetic import tiny_job
    from animad.intake.check import check_folder

    (folder / "job.yaml").write_text(yaml.safe_dump({**tiny_job(), "network": {"dimm": 4}}))
    return check_folder(folder, daemon)


def test_check_ending_says_what_to_do_inside_and_outside_the_inbox(setup, tmp_path):
    from animad.demo.synthetic import make_dataset

    daemon, _, inbox = setup
    inside = check_with_errors(make_dataset(inbox / "cats", count=2), daemon).report()
    outside_folder = make_dataset(tmp_path / "elsewhere" / "cats", count=2)
    outside = check_with_errors(outside_folder, daemon).report()
    assert "the daemon checks it again by itself once it changes" in inside and "run the check again" not in inside
    assert "checks it again by itself" not in outside
    assert f"run the check again: animad check {outside_folder}" in outside


def test_missing_models_without_animad_yaml_suggest_init(tmp_path, monkeypatch):
    from animad.config.daemon import load_daemon_config
    from animad.demo.synthetic import make_dataset, tiny_job
    from animad.intake.check import check_folder

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ComfyUI in this home
    folder = make_dataset(tmp_path / "ds", count=2, job=tiny_job())
    result = check_folder(folder, load_daemon_config(None))
    missing = [p for p in result.problems.errors if "model file not found" in p.message]
    assert len(missing) == 3 and all("animad init" in p.fix for p in missing), result.report()


def test_cuda_device_is_checked_against_the_machine(tmp_path, daemon_config):
    import torch

    from animad.config.daemon import load_daemon_config
    from animad.demo.synthetic import make_dataset, tiny_job
    from animad.intake.check import check_folder

    daemon = load_daemon_config(daemon_config)
    folder = make_dataset(tmp_path / "ds", count=2, job={**tiny_job(), "device": "cuda:99"})
    result = check_folder(folder, daemon)
    (problem,) = [p for p in result.problems.errors if p.where == "device"]
    assert "cuda:99" in problem.message and ("no CUDA GPU" in problem.message or "CUDA GPU(s)" in problem.message)
    if not torch.cuda.is_available():
        folder = make_dataset(tmp_path / "ds2", count=2, job={**tiny_job(), "device": "cuda"})
        result = check_folder(folder, daemon)
        (problem,) = [p for p in result.problems.errors if p.where == "device"]
        assert "no CUDA GPU" in problem.message and "device: auto" in problem.fix


def test_root_images_are_the_subset_named_dot(tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "b" / "c.png")
    dataset, _ = scan(tmp_path, {"data": {"subsets": {".": {"repeats": 3}}}})
    assert {s.name: s.repeats for s in dataset.subsets} == {"": 3, "b": 1}
