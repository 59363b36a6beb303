"""Tokenizers are found where our users already have them (ComfyUI, sd-scripts, the HF cache), offline."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from animad.anima.files import find_tokenizers
from animad.anima.text import T5Ids, load_qwen_tokenizer
from animad.demo.synthetic import make_dataset, tiny_job


@pytest.fixture()
def clean_env(tmp_path, monkeypatch):
    """No tokenizer anywhere by accident: an empty HF cache, a bare home, no ANIMAD_TOKENIZERS."""
    (tmp_path / "home").mkdir()
    (tmp_path / "hub").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("ANIMAD_TOKENIZERS", raising=False)
    monkeypatch.delenv("HF_HOME", raising=False)
    return tmp_path


def put(tiny_models, qwen_dir, t5_dir):
    shutil.copytree(tiny_models["tokenizers"] / "qwen3", qwen_dir)
    shutil.copytree(tiny_models["tokenizers"] / "t5", t5_dir)


def comfyui_install(root, tiny_models):
    """ComfyUI's own layout: tokenizers in comfy/text_encoders, models under models/."""
    put(tiny_models, root / "comfy" / "text_encoders" / "qwen25_tokenizer",
        root / "comfy" / "text_encoders" / "t5_tokenizer")
    files = {}
    for key, sub, name in (("dit", "diffusion_models", "anima-base-v1.0.safetensors"),
                           ("text_encoder", "text_encoders", "qwen_3_06b_base.safetensors"),
                           ("vae", "vae", "qwen_image_vae.safetensors")):
        (root / "models" / sub).mkdir(parents=True, exist_ok=True)
        files[key] = root / "models" / sub / name
        shutil.copy(tiny_models[key], files[key])
    return files


def test_a_comfyui_install_is_enough_with_no_tokenizer_setting(clean_env, tiny_models):
    # The common case: animad.yaml names only the ComfyUI model files; the tokenizers are found
    # beside them, load, and the folder checks clean.
    files = comfyui_install(clean_env / "ComfyUI", tiny_models)
    config = clean_env / "animad.yaml"
    config.write_text(yaml.safe_dump({"default_model": "base", "models": {"base": {k: str(v) for k, v in
                                                                                    files.items()}}}))
    folder = make_dataset(clean_env / "ds", count=2, job=tiny_job())
    result = subprocess.run([sys.executable, "-m", "animad", "--config", str(config), "check", str(folder)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    qwen, t5 = find_tokenizers([], [files["dit"]])
    assert qwen == clean_env / "ComfyUI" / "comfy" / "text_encoders" / "qwen25_tokenizer"
    assert t5 == clean_env / "ComfyUI" / "comfy" / "text_encoders" / "t5_tokenizer"
    assert load_qwen_tokenizer(qwen).encode("1girl, smile").ids
    assert T5Ids(t5)("1girl, smile")[-1] == 1  # ids end with </s>


def test_an_sd_scripts_checkout(clean_env, tiny_models):
    sd = clean_env / "sd-scripts"
    put(tiny_models, sd / "configs" / "qwen3_06b", sd / "configs" / "t5_old")
    assert find_tokenizers([], [], sd_scripts=sd) == (sd / "configs" / "qwen3_06b", sd / "configs" / "t5_old")


def test_the_hugging_face_cache(clean_env, tiny_models):
    hub = clean_env / "hub"
    qwen = hub / "models--Qwen--Qwen3-0.6B" / "snapshots" / "c1899de289a04d12100db370d81485cdf75e47ca"
    t5 = hub / "models--google--t5-v1_1-xxl" / "snapshots" / "3db67ab1af984cf10548a73467f0e5bca2aaaeb2"
    put(tiny_models, qwen, t5)
    assert find_tokenizers([], []) == (qwen, t5)


def test_a_configured_folder_wins_and_each_kind_may_come_from_elsewhere(clean_env, tiny_models):
    mine = clean_env / "mine"
    shutil.copytree(tiny_models["tokenizers"] / "qwen3", mine / "qwen3")  # only Qwen here
    comfyui_install(clean_env / "ComfyUI", tiny_models)
    qwen, t5 = find_tokenizers([mine], [], comfyui=clean_env / "ComfyUI")
    assert qwen == mine / "qwen3"  # the configured folder comes first
    assert t5 == clean_env / "ComfyUI" / "comfy" / "text_encoders" / "t5_tokenizer"  # the rest from ComfyUI


def test_nothing_found_is_one_clear_error_that_says_where_to_get_them(clean_env, tiny_models):
    models = {k: str(tiny_models[k]) for k in ("dit", "text_encoder", "vae")}
    config = clean_env / "animad.yaml"
    config.write_text(yaml.safe_dump({"default_model": "tiny", "models": {"tiny": models}}))
    folder = make_dataset(clean_env / "ds", count=2, job=tiny_job())
    result = subprocess.run([sys.executable, "-m", "animad", "--config", str(config), "check", str(folder)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Qwen3 and T5 tokenizer files not found" in result.stdout
    assert "ComfyUI" in result.stdout and "sd-scripts" in result.stdout and "tokenizers:" in result.stdout
