"""Training a tiny Anima on the CPU: the loss falls, epoch files are right, and files load back exactly."""

from __future__ import annotations

import json
import re

import torch
from safetensors import safe_open

from animad.layout import read_epochs_log
from animad.anima import load as model_load
from animad.anima.dit import ANIMA_2B, AnimaDiT
from animad.anima.files import ModelFiles
from animad.anima.lora_names import UNET, linears, read_lora_file
from animad.anima.pipeline import Anima
from animad.train.networks.network import network_from_state


def test_stable_eval_loss_falls_and_epochs_are_numbered(trained):
    paths, _, status, progress, _ = trained
    assert status == "finished"
    records = read_epochs_log(paths.epochs_log)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    eval_losses = [r["eval_loss"] for r in records]
    assert eval_losses[-1] < 0.8 * eval_losses[0], eval_losses
    assert all(len(r["eval_by_sigma"]) == 8 for r in records)  # per-sigma values are kept
    files = sorted(p.name for p in paths.epochs_dir.glob("*.safetensors"))
    assert files == [f"ds-e{e:04d}.safetensors" for e in range(1, 7)]
    steps = [r["step"] for r in records]
    assert steps == sorted(steps) and steps[0] > 0
    training = [p for p in progress if p.get("phase") == "training"]
    assert training and {"epoch", "step", "loss", "s_per_it", "eta_seconds"} <= set(training[-1])


def test_epoch_file_loads_back_into_a_fresh_model(trained):
    paths, _, _, _, models = trained
    state = torch.load(paths.resume_state, weights_only=False)["lora"]  # the trained LoRA, fp32
    saved = read_lora_file(paths.epoch_file("ds", 6))

    def output(lora_state):
        anima = Anima(ModelFiles(models["dit"], models["text_encoder"], models["vae"], models["tokenizers"] / "qwen3",
                                 models["tokenizers"] / "t5"), "cpu")
        dit = anima.load_dit()
        network_from_state(anima, lora_state)
        torch.manual_seed(1)
        x, sigma, context = torch.randn(1, 16, 8, 8), torch.tensor([0.6]), torch.randn(1, 512, 64)
        with torch.no_grad():
            return dit(x, sigma, context)

    base_dit, _ = model_load.load_dit(models["dit"])
    torch.manual_seed(1)
    x, sigma, context = torch.randn(1, 16, 8, 8), torch.tensor([0.6]), torch.randn(1, 512, 64)
    with torch.no_grad():
        base = base_dit(x, sigma, context)
    trained_out, reloaded = output(state), output(saved)
    assert (trained_out - base).abs().max() > 1e-3  # the LoRA does something
    torch.testing.assert_close(reloaded, trained_out, atol=1e-6, rtol=1e-6)


def test_saved_keys_are_real_anima_module_names(trained):
    paths, _, _, _, models = trained
    with torch.device("meta"):
        real = linears(AnimaDiT(ANIMA_2B), UNET)
    tiny_dit, _ = model_load.load_dit(models["dit"])
    tiny = {name: target.linear for name, target in linears(tiny_dit, UNET).items()}
    with safe_open(str(paths.epoch_file("ds", 3)), "pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
        modules = {re.sub(r"\.(lora_down\.weight|lora_up\.weight|alpha)$", "", k) for k in keys}
        assert len(modules) == 2 * 10  # q/k/v/output in both attentions + 2 MLP linears, per block
        for module in modules:
            assert module in real, module  # the same name exists in the released 2B model
            assert re.fullmatch(r"lora_unet_blocks_\d+_(self_attn|cross_attn)_(q_proj|k_proj|v_proj|output_proj)"
                                r"|lora_unet_blocks_\d+_mlp_layer[12]", module)
            down, up = f.get_tensor(f"{module}.lora_down.weight"), f.get_tensor(f"{module}.lora_up.weight")
            base = tiny[module]
            assert tuple(down.shape) == (4, base.in_features) and tuple(up.shape) == (base.out_features, 4)
            assert f.get_tensor(f"{module}.alpha").item() == 4.0
    assert metadata["ss_epoch"] == "3" and int(metadata["ss_steps"]) > 0
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "4"
    assert metadata["modelspec.architecture"] == "anima-preview/lora"
    assert metadata["ss_trigger_word"] == "@demo" and len(metadata["ss_sd_model_hash"]) == 64
    assert "@demo" in json.loads(metadata["ss_tag_frequency"])["."]
    assert len(metadata["sshs_model_hash"]) == 64


def test_unchanged_images_reuse_the_cache(trained, tmp_path):
    paths, daemon, _, _, _ = trained
    cache = daemon.dir("cache")
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*.safetensors")}
    assert len(before) >= 8  # latents for 8 images + text embeddings
    from animad.train.caches import cache_latents
    from animad.train.caches import TensorCache
    from animad.train.batches import item_buckets
    from animad.intake.jobfiles import load_job_dataset
    from animad.config.job import load_resolved

    config = load_resolved(paths.resolved)
    dataset = load_job_dataset(paths, config)
    loaded = []
    from animad.train.caches import model_fingerprint

    vae_hash = model_fingerprint(load_job_files(paths)["vae"], cache)
    cache_latents(dataset, item_buckets(dataset, config.data), lambda: loaded.append(1), vae_hash, TensorCache(cache))
    assert loaded == []  # the VAE was not even loaded
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.safetensors")} == before


def load_job_files(paths):
    return paths.read_meta()["model_files"]
